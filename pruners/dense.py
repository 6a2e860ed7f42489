"""The dense baseline: prunes nothing.

Sample config (``conf/pruner/dense.yaml``)::

    _target_: pruners.dense.build
    name: dense

The job treats ``pruner=dense`` as the model's baseline run: one per (model, evaluation
protocol), shared by every pruned run of a sweep. ``DENSE`` is that pruner, and ``is_dense`` the
one test for it, whatever form it comes in (the pruner, its config, its label in the store).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from .cost import NO_COST, Cost


@dataclass
class DensePruner:
    """Leaves every weight as it is: no calibration, no cost beyond evaluation."""

    name: str = "dense"
    needs_calibration: bool = False
    calib_nsamples: Mapping[str, int] | None = None
    cost: Cost | None = field(default=NO_COST)
    mlp_kinds: Collection[str] | None = None

    @property
    def label(self) -> str:
        return self.name

    def prune_block(self, block) -> None:
        return None


DENSE = DensePruner()


def is_dense(pruner) -> bool:
    """True for the dense baseline: a ``DensePruner``, a pruner config naming it (``name: dense``),
    or its label (a run's ``pruner`` column in the store, the first word of a table row)."""
    if isinstance(pruner, DensePruner):
        return True
    if isinstance(pruner, Mapping):
        pruner = pruner.get("name")
    return isinstance(pruner, str) and pruner == DENSE.label


def build(name: str = "dense") -> DensePruner:
    """Builder used by Hydra's ``_target_``."""
    return DensePruner(name=name)
