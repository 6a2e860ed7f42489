"""Numerical fallbacks: every time a method leaves its published step to stay solvable.

A pruner calls ``record(kind, detail)`` where it raises a dampening, escalates a ridge or
skips a non-finite iterate; the engine collects the events of each block
(``with collecting() as events``) and writes them to ``blocks.csv`` (metric
``fallback:<kind>``, value = count in the block), the manifest (``fallbacks``) and the report.
Outside ``collecting`` (a pruner called directly, e.g. in a unit test) events are only logged.

Kinds used here: ``cholesky_damping_raised`` (SparseGPT: the dampened Hessian was not
positive definite in float32), ``ridge_raised`` (SparseLLM least squares), ``nonfinite_iterate_skipped``
(SparseLLM: an iterate with non-finite weights was not taken), ``aux_overflow_stop``
(SparseLLM: the auxiliaries overflowed and the iterations stopped early), ``unrouted_expert_magnitude``
(the engine: no calibration token reached a mixture-of-experts expert, so its matrices were pruned by
magnitude, the one selection that needs no statistics).
"""
from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

log = logging.getLogger(__name__)
_active: ContextVar[list | None] = ContextVar("fallback_events", default=None)


def record(kind: str, detail: str = "") -> None:
    """Note one fallback of ``kind`` (a short snake_case name) with a human-readable detail."""
    log.warning("numerical fallback %s: %s", kind, detail)
    events = _active.get()
    if events is not None:
        events.append({"kind": kind, "detail": detail})


@contextmanager
def collecting() -> Iterator[list[dict]]:
    """Collect the events recorded inside the ``with`` block into the yielded list."""
    events: list[dict] = []
    token = _active.set(events)
    try:
        yield events
    finally:
        _active.reset(token)


def counts(events: list[dict]) -> dict[str, int]:
    """Events per kind."""
    return dict(Counter(e["kind"] for e in events))
