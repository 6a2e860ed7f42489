"""Combine the results store into ``summary.csv`` and a Markdown table per model and protocol.

Usage: ``python -m runners.report [results.dir=PATH]``. Reads only the results store.
Table layout: rows = pruner (the dense baseline on top), columns = sparsity x dataset.
A cell shows the perplexity, or the run's status (``nan``, ``oom``, ``unavailable``,
``error``) when there is no valid number: a failed run never shows as a number.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from .store import load_metrics

GROUP = ["model", "protocol", "eval_seqlen", "eval_max_windows"]
VARYING = ["layers", "calib_nsamples", "calib_seqlen", "seed"]


def cell(value: float, status: str) -> str:
    """Text of one table cell: the number when the row is ok, else its status."""
    return f"{value:.2f}" if status == "ok" and pd.notna(value) else str(status)


def _sparsity_order(label: str) -> tuple:
    if ":" in label:
        n, m = label.split(":")
        return (1, int(n) / int(m), int(m))
    return (0, float(label), 0)


def ppl_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One model/protocol's perplexity rows as a pruner x (sparsity, dataset) table of cells."""
    ppl = frame[frame["metric"] == "ppl"].copy()
    pruned = ppl[ppl["pruner"] != "dense"]
    varying = [c for c in VARYING if pruned[c].astype(str).nunique() > 1]
    ppl["row"] = ppl.apply(lambda r: r["pruner"] + "".join(
        f" {c}={r[c]}" for c in varying if r["pruner"] != "dense"), axis=1)
    ppl["cell"] = [cell(v, s) for v, s in zip(ppl["value"], ppl["status"])]
    sparsities = sorted(pruned["sparsity"].astype(str).unique(), key=_sparsity_order) or ["0"]
    datasets = [d for d in ppl["dataset"].unique() if d != "all"]
    table = pd.DataFrame(index=pd.Index([], name="pruner"),
                         columns=pd.MultiIndex.from_product([sparsities, datasets], names=["sparsity", "dataset"]))
    for _, r in ppl.iterrows():
        targets = sparsities if r["pruner"] == "dense" else [str(r["sparsity"])]
        for sp in targets:
            for ds in datasets if r["dataset"] == "all" else [r["dataset"]]:  # a failed run fills its row
                table.loc[r["row"], (sp, ds)] = r["cell"]
    order = sorted(table.index, key=lambda name: (not name.startswith("dense"), name))
    return table.loc[order].fillna("-")


def to_markdown(table: pd.DataFrame) -> str:
    """Markdown for a (sparsity, dataset) column table."""
    flat = table.copy()
    flat.columns = [f"{sp} {ds}" for sp, ds in table.columns]
    return flat.reset_index().to_markdown(index=False)


def summarize(results_dir: str | Path) -> str:
    """Write ``<results_dir>/summary.csv``; return the Markdown tables (one per model/protocol)."""
    metrics = load_metrics(results_dir)
    if metrics.empty:
        return f"no finished runs in {Path(results_dir) / 'runs'}"
    metrics.to_csv(Path(results_dir) / "summary.csv", index=False)
    parts = []
    for key, frame in metrics.groupby(GROUP, dropna=False, sort=True):
        title = ", ".join(f"{k}={v}" for k, v in zip(GROUP, key))
        parts.append(f"### Perplexity ({title})\n\n{to_markdown(ppl_table(frame))}\n")
    notes = metrics[(metrics["status"] != "ok") & metrics["message"].notna() & (metrics["message"] != "")]
    if not notes.empty:
        parts.append("Notes:\n" + "\n".join(sorted({f"- {m}" for m in notes["message"]})))
    return "\n".join(parts)


def main(argv: list[str]) -> None:
    """``python -m runners.report [results.dir=PATH]``."""
    results_dir = "results"
    for arg in argv:
        key, _, value = arg.partition("=")
        if key != "results.dir" or not value:
            raise SystemExit(f"error: unknown argument {arg!r}: accepted results.dir=PATH")
        results_dir = value
    print(summarize(results_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
