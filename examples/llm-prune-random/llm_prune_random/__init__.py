"""Random pruning: the sanity floor every pruning method must beat.

Every Linear gets uniform random scores from one generator seeded by ``seed``; the lowest are
pruned at the target pattern with the harness's exact selection (``int(numel * s)`` weights of
each matrix, or ``n_zero`` of every ``m`` consecutive inputs of a row for N:M). No calibration
data, no weight update. The masks depend only on the seed and the order of the Linears.
"""
from __future__ import annotations

import torch

from pruners.base import PerLinearPruner, check_setting
from pruners.pattern import SparsityPattern, select_mask


def build(name: str = "random", seed: int = 0) -> PerLinearPruner:
    """Builder named by ``conf/pruner/random.yaml``'s ``_target_``."""
    check_setting(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "seed", seed,
                  "a whole number >= 0")
    generator = torch.Generator().manual_seed(seed)  # one stream over the Linears, in engine order

    def random_prune(weight: torch.Tensor, stats: object, pattern: SparsityPattern) -> torch.Tensor:
        scores = torch.rand(weight.shape, generator=generator).to(weight.device)
        return weight.masked_fill(select_mask(scores, pattern, per_row=False), 0)

    return PerLinearPruner(name=name, prune_fn=random_prune)
