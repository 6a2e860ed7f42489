"""Layer-wise sparsity allocation: how the overall target is shared among the pruned blocks.

Config group ``conf/allocation/`` (``allocation=uniform|owl``), combinable with every pruner: the
engine asks the allocation for one sparsity per block and hands each block's pruner a
``SparsityPattern`` of that ratio, so a pruner never knows allocation exists.

* ``uniform``: every block at the target (the default; no extra pass).
* ``owl`` (Outlier Weighed Layerwise sparsity, Yin et al., ICML 2024): a block with more
  outliers keeps more weights. Its outlier ratio ``D_l`` is the share of the block's
  activation-weighted scores ``|W_ij| * ||X_j||`` (over all its Linears together) above ``m``
  times their mean, measured on the *dense* model (one calibration pass before pruning, so
  every block is scored on the same unpruned inputs). ``D`` is mapped linearly and decreasing
  onto block sparsities around the target, spread over at most ``±lam``, with the
  parameter-weighted mean equal to the target (see ``spread``). Paper defaults: m=5, lam=0.08.

The overall sparsity stays exact: per-block zero counts are rounded so that they sum to
``round(s * total)`` (``exact_counts``), each block's ratio is its count over its size, and the
block's pattern is ``exact`` (``SparsityPattern.zeros``): every matrix gets ``round(ratio x numel)``
zeros, a per-row pruner (Wanda) spreading the remainder over its rows and SparseGPT over its
column blocks, so the total lands within one weight per matrix of ``round(s * total)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .pattern import SparsityPattern


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Share of all entries of ``scores`` (one tensor per Linear of a block) above ``m`` x their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def spread(ratios: dict[int, float], sizes: dict[int, int], target: float, lam: float) -> dict[int, float]:
    """Block sparsities from outlier ratios: linear and decreasing in the ratio, weighted mean ``target``.

    ``u_l = (D_l - min D) / (max D - min D)`` in [0, 1]; ``s_l = target - c (u_l - u_bar)`` with
    ``u_bar`` the size-weighted mean of ``u`` (so the weighted mean of ``s`` is the target) and
    ``c`` as large as keeps every block within ``±lam`` (``c = 2 lam`` when ``u_bar = 1/2``, the
    paper's map; else the paper's map shifted to the mean could leave ``±lam``). Equal ratios: all
    blocks at the target.
    """
    low, high = min(ratios.values()), max(ratios.values())
    if high - low <= 0:
        return {i: target for i in ratios}
    u = {i: (d - low) / (high - low) for i, d in ratios.items()}
    total = sum(sizes[i] for i in u)
    u_bar = sum(u[i] * sizes[i] for i in u) / total
    c = min(2 * lam, lam / max(abs(v - u_bar) for v in u.values()))
    return {i: target - c * (v - u_bar) for i, v in u.items()}


def exact_counts(targets: dict[int, float], sizes: dict[int, int], overall: float) -> dict[int, int]:
    """Zeros per block, as close to ``targets[i] * sizes[i]`` as integers allow, summing to
    ``round(overall * total)`` (largest remainders get the leftover units)."""
    want = round(overall * sum(sizes.values()))
    raw = {i: min(max(targets[i], 0.0), 1.0) * sizes[i] for i in targets}
    counts = {i: int(v) for i, v in raw.items()}
    # Leftover units (a few, one per block at most) go to the largest remainders; a surplus from
    # float rounding is taken back from the smallest.
    by_remainder = sorted(raw, key=lambda i: raw[i] - counts[i], reverse=True)
    while sum(counts.values()) < want:
        i = next(j for j in by_remainder if counts[j] < sizes[j])
        counts[i] += 1
        by_remainder.remove(i)
        by_remainder.append(i)
    while sum(counts.values()) > want:
        i = next(j for j in reversed(by_remainder) if counts[j] > 0)
        counts[i] -= 1
        by_remainder.remove(i)
        by_remainder.insert(0, i)
    return counts


@dataclass
class Uniform:
    """Every block at the target sparsity."""

    name: str = "uniform"
    needs_calibration: bool = False

    def check(self, pattern: SparsityPattern) -> None:
        """Every pattern is accepted."""

    def block_patterns(self, pattern: SparsityPattern, sizes: dict[int, int],
                       measures: dict[int, float] | None = None) -> dict[int, SparsityPattern]:
        """The same pattern for every block."""
        return {i: pattern for i in sizes}


@dataclass
class Owl:
    """OWL: block sparsity from the block's outlier ratio (see the module docstring)."""

    m: float = 5.0
    lam: float = 0.08
    name: str = "owl"
    needs_calibration: bool = True
    exact: bool = True

    def check(self, pattern: SparsityPattern) -> None:
        """N:M fixes every group's sparsity, so there is nothing to allocate; the spread must fit in [0, 1)."""
        if pattern.is_nm:
            raise ValueError(f"allocation=owl cannot be combined with sparsity={pattern.label}: N:M fixes the "
                             "sparsity of every group; accepted allocation=uniform, or a fraction such as 0.7")
        if pattern.ratio > 0 and not (pattern.ratio - self.lam >= 0 and pattern.ratio + self.lam < 1):
            raise ValueError(f"allocation.lam={self.lam!r} does not fit around sparsity={pattern.label}: accepted "
                             f"lam <= {pattern.ratio:g} and lam < {1 - pattern.ratio:g}")

    def measure(self, weights: dict[str, torch.Tensor], norms: dict[str, torch.Tensor]) -> float:
        """The block's outlier ratio from its dense Linears' weights and input norms ``||X_j||``."""
        return outlier_ratio([w.abs().float() * norms[n].to(w.device).float().unsqueeze(0)
                              for n, w in weights.items()], self.m)

    def block_patterns(self, pattern: SparsityPattern, sizes: dict[int, int],
                       measures: dict[int, float] | None = None) -> dict[int, SparsityPattern]:
        """One unstructured pattern per block (``measures``: outlier ratios) whose zero counts sum
        exactly to the target's."""
        self.check(pattern)
        targets = spread(measures, sizes, pattern.ratio, self.lam)
        counts = exact_counts(targets, sizes, pattern.ratio)
        return {i: SparsityPattern(counts[i] / sizes[i], exact=self.exact) for i in sizes}


def allocates(allocation) -> bool:
    """True when blocks get their own sparsities: an allocation other than ``Uniform`` (None: the
    run has none). The one test for "is there a layer-wise allocation"."""
    return allocation is not None and not isinstance(allocation, Uniform)


def uniform(name: str = "uniform") -> Uniform:
    """Builder of ``conf/allocation/uniform.yaml``."""
    return Uniform(name)


def owl(name: str = "owl", m: float = 5.0, lam: float = 0.08, exact: bool = True) -> Owl:
    """Builder of ``conf/allocation/owl.yaml``: ``m`` the outlier threshold (x mean), ``lam`` the
    spread, ``exact`` whole-matrix zero counts (see the module docstring)."""
    if not (isinstance(m, (int, float)) and m > 0):
        raise ValueError(f"allocation.m={m!r} is not valid: accepted a number > 0 (paper: 5)")
    if not (isinstance(lam, (int, float)) and 0 <= lam < 0.5):
        raise ValueError(f"allocation.lam={lam!r} is not valid: accepted a number in [0, 0.5) (paper: 0.08)")
    if not isinstance(exact, bool):
        raise ValueError(f"allocation.exact={exact!r} is not valid: accepted true or false")
    return Owl(float(m), float(lam), name, exact=exact)


__all__ = ["Owl", "Uniform", "allocates", "exact_counts", "outlier_ratio", "owl", "spread", "uniform"]
