"""The metrics a run records, declared once: what ``metrics.csv``'s ``metric`` column holds, how
tables and plots name it, which direction is better, and whether it is shown in percent.

Tables (best-value markers), plots (axis labels, percent scaling), the leaderboard (ranking)
and the report read these objects; none of them spells a metric name of its own.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One recorded metric."""

    name: str               # the value in metrics.csv's ``metric`` column
    title: str              # how tables and plots name it
    higher_is_better: bool
    percent: bool = False   # stored as a fraction, shown x100


PPL = Metric("ppl", "perplexity", higher_is_better=False)
ACC = Metric("acc", "accuracy", higher_is_better=True, percent=True)
ACC_NORM = Metric("acc_norm", "length-normalized accuracy", higher_is_better=True, percent=True)

METRICS = {m.name: m for m in (PPL, ACC, ACC_NORM)}
ZEROSHOT = (ACC, ACC_NORM)           # what every zero-shot task records
ZEROSHOT_NAMES = tuple(m.name for m in ZEROSHOT)
PERCENT_NAMES = tuple(m.name for m in METRICS.values() if m.percent)

# Rows of metrics.csv that are not one dataset: the mean over the zero-shot tasks that ran, and a
# run-level failure (the run's status on one row, every metric missing).
ZEROSHOT_MEAN = "zeroshot_mean"
WHOLE_RUN = "all"
