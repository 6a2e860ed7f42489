"""AlphaPruning (Lu et al., NeurIPS 2024): block sparsities from the heavy tails of the weights' spectra.

Heavy-tailed self-regularization reads how well trained a matrix is from the empirical spectral
density (ESD) of ``W^T W``, the squared singular values of ``W``: the heavier its power-law tail
(the smaller the exponent ``alpha``), the more the matrix has learned. AlphaPruning prunes the
blocks with light tails (large ``alpha``) more:

1. Per matrix, ``PL_Alpha_Hill``: the maximum-likelihood (Hill) exponent of a power law fitted to
   the eigenvalues at or above ``lambda_min``,
   ``alpha = 1 + k / sum_{i=1..k} ln(lambda_i / lambda_min)`` over the ``k`` eigenvalues in the tail.
   ``xmin=peak`` (the paper's): ``lambda_min`` is searched among the eigenvalues within
   [0.95, 1.5] x the peak of the ESD (a 100-bin histogram of log10 eigenvalues), taking the one
   whose fitted power law is nearest the empirical tail (Kolmogorov-Smirnov distance);
   ``xmin=median``: ``lambda_min`` is the median eigenvalue (the tail is the upper half).
2. Per block, the mean ``alpha`` of its Linears (``blocks.csv``: ``allocation:alpha_hill``).
3. Linear map, the paper's: ``s_l = c ((1 - epsilon) + 2 epsilon u_l)`` with ``u_l`` the block's
   ``alpha`` min-max normalized over the pruned blocks, and ``c`` such that the parameter-weighted
   mean is the target. Block sparsities thus lie within a factor ``(1 +- epsilon) / mean`` of it.

Weights only: no calibration data, so it combines with magnitude too. Settings:
``epsilon`` (AlphaPruning's README prunes LLaMA-7B at 70% with 0.3 for magnitude and 0.2 for
Wanda; the default here is 0.2), ``xmin`` (``peak`` or ``median``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .allocation import AllocationCost, Layerwise, check_exact, check_spread

XMIN_RULES = ("peak", "median")
# Seconds per FLOP of torch.linalg.svdvals in float32 on the reference CPU (the idle 2-core AMD EPYC
# of make bench), measured on SmolLM2-135M's matrices (576 x 1536 and 1536 x 576):
# docs/cost-model.md. An m x n matrix (m <= n) takes about 4 m^2 n FLOPs.
SVD_FLOPS_PER_S = 2.0e9


def eigenvalues(weight: torch.Tensor) -> torch.Tensor:
    """The ESD of ``W^T W``: squared singular values of ``weight`` (float64, ascending, positive only)."""
    sv = torch.linalg.svdvals(weight.detach().double())
    eigs = (sv * sv).sort().values
    return eigs[eigs > 0]


def hill(eigs: torch.Tensor, at: int) -> float:
    """Hill exponent of the ascending eigenvalues ``eigs`` from index ``at`` (``lambda_min = eigs[at]``)."""
    tail = eigs[at:]
    return float(1 + len(tail) / torch.log(tail / tail[0]).sum())


def _ks_distance(tail: torch.Tensor, alpha: float) -> float:
    """Largest gap between the empirical CDF of ``tail`` (ascending) and the power law from ``tail[0]``."""
    n = len(tail)
    model = 1 - (tail / tail[0]) ** (1 - alpha)
    empirical = torch.arange(n, dtype=tail.dtype) / n
    return float((model - empirical).abs().max())


def alpha_hill(weight: torch.Tensor, xmin: str = "peak") -> float:
    """``PL_Alpha_Hill`` of one matrix (see the module docstring)."""
    eigs = eigenvalues(weight)
    if xmin == "median":
        return hill(eigs, len(eigs) // 2)
    logs = torch.log10(eigs)
    counts = torch.histc(logs, bins=100, min=float(logs[0]), max=float(logs[-1]))
    edges = torch.linspace(float(logs[0]), float(logs[-1]), 101, dtype=torch.float64)
    peak = 10 ** float(edges[int(counts.argmax())])
    window = ((eigs >= 0.95 * peak) & (eigs <= 1.5 * peak)).nonzero().flatten().tolist()
    candidates = [i for i in window if i < len(eigs) - 1] or [len(eigs) // 2]
    fits = [(_ks_distance(eigs[i:], hill(eigs, i)), i) for i in candidates]
    return hill(eigs, min(fits)[1])


def svd_seconds(shape) -> float:
    """Seconds of the singular values of every Linear of one block (``pruners/cost.py`` Shape)."""
    flops = sum(4.0 * min(i, o) ** 2 * max(i, o) for _, i, o in shape.linears())
    return flops / SVD_FLOPS_PER_S


@dataclass(frozen=True)
class SvdCost(AllocationCost):
    """No calibration pass; the singular values of every Linear of each block."""

    def seconds(self, shape) -> float:
        return svd_seconds(shape)


@dataclass
class AlphaPruning(Layerwise):
    """AlphaPruning's allocation (see the module docstring)."""

    epsilon: float = 0.2
    xmin: str = "peak"
    name: str = "alphapruning"
    needs_calibration: bool = False
    exact: bool = True
    metric: str = "alpha_hill"
    cost: AllocationCost = field(default_factory=SvdCost)
    spread_key: ClassVar[str] = "epsilon"

    def measure(self, weights: dict[str, torch.Tensor], norms=None) -> float:
        """Mean ``PL_Alpha_Hill`` of the block's Linears."""
        alphas = [alpha_hill(w, self.xmin) for w in weights.values()]
        return sum(alphas) / len(alphas)

    def targets(self, measures: dict[int, float], sizes: dict[int, int], target: float) -> dict[int, float]:
        """``c ((1 - epsilon) + 2 epsilon u_l)``, parameter-weighted mean ``target``; equal exponents:
        every block at the target."""
        low, high = min(measures.values()), max(measures.values())
        if high - low <= 0:
            return {i: target for i in measures}
        raw = {i: (1 - self.epsilon) + 2 * self.epsilon * (a - low) / (high - low) for i, a in measures.items()}
        scale = target * sum(sizes[i] for i in raw) / sum(raw[i] * sizes[i] for i in raw)
        return {i: r * scale for i, r in raw.items()}


def build(name: str = "alphapruning", epsilon: float = 0.2, xmin: str = "peak", exact: bool = True) -> AlphaPruning:
    """Builder of ``conf/allocation/alphapruning.yaml``."""
    if xmin not in XMIN_RULES:
        raise ValueError(f"allocation.xmin={xmin!r} is not valid: accepted {', '.join(XMIN_RULES)}")
    return AlphaPruning(check_spread("epsilon", epsilon, 1.0, "paper: 0.2-0.3"), xmin, name,
                        exact=check_exact(exact))
