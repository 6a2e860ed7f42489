"""DLP, Dynamic Layerwise Pruning (Chen et al., ICML 2025): block sparsities from the median
weight-activation score.

1. Per block, on the dense model (one calibration pass before pruning, as OWL), the block's
   *unimportance* ``m_l``: the median of the Wanda scores ``|W_ij| * ||X_j||`` of all its
   Linears together (the lower of the two middle values; ``blocks.csv``: ``allocation:median_score``).
2. Relative importance ``r_l = 1 - m_l / sum_k m_k``, min-max normalized over the pruned blocks
   to ``u_l`` in [0, 1] (so ``u_l = (max m - m_l) / (max m - min m)``).
3. ``s_l = s - 2 alpha (u_l - u_bar)``, ``u_bar`` the parameter-weighted mean of ``u`` (the
   paper's plain mean when all blocks have the same size), so the blocks with the larger median
   score are pruned more and the weighted mean is the target ``s``; the spread is ``2 alpha``.

Setting: ``alpha`` (default 0.15; the paper tunes it per model and sparsity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .allocation import AllocationCost, Layerwise, check_exact, check_spread


def median_score(weights: dict[str, torch.Tensor], norms: dict[str, torch.Tensor]) -> float:
    """Lower median of ``|W_ij| * ||X_j||`` over every weight of the block's Linears."""
    scores = torch.cat([(w.abs().float() * norms[n].to(w.device).float().unsqueeze(0)).reshape(-1)
                        for n, w in weights.items()])
    return float(scores.median())


@dataclass
class Dlp(Layerwise):
    """DLP's allocation (see the module docstring)."""

    alpha: float = 0.15
    name: str = "dlp"
    needs_calibration: bool = True
    exact: bool = True
    metric: str = "median_score"
    cost: AllocationCost = field(default_factory=lambda: AllocationCost(passes=1))
    spread_key: ClassVar[str] = "alpha"

    def measure(self, weights: dict[str, torch.Tensor], norms: dict[str, torch.Tensor]) -> float:
        return median_score(weights, norms)

    def targets(self, measures: dict[int, float], sizes: dict[int, int], target: float) -> dict[int, float]:
        """``s - 2 alpha (u_l - u_bar)``; equal medians: every block at the target."""
        total = sum(measures.values())
        importance = {i: 1 - m / total for i, m in measures.items()}
        low, high = min(importance.values()), max(importance.values())
        if high - low <= 0:
            return {i: target for i in measures}
        u = {i: (r - low) / (high - low) for i, r in importance.items()}
        u_bar = sum(u[i] * sizes[i] for i in u) / sum(sizes[i] for i in u)
        return {i: target - 2 * self.alpha * (v - u_bar) for i, v in u.items()}


def build(name: str = "dlp", alpha: float = 0.15, exact: bool = True) -> Dlp:
    """Builder of ``conf/allocation/dlp.yaml``."""
    return Dlp(check_spread("alpha", alpha, 0.5, "default 0.15"), name, exact=check_exact(exact))
