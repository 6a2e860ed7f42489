"""Mask refinement after pruning: the ``refine`` config group (``refine=none|dsnot``).

A refinement runs around *any* pruner (built-in or plugin) inside the engine, per pruned block:
``state = refine.prepare(block)`` before ``pruner.prune_block(block)`` (to keep what it needs of
the dense block: its weights, input statistics), then ``refine.apply(block, state)`` after it and
before the pruned block's output pass, changing which weights are zero but never how many per row.
A pruner never knows refinement exists.

* ``none``: nothing (the default; adds nothing to the run id).
* ``dsnot``: DSnoT (Zhang et al., ICLR 2024), ``pruners/refine_dsnot.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .cost import RefineCost


class Refinement(Protocol):
    """What the engine calls around a block's pruning (see module doc); ``cost`` is what it adds
    to its pruner's cost model (``pruners/cost.py``; None: ``plan=true`` says "not estimated")."""

    name: str
    needs_calibration: bool
    cost: RefineCost | None

    def prepare(self, block) -> object:
        """Before pruning: gather what ``apply`` needs from the dense block (a ``BlockContext``)."""

    def apply(self, block, state) -> None:
        """After pruning: refine the block's masks in place."""


def check_setting(ok: bool, key: str, value, accepted: str) -> None:
    """One-line rejection of a bad refinement setting: ``refine.<key>=<value> ... accepted ...``."""
    if not ok:
        raise ValueError(f"refine.{key}={value!r} is not valid: accepted {accepted}")


@dataclass
class NoRefine:
    """``refine=none``: the pruner's masks as they are."""

    name: str = "none"
    needs_calibration: bool = False
    cost: RefineCost | None = RefineCost()

    def prepare(self, block) -> None:
        return None

    def apply(self, block, state) -> None:
        return None


def refines(refine) -> bool:
    """True when a refinement runs after the pruner: one other than ``NoRefine`` (None: the run has
    none). The one test for "is there a refinement"."""
    return refine is not None and not isinstance(refine, NoRefine)


def none(name: str = "none") -> NoRefine:
    """Builder of ``conf/refine/none.yaml``."""
    return NoRefine(name=name)
