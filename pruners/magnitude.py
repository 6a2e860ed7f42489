"""Magnitude pruning: drop the weights of smallest |W|, per matrix.

Sample config (``conf/pruner/magnitude.yaml``)::

    _target_: pruners.magnitude.build
    name: magnitude

Unstructured: exactly ``int(numel * s)`` weights of each matrix (not global across layers).
N:M: the ``n_zero`` smallest |W| of every group of ``m`` consecutive inputs of a row.
Needs no calibration data, so the engine runs no calibration pass for it.
"""
from __future__ import annotations

import torch

from .base import PerLinearPruner
from .cost import SelectionCost
from .pattern import SparsityPattern, select_mask

# Cost model (pruners/cost.py): no pass, the selection only. 38 ns per weight: the fitted fixed
# part c0 of the OPT-13B, OPT-66B and LLaMA-2-70B blocks of `make bench-scale` (37-41 ns, idle
# machine; the smaller LLaMA-2-7B matrices run faster, 22 ns); `make bench` 1.8 s on SmolLM2.
COST = SelectionCost(seconds_per_weight=38e-9, passes=0, bench_seconds=1.8, bench_target=0.1)


def magnitude_prune(weight: torch.Tensor, stats: object, pattern: SparsityPattern) -> torch.Tensor:
    """Return a copy of ``weight`` with its smallest-magnitude entries set to zero."""
    mask = select_mask(weight.abs().float(), pattern, per_row=False)
    return weight.masked_fill(mask, 0)


def build(name: str = "magnitude") -> PerLinearPruner:
    """Builder used by Hydra's ``_target_``."""
    return PerLinearPruner(name=name, prune_fn=magnitude_prune, cost=COST)
