"""The prose of ``report.md``: how every number was obtained, calibration pools, numerical fallbacks, notes.

Everything here is read from the runs' ``metrics.csv`` rows and ``manifest.json`` (and the
``fallback:<kind>`` rows of ``blocks.csv``); nothing is assumed. Keys that older stores lack
(``calibration``, ``fallbacks`` in the manifest) are reported as "not recorded", never as none.
"""
from __future__ import annotations

from collections import Counter
from pathlib import PurePath

import pandas as pd

from eval.metrics import ACC, PPL, WHOLE_RUN, ZEROSHOT_MEAN
from runners.reporting.labels import dense_rows


def join(values) -> str:
    """```a`, `b``` in first-seen order, without repeats."""
    return ", ".join(f"`{v}`" for v in dict.fromkeys(map(str, values)))


def _runs(n: int) -> str:
    """``1 run`` / ``3 runs``."""
    return f"{n} run{'s' * (n != 1)}"


def uses_calibration(run_ids, manifests: dict) -> pd.Series:
    """Per run id: True when its pruner read calibration data (the run key of one that does not has calib None)."""
    return pd.Series([(manifests.get(r, {}).get("run_key") or {}).get("calib", 1) is not None for r in run_ids],
                     index=list(run_ids), dtype=bool)


def calibration_pool_lines(pruned: pd.DataFrame, manifests: dict) -> list[str]:
    """One bullet per distinct calibration pool of the runs that read calibration data, then each warning
    once (with how many runs it applies to), then the runs whose manifest does not record the pool."""
    pools, warnings, unrecorded = {}, Counter(), []
    for rid, pruner, seed in pruned[["run_id", "pruner", "seed"]].itertuples(index=False):
        cal = manifests.get(rid, {}).get("calibration")
        if not cal:
            unrecorded.append(pruner)
            continue
        files = tuple((PurePath(str(f.get("path", ""))).name, str(f.get("sha256") or "")[:12])
                      for f in cal.get("files") or [])
        key = (cal.get("dataset"), cal.get("source"), files, cal.get("documents"), cal.get("eligible_documents"),
               cal.get("nsamples"), cal.get("seqlen"))
        pool = pools.setdefault(key, {"drawn": {}, "pruners": []})
        pool["drawn"].setdefault(str(cal.get("seed", seed)), set()).add(str(cal.get("distinct_documents_drawn")))
        pool["pruners"].append(pruner)
        if cal.get("warning"):
            warnings[str(cal["warning"]).strip()] += 1
    lines = []
    for (dataset, source, files, docs, eligible, nsamples, seqlen), pool in pools.items():
        where = "the hub" if source == "hub" else f"{source} files"
        names = ", ".join(f"`{name}`" + (f" (sha256 `{sha}`)" if sha else "") for name, sha in files)
        drawn = ", ".join(f"seed {s}: {'/'.join(sorted(v))}" for s, v in
                          sorted(pool["drawn"].items(), key=lambda kv: (len(kv[0]), kv[0])))
        lines.append(f"- Calibration pool ({join(pool['pruners'])}): `{dataset}` from {where}"
                     + (f" {names}" if names else "") + f"; {docs} documents, {eligible} eligible at seqlen "
                     f"{seqlen} (longer than {seqlen} tokens); {nsamples} x {seqlen} tokens drawn per run; "
                     f"distinct documents drawn: {drawn}.")
    lines += [f"- Calibration warning ({_runs(n)}): {text}" for text, n in warnings.items()]
    if unrecorded:
        lines.append(f"- Calibration pool not recorded ({_runs(len(unrecorded))}: {join(unrecorded)}).")
    return lines


def fallback_counts(run_id: str, manifest: dict, fallbacks: pd.DataFrame) -> dict | None:
    """``{kind: count}`` of one run: the manifest's ``fallbacks.by_kind``, else its ``fallback:*`` rows of
    blocks.csv; None when neither records anything (a run from before fallbacks were counted)."""
    recorded = manifest.get("fallbacks")
    if isinstance(recorded, dict):
        return {str(k): int(v) for k, v in (recorded.get("by_kind") or {}).items() if v}
    rows = fallbacks[fallbacks["run_id"] == run_id] if not fallbacks.empty else fallbacks
    if rows.empty:
        return None
    return {k: int(v) for k, v in rows.groupby("kind")["value"].sum().items() if v}


def fallback_line(pruned: pd.DataFrame, manifests: dict, fallbacks: pd.DataFrame) -> str:
    """``- Numerical fallbacks: none.`` or the total and the count per kind over this group's pruned runs."""
    counts, unrecorded, hit = Counter(), 0, 0
    for rid in pruned["run_id"].unique():
        kinds = fallback_counts(rid, manifests.get(rid, {}), fallbacks)
        if kinds is None:
            unrecorded += 1
            continue
        counts.update(kinds)
        hit += bool(kinds)
    recorded = pruned["run_id"].nunique() - unrecorded
    if recorded == 0:
        return "- Numerical fallbacks: not recorded."
    text = "none" if not counts else (
        f"{sum(counts.values())} in {hit} of {_runs(recorded)} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "; see Numerical fallbacks)")
    return f"- Numerical fallbacks: {text}" + (f"; not recorded for {_runs(unrecorded)}." if unrecorded else ".")


def fallback_section(metrics: pd.DataFrame, manifests: dict, fallbacks: pd.DataFrame) -> list[str]:
    """Markdown table of every run with a numerical fallback: its label, counts by kind, blocks affected."""
    runs = metrics.drop_duplicates("run_id").set_index("run_id")
    lines = []
    for rid, r in runs.iterrows():
        kinds = fallback_counts(rid, manifests.get(rid, {}), fallbacks)
        if not kinds:
            continue
        rows = fallbacks[(fallbacks["run_id"] == rid) & (fallbacks["value"] > 0)] if not fallbacks.empty else fallbacks
        blocks = "; ".join(f"{k}: " + ", ".join(map(str, sorted(set(g["block"].astype(int)))))
                           for k, g in rows.groupby("kind")) if not rows.empty else "not recorded"
        label = f"{r['model']}, {r['protocol']}: {r['pruner']} {r['sparsity']} layers={r['layers']} seed {r['seed']}"
        lines.append(f"| {label} | `{rid}` | " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
                     + f" | {blocks} |")
    if not lines:
        return []
    return ["## Numerical fallbacks", "",
            "Runs in which a solver fell back to a safer path (e.g. more damping before a Cholesky "
            "factorization, a larger ridge, a non-finite iterate skipped, an early stop on overflow). "
            "Their numbers are valid but were not computed the way the method prescribes.", "",
            "| run | run id | fallbacks (count by kind) | blocks affected |", "|---|---|---|---|", *lines, ""]


def protocol_lines(frame: pd.DataFrame, manifests: dict, fallbacks: pd.DataFrame | None = None) -> list[str]:
    """Markdown bullets stating how every number of one model/protocol was obtained."""
    fallbacks = fallbacks if fallbacks is not None else pd.DataFrame(columns=["run_id", "block", "kind", "value"])
    pruned = frame[~dense_rows(frame["pruner"])].drop_duplicates("run_id")
    first = frame.iloc[0]
    datasets = [d for d in frame.loc[frame["metric"] == PPL.name, "dataset"].unique() if d != WHOLE_RUN]
    windows = "every window" if first["eval_max_windows"] == "all" else f"the first {first['eval_max_windows']} windows"
    lines = [f"- Evaluation: perplexity on {join(datasets) or 'none'}, non-overlapping windows of "
             f"{first['eval_seqlen']} tokens, {windows} of each test set."]
    tasks = [d for d in frame.loc[frame["metric"] == ACC.name, "dataset"].unique() if d != ZEROSHOT_MEAN]
    if tasks:
        lines.append(f"- Zero-shot (lm-eval, 0-shot): {join(tasks)}; mean over the tasks that ran.")
    runs_first = frame.drop_duplicates("run_id")
    lines.append(f"- Numerics: dtype {join(runs_first['dtype'])}; device {join(runs_first['device'])}; "
                 f"data source {join(runs_first['data_source'])}.")
    if not pruned.empty:
        uses = uses_calibration(pruned["run_id"], manifests).to_numpy()
        calib = pruned[uses].groupby(["calib_dataset", "calib_nsamples", "calib_seqlen"], sort=True)["pruner"]
        parts = [f"{ds} {n} x {sl} tokens ({join(p)})" for (ds, n, sl), p in calib.unique().items()]
        parts += [f"none ({join(pruned.loc[~uses, 'pruner'])})"] if (~uses).any() else []
        seeds = sorted(dict.fromkeys(pruned["seed"].astype(str)), key=lambda s: (len(s), s))
        lines.append("- Calibration: " + "; ".join(parts) + f"; seed {join(seeds)}.")
        lines += calibration_pool_lines(pruned[uses], manifests)
        layers = pruned.groupby("layers", sort=True)["pruner"].unique()
        lines.append("- Pruned blocks (`layers`): " + "; ".join(f"`{k}` ({join(p)})" for k, p in layers.items()) + ".")
        lines.append(fallback_line(pruned, manifests, fallbacks))
    dense = frame[dense_rows(frame["pruner"])].drop_duplicates("run_id")
    if not dense.empty:
        seeds = "seed-independent" if (dense["seed"] == "").all() else \
            f"seed {join(sorted(dense['seed'].astype(str), key=lambda s: (len(s), s)))}"
        lines.append(f"- Dense baseline: {_runs(len(dense))} ({seeds})"
                     + ("; its cells are their mean ± std." if len(dense) > 1 else "."))
    runs = [manifests[r] for r in frame["run_id"].unique() if r in manifests]
    statuses = pd.Series([m.get("status") for m in runs]).value_counts()
    lines.append(f"- Runs: {len(runs)} (" + ", ".join(f"{k} {v}" for k, v in statuses.items()) + ").")
    versions = pd.Series([", ".join(f"{k} {v}" for k, v in sorted((m.get("versions") or {}).items()) if v)
                          for m in runs]).value_counts()
    for text, count in versions.items():
        lines.append(f"- Packages ({_runs(count)}): {text or 'not recorded'}.")
    revs = {f"{(m.get('git') or {}).get('commit') or 'unknown'}"[:10]
            + (" (uncommitted changes)" if (m.get("git") or {}).get("dirty") else "") for m in runs}
    hw = {str((m.get("hardware") or {}).get("gpu") or (m.get("hardware") or {}).get("cpu")
              or (m.get("hardware") or {}).get("device")) for m in runs}
    lines.append(f"- Code revision: {join(sorted(revs))}; hardware: {join(sorted(hw))}.")
    return lines


def note_lines(metrics: pd.DataFrame, with_ids: bool = True) -> list[str]:
    """Each distinct (status, message) of the failed metric rows once, with the number of runs it applies to."""
    notes = metrics[(metrics["status"] != "ok") & metrics["message"].notna() & (metrics["message"] != "")]
    lines = []
    for (status, message), g in notes.groupby(["status", "message"], sort=True):
        ids = list(dict.fromkeys(g["run_id"]))
        shown = f": {join(ids[:3])}" + (", ..." if len(ids) > 3 else "") if with_ids else ""
        lines.append(f"- {status} ({_runs(len(ids))}{shown}): {message}")
    return lines
