"""Layer-wise sparsity allocation: how the overall target is shared among the pruned blocks.

Config group ``conf/allocation/`` (``allocation=uniform|owl|alphapruning|dlp``), combinable with
every pruner: the engine asks the allocation for one sparsity per block and hands each block's
pruner a ``SparsityPattern`` of that ratio, so a pruner never knows allocation exists. This module
holds what every allocation shares (``Layerwise``) and OWL; AlphaPruning and DLP are their own
modules (pruners/alphapruning.py, pruners/dlp.py), as a plugin's would be.

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

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

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


class Layerwise:
    """What every layer-wise allocation shares (OWL, AlphaPruning, DLP, a plugin's): it measures
    each block (``measure``, from the dense block's Linear weights and, when ``needs_calibration``,
    their input norms ``||X_j||`` over the calibration tokens), maps the measures to block
    sparsities (``targets``), and rounds them to zero counts that sum exactly to the target's.

    A subclass sets ``name``, ``needs_calibration``, ``metric`` (the measure's name in
    ``blocks.csv``, as ``allocation:<metric>``), ``exact`` and ``cost`` (its plan cost,
    ``AllocationCost``), and writes ``measure`` and ``targets``."""

    name: str
    needs_calibration: bool
    metric: str
    exact: bool = True
    # The setting that widens the spread of block sparsities (lam, epsilon, alpha): when a block
    # falls outside [0, 1), the error names the largest value of it that fits (None: no hint).
    spread_key: ClassVar[str | None] = None

    def check(self, pattern: SparsityPattern) -> None:
        """N:M fixes every group's sparsity, so there is nothing to allocate."""
        if pattern.is_nm:
            raise ValueError(f"allocation={self.name} cannot be combined with sparsity={pattern.label}: N:M fixes "
                             "the sparsity of every group; accepted allocation=uniform, or a fraction such as 0.7")

    def measure(self, weights: dict[str, torch.Tensor], norms: dict[str, torch.Tensor] | None) -> float:
        """The block's measure from its dense Linears' weights (and input norms, or None)."""
        raise NotImplementedError

    def targets(self, measures: dict[int, float], sizes: dict[int, int], target: float) -> dict[int, float]:
        """Block sparsities (size-weighted mean ``target``) from the block measures."""
        raise NotImplementedError

    def largest_fitting_spread(self, measures: dict[int, float], sizes: dict[int, int], target: float) -> float | None:
        """The largest value of ``spread_key`` (bisection, to 1e-9) for which every block sparsity
        lies in [0, 1); None when the allocation names no spread setting. Spread 0 puts every block
        at the target, so it always fits; the maps widen monotonically with the spread."""
        if self.spread_key is None or not dataclasses.is_dataclass(self):
            return None

        def fits(value: float) -> bool:
            wider = dataclasses.replace(self, **{self.spread_key: value})
            return all(0 <= t < 1 for t in wider.targets(measures, sizes, target).values())

        low, high = 0.0, float(getattr(self, self.spread_key))
        while high - low > 1e-9:
            middle = (low + high) / 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low

    def block_patterns(self, pattern: SparsityPattern, sizes: dict[int, int],
                       measures: dict[int, float] | None = None) -> dict[int, SparsityPattern]:
        """One unstructured pattern per block whose zero counts sum exactly to the target's; a block
        sparsity outside [0, 1) is a one-line error naming the setting to lower."""
        self.check(pattern)
        targets = self.targets(measures, sizes, pattern.ratio)
        bad = {i: t for i, t in targets.items() if not 0 <= t < 1}
        if bad:
            i, t = next(iter(bad.items()))
            fit = self.largest_fitting_spread(measures, sizes, pattern.ratio)
            hint = "" if fit is None else f": allocation.{self.spread_key} <= {math.floor(fit * 1000) / 1000:g} fits here"
            raise ValueError(f"allocation={self.name} gives block {i} the sparsity {t:.3f} at sparsity="
                             f"{pattern.label}: accepted block sparsities in [0, 1); lower the allocation's spread{hint}")
        counts = exact_counts(targets, sizes, pattern.ratio)
        return {i: SparsityPattern(counts[i] / sizes[i], exact=self.exact) for i in sizes}


@dataclass(frozen=True)
class AllocationCost:
    """What an allocation adds to a run, per pruned block (``plan=true``): ``passes`` dense passes
    of the calibration tokens, and its own seconds from the block's shapes (``seconds(shape)``;
    none here)."""

    passes: int = 0

    def seconds(self, shape) -> float:
        """Seconds of the measure itself (beyond its passes) for one block."""
        return 0.0


@dataclass
class Owl(Layerwise):
    """OWL: block sparsity from the block's outlier ratio (see the module docstring)."""

    m: float = 5.0
    lam: float = 0.08
    name: str = "owl"
    needs_calibration: bool = True
    exact: bool = True
    metric: str = "outlier_ratio"
    cost: AllocationCost = field(default_factory=lambda: AllocationCost(passes=1))
    spread_key: ClassVar[str] = "lam"

    def check(self, pattern: SparsityPattern) -> None:
        """Unstructured only; the spread must fit in [0, 1)."""
        super().check(pattern)
        if pattern.ratio > 0 and not (pattern.ratio - self.lam >= 0 and pattern.ratio + self.lam < 1):
            raise ValueError(f"allocation.lam={self.lam!r} does not fit around sparsity={pattern.label}: accepted "
                             f"lam <= {pattern.ratio:g} and lam < {1 - pattern.ratio:g}")

    def measure(self, weights: dict[str, torch.Tensor], norms: dict[str, torch.Tensor]) -> float:
        """The block's outlier ratio from its dense Linears' weights and input norms ``||X_j||``."""
        return outlier_ratio([w.abs().float() * norms[n].to(w.device).float().unsqueeze(0)
                              for n, w in weights.items()], self.m)

    def targets(self, measures: dict[int, float], sizes: dict[int, int], target: float) -> dict[int, float]:
        """Linear and decreasing in the outlier ratio, within ``±lam`` (``spread``)."""
        return spread(measures, sizes, target, self.lam)


def check_spread(key: str, value, upper: float, paper: str) -> float:
    """A builder's check of a spread setting: a number in [0, ``upper``)."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < upper):
        raise ValueError(f"allocation.{key}={value!r} is not valid: accepted a number in [0, {upper:g}) ({paper})")
    return float(value)


def check_exact(exact) -> bool:
    if not isinstance(exact, bool):
        raise ValueError(f"allocation.exact={exact!r} is not valid: accepted true or false")
    return exact


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
    return Owl(float(m), check_spread("lam", lam, 0.5, "paper: 0.08"), name, exact=check_exact(exact))


__all__ = ["AllocationCost", "Layerwise", "Owl", "Uniform", "allocates", "check_exact", "check_spread", "exact_counts",
           "outlier_ratio", "owl", "spread", "uniform"]
