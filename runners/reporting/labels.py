"""Canonical labels of the results store's metric rows: sparsity text and order, pruner order, row labels.

Shared by the tables, the seed aggregation, the plots and the published comparison, so that a
configuration gets the same label everywhere. Pruner labels are shown as stored (``sparsellm+keep_best``
stays that, never folded into ``sparsellm``). A pruner's rank comes from its config (``order``,
runners/registry.py), sparsity text and ratio from ``SparsityPattern`` (pruners/pattern.py), the
dense baseline from ``pruners.dense.is_dense``.
"""
from __future__ import annotations

import pandas as pd

from pruners.dense import is_dense as _is_dense_label
from pruners.pattern import SparsityPattern
from runners.registry import order_key

GROUP = ["model", "protocol", "eval_seqlen", "eval_max_windows"]
# Identity columns besides model/protocol/pruner/sparsity: when one varies among the pruned rows it
# splits them and appears in the row label (``wanda layers=first_half``). ``seed`` is not one of
# them: the report aggregates over seeds instead (runners/reporting/aggregate.py).
# ``settings``: the pruner/allocation/refinement settings that differ from their config files,
# shown as they are (``wanda+alphapruning allocation.epsilon=0.1``).
VARYING = ["layers", "calib_dataset", "calib_nsamples", "calib_seqlen", "dtype", "device", "data_source", "eval_bos",
           "settings"]
DENSE_VARYING = ["dtype", "device", "data_source", "eval_bos"]  # what can split the dense baseline
# Columns older stores lack; their rows read this value, so a mix of old and new runs stays apart.
# eval_bos (perplexity windows read after the BOS, eval.bos) is the exception: every run before it
# was recorded read none, exactly as eval_bos=False does, so those rows read False and stay together.
RECENT = {"dtype": "unrecorded", "device": "unrecorded", "data_source": "unrecorded", "eval_bos": "False",
          "settings": ""}  # stores before the column read as the defaults, as every report before it did


def sparsity_label(value: object) -> str:
    """Canonical sparsity text (``0.5``, ``2:4``, ``0`` for dense) whatever pandas parsed it as:
    ``SparsityPattern.label`` of the value (text it cannot parse is kept as it is)."""
    text = str(value).strip()
    try:
        return SparsityPattern.parse(float(text) if ":" not in text else text).label
    except ValueError:
        return text


def sparsity_ratio(label: str) -> float:
    """Fraction of zeros of a sparsity label: ``0.7`` -> 0.7, ``3:4`` -> 0.75."""
    return SparsityPattern.parse(label).ratio


def sparsity_order(label: str) -> tuple:
    """Sort key: unstructured by ratio first, then N:M patterns by ratio."""
    pattern = SparsityPattern.parse(label)
    return (1, pattern.ratio, pattern.m) if pattern.is_nm else (0, pattern.ratio, 0)


def pruner_order(name: str) -> tuple:
    """Sort key of a row label: its pruner's ``order`` (from its config: dense first, then the methods
    in the papers' order, plugins after the built-ins), each refinement or allocation right after
    the label it applies to (``wanda+dsnot`` after ``wanda``), then the rest of the row label."""
    return order_key(name.split(" ")[0]) + (name,)


def is_dense(label: str) -> bool:
    """True for the dense baseline's label: a run's ``pruner`` column, or a row label (``dense``, or
    ``dense device=cuda`` when that varies)."""
    return _is_dense_label(str(label).split(" ")[0])


def dense_rows(labels: pd.Series) -> pd.Series:
    """Boolean mask of the dense baseline's entries of a column of labels (``is_dense`` per entry)."""
    return labels.map(is_dense).astype(bool)


def _text(value: object) -> str:
    """Cell text of an identity value: ``4`` for 4.0 (a column with blanks is read as float), ``""`` for NaN."""
    if isinstance(value, float):
        return "" if pd.isna(value) else (str(int(value)) if value.is_integer() else str(value))
    return str(value)


def normalize(metrics: pd.DataFrame) -> pd.DataFrame:
    """Metric rows with canonical text for sparsity/layers/status/identity columns, ``all`` for
    unlimited windows, and the columns older stores lack (``dtype``, ``device``, ``data_source``, ``eval_bos``)."""
    out = metrics.copy()
    out["sparsity"] = out["sparsity"].map(sparsity_label)
    for col, missing in RECENT.items():
        out[col] = out[col].map(lambda v, m=missing: _text(v) or m) if col in out else missing
    for col in ("layers", "status", "dataset", "metric", "pruner", "model", "protocol", "calib_dataset",
                "calib_nsamples", "calib_seqlen", "seed"):
        out[col] = out[col].map(_text) if col in out else ""
    out["eval_max_windows"] = out["eval_max_windows"].map(
        lambda v: "all" if pd.isna(v) or str(v) in ("", "None") else str(int(float(v))))
    out["message"] = out["message"].fillna("").astype(str) if "message" in out else ""
    return out


def row_labels(frame: pd.DataFrame, with_sparsity: bool = False, exclude=()) -> pd.Series:
    """Row label of every metric row: the pruner as stored (and sparsity), plus ``col=value`` for
    each identity column that varies among the pruned rows (``exclude``: columns to leave out)."""
    baseline = dense_rows(frame["pruner"])
    pruned, dense = frame[~baseline], frame[baseline]
    varying = [c for c in VARYING if c not in exclude and c in frame and pruned[c].astype(str).nunique() > 1]
    dense_varying = [c for c in DENSE_VARYING if c in frame and dense[c].astype(str).nunique() > 1]

    def label(r) -> str:
        if is_dense(r["pruner"]):
            return r["pruner"] + "".join(f" {c}={r[c]}" for c in dense_varying)
        text = r["pruner"] + (f" {r['sparsity']}" if with_sparsity else "")
        return text + "".join((f" {r[c]}" if r[c] else "") if c == "settings" else f" {c}={r[c]}" for c in varying)
    return frame.apply(label, axis=1) if len(frame) else pd.Series(dtype=str)
