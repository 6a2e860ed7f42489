"""The dense baseline: prunes nothing.

Sample config (``conf/pruner/dense.yaml``)::

    _target_: pruners.dense.build
    name: dense

The job treats ``pruner=dense`` as the model's baseline run: one per (model, evaluation
protocol), shared by every pruned run of a sweep.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import BlockContext


@dataclass
class DensePruner:
    """Leaves every weight as it is."""

    name: str = "dense"
    needs_calibration: bool = False

    def prune_block(self, block: BlockContext) -> None:
        return None


def build(name: str = "dense") -> DensePruner:
    """Builder used by Hydra's ``_target_``."""
    return DensePruner(name=name)
