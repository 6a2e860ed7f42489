"""Aggregation over calibration seeds: mean, sample std and n per cell; paired differences between pruners.

A sweep ``seed=0,1,2`` writes one run per seed. Every table, plot and comparison of the report
shows, per configuration (every identity column except ``seed`` and ``run_id``), the mean over
the seeds whose run gave a valid number, the sample standard deviation (ddof=1) and n, and
how many seeds failed and how. The paired table compares two pruners on the seeds both ran:
with the same seed both saw the same calibration windows, so the per-seed differences cancel
the variation due to the calibration sample, and their t-interval says whether the gap is real.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from eval.metrics import PERCENT_NAMES, PPL, WHOLE_RUN
from runners.reporting.formatting import number
from runners.reporting.labels import GROUP, VARYING, dense_rows, pruner_order, row_labels, sparsity_order

# What identifies a configuration: all of it but the seed (which the aggregation averages over).
IDENTITY = [*GROUP, "pruner", "sparsity", *VARYING]
# The dense baseline prunes nothing and reads no calibration data: its calibration columns (whatever
# the sweep that first wrote it said) must not split it.
DENSE_BLANK = ["calib_dataset", "calib_nsamples", "calib_seqlen"]
PAIRED_COLUMNS = ["sparsity", "layers", "dataset", "metric", "A", "B", "n", "seeds", "mean_diff", "std_diff",
                  "ci_low", "ci_high"]


@dataclass
class Stat:
    """One aggregated cell: mean/std over the ``n`` valid seeds and the statuses of the failed ones."""

    mean: float = math.nan
    std: float = math.nan
    n: int = 0
    failed: dict = field(default_factory=dict)  # status -> number of seeds

    @property
    def rankable(self) -> bool:
        """True when every seed gave a valid number (only such cells can be marked best)."""
        return self.n > 0 and not self.failed

    def text(self, scale: float = 1.0, mark: str = "") -> str:
        """``35.00`` (n=1), ``35.00 ± 1.000 (n=3)``, ``35.00 ± 1.000 (n=2; 1 nan)``, or the status.

        Mean and std both in runners/reporting/formatting.py's format (4 significant digits, scientific
        at or above 1e5); ``mark`` (e.g. the collapsed marker) follows the mean.
        """
        if self.n == 0:
            return "/".join(self.failed) or "-"
        out = number(self.mean * scale) + mark
        if self.n > 1:
            out += f" ± {number(self.std * scale)}"
        lost = ", ".join(f"{k} {s}" for s, k in self.failed.items())
        if self.n > 1 or lost:
            out += f" (n={self.n}" + (f"; {lost})" if lost else ")")
        return out


def is_valid(value, status) -> bool:
    """A metric row that holds a usable number."""
    return status == "ok" and pd.notna(value) and math.isfinite(float(value))


def expand_failed(frame: pd.DataFrame, targets: list[tuple[str, str]]) -> pd.DataFrame:
    """Replace each failed run's single ``dataset=all`` row by one copy per ``(dataset, metric)`` target."""
    failed = frame["dataset"] == WHOLE_RUN
    if not failed.any() or not targets:
        return frame[~failed]
    copies = [frame[failed].assign(dataset=ds, metric=m) for ds, m in targets]
    return pd.concat([frame[~failed], *copies], ignore_index=True)


def _identity(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with the dense baseline's calibration columns blanked and a ``seed`` column ensured."""
    out = frame.copy()
    dense = dense_rows(out["pruner"])
    for col in DENSE_BLANK:
        out[col] = out[col].astype(str)
        out.loc[dense, col] = ""
    if "seed" not in out:
        out["seed"] = ""
    return out


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration x dataset x metric: ``mean, std, n, runs, seeds, failed, status, stat``.

    ``value`` is the mean (so code that reads a row's value keeps working) and ``status`` is ``ok``
    when at least one seed gave a number, else the failed seeds' status.
    """
    keys = IDENTITY + ["dataset", "metric"]
    if frame.empty:
        return pd.DataFrame(columns=keys + ["mean", "std", "n", "runs", "seeds", "run_ids", "failed", "status",
                                            "value", "stat"])
    rows = []
    for key, g in _identity(frame).groupby(keys, sort=False, dropna=False):
        valid = [is_valid(v, s) for v, s in zip(g["value"], g["status"])]
        values = g.loc[valid, "value"].astype(float).to_numpy()
        failed = dict(Counter(g.loc[[not v for v in valid], "status"].astype(str)))
        stat = Stat(float(values.mean()) if len(values) else math.nan,
                    float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values), failed)
        seeds = sorted(dict.fromkeys(map(str, g["seed"])), key=lambda s: (len(s), s))
        rows.append({**dict(zip(keys, key)), "mean": stat.mean, "std": stat.std, "n": stat.n, "runs": len(g),
                     "seeds": ",".join(seeds), "run_ids": ",".join(dict.fromkeys(g["run_id"].astype(str))),
                     "failed": ", ".join(f"{k} {s}" for s, k in failed.items()),
                     "status": "ok" if stat.n else "/".join(failed), "value": stat.mean, "stat": stat})
    return pd.DataFrame(rows)


def long_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The aggregated store as a flat table (``report/tables/aggregate.csv``), sorted for reading."""
    agg = aggregate(metrics).drop(columns=["stat", "value"])
    if agg.empty:
        return agg
    order = agg.apply(lambda r: (r["model"], r["protocol"], str(r["eval_seqlen"]), r["eval_max_windows"],
                                 pruner_order(r["pruner"]), sparsity_order(r["sparsity"]), r["layers"],
                                 r["dataset"], r["metric"]), axis=1)
    return agg.loc[order.sort_values().index].reset_index(drop=True)


def _t_interval(diffs: np.ndarray) -> tuple[float, float, float, float]:
    """mean, sd (ddof=1), and the 95% t-interval mean ± t_{0.975, n-1} sd / sqrt(n) (NaN when n < 2)."""
    n, mean = len(diffs), float(diffs.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(diffs.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def paired_differences(frame: pd.DataFrame) -> pd.DataFrame:
    """Every pair of pruned configurations at the same sparsity, layers, dataset and metric of one
    model/protocol: the differences A - B over the seeds both have a valid number for.

    A and B are row labels (the pruner plus whatever else varies, except ``layers``, which is part
    of the pairing key); A comes first in the papers' pruner order. Accuracies are in %.
    """
    rows = frame[~dense_rows(frame["pruner"]) & (frame["dataset"] != WHOLE_RUN)]
    rows = rows[[is_valid(v, s) for v, s in zip(rows["value"], rows["status"])]].copy()
    if rows.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    rows["label"] = row_labels(rows, exclude=("layers",))
    rows["x"] = rows["value"].astype(float) * np.where(rows["metric"].isin(PERCENT_NAMES), 100.0, 1.0)
    rows["seed"] = rows["seed"].astype(str)
    out = []
    for (sp, layers, ds, metric), g in rows.groupby(["sparsity", "layers", "dataset", "metric"], sort=False):
        per_seed = g.groupby(["label", "seed"])["x"].last()  # one value per label and seed
        labels = sorted(per_seed.index.get_level_values(0).unique(), key=pruner_order)
        for a, b in combinations(labels, 2):
            both = pd.concat([per_seed[a], per_seed[b]], axis=1, join="inner", keys=["a", "b"])
            if both.empty:
                continue
            both = both.loc[sorted(both.index, key=lambda s: (len(s), s))]
            diffs = (both["a"] - both["b"]).to_numpy(dtype=float)
            mean, sd, lo, hi = _t_interval(diffs)
            out.append({"sparsity": sp, "layers": layers, "dataset": ds, "metric": metric, "A": a, "B": b,
                        "n": len(diffs), "seeds": ",".join(both.index), "mean_diff": mean, "std_diff": sd,
                        "ci_low": lo, "ci_high": hi})
    table = pd.DataFrame(out, columns=PAIRED_COLUMNS)
    if table.empty:
        return table
    datasets = list(dict.fromkeys(rows["dataset"]))  # the order the runs evaluated them in
    order = table.apply(lambda r: (sparsity_order(r["sparsity"]), r["layers"], r["metric"] != PPL.name,
                                   datasets.index(r["dataset"]), r["metric"], pruner_order(r["A"]),
                                   pruner_order(r["B"])), axis=1)
    return table.loc[order.sort_values().index].reset_index(drop=True)


def paired_text(pairs: pd.DataFrame) -> pd.DataFrame:
    """The paired differences as cell texts: ``n/a`` for the spread and interval when n < 2."""
    def fmt(v: float) -> str:
        return "n/a" if pd.isna(v) else number(v)

    text = pairs[["sparsity", "layers", "dataset", "metric", "A", "B", "n"]].astype(str)
    text["mean (A - B)"] = pairs["mean_diff"].map(fmt)
    text["std"] = pairs["std_diff"].map(fmt)
    text["95% CI"] = [("n/a" if pd.isna(lo) else f"[{number(lo)}, {number(hi)}]") for lo, hi in
                      zip(pairs["ci_low"], pairs["ci_high"])]
    text["excludes 0"] = [("n/a" if pd.isna(lo) else ("yes" if lo > 0 or hi < 0 else "no")) for lo, hi in
                          zip(pairs["ci_low"], pairs["ci_high"])]
    return text.reset_index(drop=True)
