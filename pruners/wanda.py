"""Wanda: prune by ``|W_ij| * ||X_j||_2`` within each output row, no weight update.

Sample config (``conf/pruner/wanda.yaml``)::

    _target_: pruners.wanda.build
    name: wanda

``||X_j||_2^2`` is accumulated over all calibration tokens of input feature j. Unstructured:
exactly ``int(in * s)`` lowest scores of every row (stable sort). N:M: the ``n_zero`` lowest
scores of every group of ``m`` inputs of a row (any N:M, not only 2:4 and 4:8).
"""
from __future__ import annotations

import torch

from .base import PerLinearPruner
from .cost import SelectionCost
from .pattern import SparsityPattern, select_mask

# Cost model (pruners/cost.py): two passes and the row sorts, 49 ns per weight (the fitted fixed
# part c0 of the OPT-13B, OPT-66B and LLaMA-2-70B blocks of `make bench-scale`: 48-51 ns, idle
# machine; LLaMA-2-7B's smaller matrices 36 ns); `make bench` 235.5 s on SmolLM2.
COST = SelectionCost(seconds_per_weight=49e-9, bench_seconds=235.5, bench_target=2.2)


class InputNorms:
    """Running mean over tokens of the squared input of each feature, in float32."""

    def __init__(self, in_features: int):
        self.sq_mean = torch.zeros(in_features, dtype=torch.float32)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """Fold in a (tokens x in_features) batch of inputs."""
        if self.sq_mean.device != x.device:
            self.sq_mean = self.sq_mean.to(x.device)
        batch = x.shape[0]
        total = self.tokens + batch
        x = x.float()
        self.sq_mean.mul_(self.tokens / total).add_((x * x).sum(0), alpha=1.0 / total)
        self.tokens = total

    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` up to a common factor (which does not change any ranking)."""
        return self.sq_mean.sqrt()


def wanda_prune(weight: torch.Tensor, stats: InputNorms, pattern: SparsityPattern) -> torch.Tensor:
    """Return a copy of ``weight`` with the lowest Wanda scores of each row set to zero."""
    scores = weight.abs().float() * stats.norms().to(weight.device).unsqueeze(0)
    mask = select_mask(scores, pattern, per_row=True)
    return weight.masked_fill(mask, 0)


def build(name: str = "wanda", sequential: bool = False) -> PerLinearPruner:
    """Builder used by Hydra's ``_target_``."""
    return PerLinearPruner(name=name, prune_fn=wanda_prune, make_stat=InputNorms, sequential=sequential,
                           cost=COST)
