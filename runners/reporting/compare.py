"""Our numbers next to the published ones in ``results/reference/published.csv``.

A published row is paired with every configuration of ours (aggregated over its seeds: mean ± std,
n) that has the same model, pruner, sparsity, layers, dataset and metric (the dense baseline
matches whatever ``layers`` says, since it prunes nothing), and, where the published row gives
``eval_seqlen``, the same evaluation sequence length. The pruner must match exactly, except for
the aliases in ``ALIASES`` (``sparsellm_released``, the authors' released code, is compared with
the published SparseLLM numbers; ``sparsellm+keep_best`` is our variant and is not). A run of
ours that failed (one ``dataset=all`` row) is paired with every published dataset of its key and
shows its status instead of a number and a ratio. When nothing pairs, :func:`nearest_published`
lists the published points closest to what was run, so the user sees which run would match.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from eval.metrics import WHOLE_RUN
from runners.reporting.aggregate import aggregate
from runners.reporting.formatting import number
from runners.reporting.labels import is_dense, pruner_order, sparsity_order, sparsity_ratio
from runners.reporting.tables import Table, sparsity_label

REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference" / "published.csv"
KEY = ["model", "pruner", "sparsity", "layers", "dataset", "metric"]
# Our pruner labels that a published pruner's numbers apply to (the label is shown as is).
ALIASES = {"sparsellm": ("sparsellm", "sparsellm_released")}
COLUMNS = KEY + ["our protocol", "ours", "published", "ratio", "published protocol", "source"]
NEAREST_COLUMNS = ["ours", "nearest because", *KEY, "eval_seqlen", "published", "source"]


def load_published(path: str | Path = REFERENCE) -> pd.DataFrame:
    """The reference table with canonical sparsity labels and float values."""
    ref = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in KEY + ["value"] if c not in ref.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(missing)}")
    ref["sparsity"] = ref["sparsity"].map(sparsity_label)
    ref["value"] = ref["value"].astype(float)
    for col in ("eval_seqlen", "source", "table", "protocol"):
        if col not in ref.columns:
            ref[col] = ""
    return ref


def _protocol(row: pd.Series, no_calibration: frozenset) -> str:
    windows = "all windows" if row["eval_max_windows"] == "all" else f"first {row['eval_max_windows']} windows"
    runs = set(str(row["run_ids"]).split(","))
    calib = "no calibration" if is_dense(row["pruner"]) or runs & no_calibration else \
        f"calib {row['calib_dataset']} {row['calib_nsamples']}x{row['calib_seqlen']}"
    return f"{row['protocol']}: seqlen {row['eval_seqlen']}, {windows}; {calib}; seeds {row['seeds']}"


def compare(metrics: pd.DataFrame, published: pd.DataFrame, no_calibration=frozenset()) -> pd.DataFrame:
    """One row per (published number, matching configuration of ours): both values and ours / published.

    Ours is the mean over the configuration's seeds (``mean ± std (n=3)``), the ratio is mean / published.
    ``no_calibration``: run ids whose pruner used no calibration data (said so in "our protocol").
    """
    rows = []
    for _, ref in published.iterrows():
        ours = metrics[(metrics["model"] == ref["model"])
                       & metrics["pruner"].isin(ALIASES.get(ref["pruner"], (ref["pruner"],)))
                       & (metrics["sparsity"] == ref["sparsity"]) & (metrics["metric"] == ref["metric"])
                       & metrics["dataset"].isin([ref["dataset"], WHOLE_RUN])]
        if not is_dense(ref["pruner"]):
            ours = ours[ours["layers"] == ref["layers"]]
        if str(ref["eval_seqlen"]).strip():
            ours = ours[ours["eval_seqlen"].astype(str) == str(int(float(ref["eval_seqlen"])))]
        if ours.empty:
            continue
        source = ", ".join(str(ref[c]) for c in ("source", "table") if str(ref[c]).strip())
        for _, row in aggregate(ours.assign(dataset=ref["dataset"])).iterrows():  # a failed run: its status
            stat = row["stat"]
            rows.append({**{k: ref[k] for k in KEY}, "pruner": row["pruner"],
                         "our protocol": _protocol(row, frozenset(no_calibration)), "ours": stat.text(),
                         "published": number(ref["value"]),
                         "ratio": number(stat.mean / ref["value"]) if stat.n else row["status"],
                         "published protocol": ref["protocol"], "source": source})
    return pd.DataFrame(rows, columns=COLUMNS)


def _matches(ours: str, published: str) -> bool:
    """True when our pruner label is compared with that published pruner (``ALIASES``)."""
    return ours in ALIASES.get(published, (published,))


def nearest_published(metrics: pd.DataFrame, published: pd.DataFrame, limit: int = 4) -> pd.DataFrame:
    """Per configuration of ours (model, pruner, sparsity, layers), at most ``limit`` published points
    that :func:`compare` did not pair but that nearly match, nearest first: the same model, pruner
    and sparsity with other ``layers`` or evaluation seqlen; the same pruner and sparsity on another
    model; the same model and pruner at another sparsity (closest ratio first)."""
    if metrics.empty or published.empty:
        return pd.DataFrame(columns=NEAREST_COLUMNS)
    configs = metrics[["model", "pruner", "sparsity", "layers"]].drop_duplicates()
    configs = configs.loc[sorted(configs.index, key=lambda i: (configs.at[i, "model"],
                                                                pruner_order(configs.at[i, "pruner"]),
                                                                sparsity_order(configs.at[i, "sparsity"])))]
    rows = []
    for model, pruner, sparsity, layers in configs.itertuples(index=False):
        same = published[[_matches(pruner, p) for p in published["pruner"]]]
        here, sp = same[same["model"] == model], same["sparsity"] == sparsity
        other_sp = here[here["sparsity"] != sparsity]
        distance = pd.Series([abs(sparsity_ratio(s) - sparsity_ratio(sparsity)) for s in other_sp["sparsity"]],
                             index=other_sp.index, dtype=float)
        ranked = [(here[here["sparsity"] == sparsity],
                   "same model, pruner and sparsity; other layers, seqlen or dataset"),
                  (same[sp & (same["model"] != model)], "same pruner and sparsity, another model"),
                  (other_sp.loc[distance.sort_values(kind="stable").index],
                   "same model and pruner, another sparsity")]
        ours = f"{model} {pruner} {sparsity}" + ("" if is_dense(pruner) else f" layers={layers}")
        found = [(why, ref) for frame, why in ranked for _, ref in frame.iterrows()][:limit]
        rows += [{"ours": ours, "nearest because": why, **{k: ref[k] for k in KEY},
                  "eval_seqlen": ref["eval_seqlen"], "published": number(ref["value"]),
                  "source": ", ".join(str(ref[c]) for c in ("source", "table") if str(ref[c]).strip())}
                 for why, ref in found]
    return pd.DataFrame(rows, columns=NEAREST_COLUMNS)


def comparison_table(pairs: pd.DataFrame, title: str = "Ours vs published (ratio = ours / published)") -> Table:
    """The pairs (or :func:`nearest_published` rows) as a flat :class:`Table` (no best marker)."""
    text = pairs.astype(str).reset_index(drop=True)
    return Table(title, text,
                 pd.DataFrame(False, index=text.index, columns=text.columns), index_name=None)
