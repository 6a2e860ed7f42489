"""The report's leaderboard and allocation views.

Leaderboard: per model, evaluation protocol (one ``Store.groups()`` frame) and sparsity, the
pruned configurations ranked by perplexity on the group's first dataset with a number (mean over
seeds; lower is better), then the other datasets' perplexity, the mean zero-shot accuracy where
it ran, and each configuration's pruning time (mean of the manifests' ``seconds.prune``). The
dense baseline sits on top, unranked. A configuration without a finite number ranks last.

Allocation: for runs with a layer-wise allocation (``allocation=owl``, label ``wanda+owl``), each
block's target sparsity, measured sparsity and outlier ratio from ``blocks.csv``.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from eval.metrics import ACC, PPL, ZEROSHOT_MEAN
from runners.reporting.labels import is_dense, row_labels, sparsity_order

# Per-block rows of an allocated run: its target and measured sparsity, and the allocation's own
# measure (``allocation:<metric>``; stores written before it had a prefix hold OWL's as ``outlier_ratio``).
ALLOCATION_METRICS = ("target_sparsity", "sparsity", "outlier_ratio")


def is_allocation_metric(metric: str) -> bool:
    """A ``blocks.csv`` metric the allocation table shows."""
    return metric in ALLOCATION_METRICS or metric.startswith("allocation:")


def _mean(values) -> float:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else math.nan


def _prune_seconds(run_ids, manifests: dict) -> float:
    return _mean([(manifests.get(r) or {}).get("seconds", {}).get("prune", math.nan) for r in run_ids])


def leaderboard(frame: pd.DataFrame, manifests: dict) -> dict[str, pd.DataFrame]:
    """One ranked table per sparsity label of ``frame`` (normalized metric rows of one model and protocol)."""
    frame = frame.assign(label=row_labels(frame))
    ppl = frame[(frame["metric"] == PPL.name) & (frame["status"] == "ok")]
    datasets = list(dict.fromkeys(ppl["dataset"]))
    if not datasets:
        return {}
    zs = frame[(frame["dataset"] == ZEROSHOT_MEAN) & (frame["metric"] == ACC.name) & (frame["status"] == "ok")]
    dense = frame[frame["label"].map(is_dense)]
    tables = {}
    for sp in sorted(set(frame.loc[~frame["label"].map(is_dense), "sparsity"]), key=sparsity_order):
        rows = []
        for part, ranked in ((dense, False), (frame[(frame["sparsity"] == sp) & ~frame["label"].map(is_dense)], True)):
            for label, runs in part.groupby("label", sort=False):
                ids = set(runs["run_id"])
                row = {"rank": None, "pruner": label}
                for ds in datasets:
                    row[f"{ds} ppl"] = _mean(ppl[ppl["run_id"].isin(ids) & (ppl["dataset"] == ds)]["value"])
                if not zs.empty:
                    row["zero-shot mean acc"] = _mean(zs[zs["run_id"].isin(ids)]["value"])
                row["prune s"] = math.nan if not ranked else _prune_seconds(ids, manifests)
                row["_ranked"] = ranked
                rows.append(row)
        table = pd.DataFrame(rows)
        key = f"{datasets[0]} ppl"
        top, rest = table[~table["_ranked"]], table[table["_ranked"]]
        rest = rest.assign(_missing=rest[key].isna()).sort_values(["_missing", key], kind="stable")
        rest["rank"] = range(1, len(rest) + 1)
        tables[sp] = pd.concat([top, rest.drop(columns="_missing")], ignore_index=True).drop(columns="_ranked")
    return tables


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def leaderboard_section(frame: pd.DataFrame, manifests: dict) -> list[str]:
    """Markdown lines of the leaderboard of one model and protocol (empty without perplexity)."""
    tables = leaderboard(frame, manifests)
    if not tables:
        return []
    lines = ["### Leaderboard", "",
             "Per sparsity, ranked by the first dataset's perplexity (mean over seeds, lower is better); dense on "
             "top; `prune s`: seconds spent pruning (mean over seeds).", ""]
    for sp, table in tables.items():
        shown = table.astype(object).map(_cell) if hasattr(table, "map") else table.applymap(_cell)
        lines += [f"**Sparsity {sp}**", "", shown.to_markdown(index=False), ""]
    return lines


def allocation_table(results_dir: str | Path, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per block (rows) and allocated run (column groups): target sparsity, measured sparsity, outlier ratio."""
    cols = {}
    labels = metrics.drop_duplicates("run_id").set_index("run_id")
    for run_id, r in labels.iterrows():
        path = Path(results_dir) / "runs" / run_id / "blocks.csv"
        if not path.is_file():
            continue
        blocks = pd.read_csv(path)
        blocks = blocks[blocks["metric"].map(is_allocation_metric)]
        if not (blocks["metric"] == "target_sparsity").any():
            continue
        name = f"{r['model']} {r['pruner']} {r['sparsity']}"
        for metric, part in blocks.groupby("metric"):
            cols[(name, metric)] = part.set_index("block")["value"].astype(float)
    if not cols:
        return pd.DataFrame()
    table = pd.DataFrame(cols)
    table.index.name = "block"
    return table


def allocation_section(results_dir: str | Path, metrics: pd.DataFrame) -> list[str]:
    """Markdown lines showing every allocated run's per-block sparsities (empty when none allocated)."""
    table = allocation_table(results_dir, metrics)
    if table.empty:
        return []
    flat = table.copy()
    flat.columns = [f"{run}: {metric}" for run, metric in table.columns]
    shown = flat.astype(object).map(_cell) if hasattr(flat, "map") else flat.applymap(_cell)
    return ["## Layer-wise allocation", "",
            "Per block: the allocation's target sparsity, the measured sparsity (zeros / weights of the block's "
            "Linears, as in layers.csv) and the allocation's measure of the dense block (OWL: outlier ratio; "
            "AlphaPruning: mean PL_Alpha_Hill; DLP: median weight-activation score).", "",
            shown.reset_index().to_markdown(index=False), ""]
