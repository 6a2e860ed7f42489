"""DSnoT (Dynamic Sparse No Training; Zhang et al., ICLR 2024): training-free mask refinement.

Sample config (``conf/refine/dsnot.yaml``)::

    _target_: pruners.refine_dsnot.build
    name: dsnot
    max_cycles: 50
    threshold: 0.1
    var_power: 1.0

Applied after any pruner (``refine=dsnot``, see ``pruners/refine.py``), per Linear and per output
row, with the mean ``mu_j``, variance ``var_j`` and RMS ``||X_j||`` of every input feature over the
calibration tokens the block's pruner saw (one pass of the dense block, before pruning).

The criterion is the row's *expected reconstruction error* with expected input ``E[x] = mu``::

    e_r = sum_j (W0_rj - W_rj) mu_j        (W0: dense weights, W: the pruner's weights)

Each cycle makes one grow-and-prune swap per row, which keeps the row's number of zeros (and,
under N:M, the number of zeros of the group swapped in):

* grow the pruned weight ``j`` that best reduces ``e_r`` for the variance it brings: largest
  ``sign(e_r) * W0_rj * mu_j / var_j ** var_power`` (reviving j changes e_r by ``-W0_rj mu_j``; an
  input of large variance makes that expected change unreliable), restored to its dense value;
* prune the kept weight ``k`` whose removal hurts least: smallest Wanda importance
  ``|W_rk| * ||X_k||`` among those with ``sign(e_r) * W_rk * mu_k < 0``, whose removal moves
  ``e_r`` towards zero as well (removing k changes e_r by ``+W_rk mu_k``).

Under N:M both are taken in the same group of ``m`` inputs: per group the best grow and the best
eligible prune; the row swaps in the group of the best grow that has one. A row stops for good
(the paper's rules) when ``|e_r|`` is at most ``threshold``, when a swap would flip the sign of
``e_r`` (overshoot) or no swap exists, or after ``max_cycles`` cycles. So ``|e_r|`` never grows:
every accepted swap moves it towards zero without crossing it.

The pruner's kept weights are kept as it left them (a SparseGPT update stays; for magnitude, Wanda
or RIA they are the dense values), so the same rule refines any pruner's mask.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from . import wanda
from .cost import BENCH_TOKENS, SMOLLM2, RefineCost, Shape, pass_flops
from .refine import check_setting

# ---- cost model (pruners/cost.py) -------------------------------------------------------------

# Its swaps per weight of the block: the mean of 103, 260 and 214 ns on the LLaMA-2-7B, OPT-13B and
# LLaMA-2-70B blocks of `make bench-scale` (wanda+dsnot less wanda at 256 tokens; the cost is per
# swap cycle of the rows still live, so it varies with the weights); and its float32 temporaries
# per weight of the largest Linear (the rows' growing and pruning scores, the copies).
DSNOT_SECONDS = 190e-9
DSNOT_BYTES = 40


class DSnoTCost(RefineCost):
    """One more dense pass per block (its input moments) at the rate `make bench` gives it, plus its
    swaps per weight; it holds the block's dense weights (model dtype) throughout, and its swaps'
    float32 temporaries replace the pruner's own memory when larger."""

    bench_pruner = "wanda"  # `make bench` measured it after Wanda: wanda+dsnot, 360.8 s on SmolLM2
    bench_seconds = 360.8
    bench_target = 4.0      # make bench's ceiling on wanda+dsnot's seconds / T_pass

    @property
    def rate(self) -> float:
        return _pass_rate(self.bench_seconds)

    def seconds(self, shape: Shape, tokens: int, seqlen: int) -> float:
        return pass_flops(shape, tokens, seqlen) / self.rate + DSNOT_SECONDS * shape.block_params

    def working_bytes(self, shape: Shape, tokens: int, weight_bytes: int, pruner_bytes: float) -> float:
        largest = max(i * o for _, i, o in shape.linears())
        return shape.block_params * weight_bytes + max(pruner_bytes, DSNOT_BYTES * largest)


@lru_cache(maxsize=None)
def _pass_rate(bench_seconds: float) -> float:
    """FLOP/s of DSnoT's pass: `make bench`'s wanda+dsnot less Wanda's seconds and the swaps."""
    n, s = BENCH_TOKENS
    blocks, weights = SMOLLM2.blocks, SMOLLM2.blocks * SMOLLM2.block_params
    extra = bench_seconds - wanda.COST.bench_seconds - DSNOT_SECONDS * weights
    return blocks * pass_flops(SMOLLM2, n * s, s) / extra


COST = DSnoTCost()


class InputMoments:
    """Mean and mean square of each input feature over calibration tokens, in float64."""

    def __init__(self, in_features: int):
        self.sum = torch.zeros(in_features, dtype=torch.float64)
        self.sq_sum = torch.zeros(in_features, dtype=torch.float64)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """Fold in a (tokens x in_features) batch of inputs."""
        if self.sum.device != x.device:
            self.sum, self.sq_sum = self.sum.to(x.device), self.sq_sum.to(x.device)
        x = x.double()
        self.sum += x.sum(0)
        self.sq_sum += (x * x).sum(0)
        self.tokens += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """``E[x_j]``."""
        return (self.sum / max(self.tokens, 1)).float()

    @property
    def var(self) -> torch.Tensor:
        """``Var[x_j]`` (population), never negative."""
        mean = self.sum / max(self.tokens, 1)
        return (self.sq_sum / max(self.tokens, 1) - mean * mean).clamp_min(0).float()

    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` up to a common factor (as ``pruners.wanda.InputNorms``)."""
        return (self.sq_sum / max(self.tokens, 1)).sqrt().float()


def expected_error(dense: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Expected reconstruction error of every row: ``sum_j (W0 - W)_rj mu_j``."""
    return ((dense.float() - weight.float()) * mean.float().to(weight.device)).sum(1)


def dsnot_refine(dense: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                 norms: torch.Tensor, m: int | None = None, max_cycles: int = 50, threshold: float = 0.1,
                 var_power: float = 1.0) -> tuple[torch.Tensor, int]:
    """``(refined weight, number of swaps)``: DSnoT's swaps (module doc) on a pruned ``weight``.

    ``m``: the N:M group size (swaps stay inside a group); None: unstructured (the row is one group).
    """
    device = weight.device
    w0 = dense.float().to(device)
    w = weight.float().clone()
    rows, cols = w.shape
    size = cols if m is None else m
    groups = cols // size
    mean, var, norms = (t.float().to(device) for t in (mean, var, norms))
    # A feature of (almost) no variance gets the variance of the most stable real ones, not 1/0.
    var = var.clamp_min(max(float(var.max()) * 1e-8, 1e-12))
    grow_gain = w0 * mean / var.pow(var_power)      # expected reduction per variance, if revived
    error = expected_error(w0, w, mean)
    start_sign = torch.sign(error)
    active = error.abs() > threshold
    swaps, cycle = 0, 0
    while cycle < max_cycles and bool(active.any()):
        cycle += 1
        # Only the rows still swapping (most stop after a few cycles) are computed.
        live = torch.nonzero(active).squeeze(1)
        n = live.numel()
        at = torch.arange(n, device=device)
        wl, w0l, gain, err = w[live], w0[live], grow_gain[live], error[live]
        sign = torch.sign(err).unsqueeze(1)
        pruned = wl == 0
        grow = torch.where(pruned & (w0l != 0), sign * gain, torch.full_like(wl, -torch.inf))
        removal = wl * mean                             # change of e_r if the kept weight goes
        wanda = torch.where(~pruned & (sign * removal < 0), wl.abs() * norms, torch.full_like(wl, torch.inf))
        g_val, g_idx = grow.view(n, groups, size).max(2)
        p_val, p_idx = wanda.view(n, groups, size).min(2)
        usable = (g_val > 0) & torch.isfinite(p_val)
        best_val, best_group = torch.where(usable, g_val, torch.full_like(g_val, -torch.inf)).max(1)
        j = best_group * size + g_idx[at, best_group]
        k = best_group * size + p_idx[at, best_group]
        after = err - w0l[at, j] * mean[j] + removal[at, k]
        accept = torch.isfinite(best_val) & (torch.sign(after) == start_sign[live]) & (after.abs() < err.abs())
        rows_ok = live[accept]
        w[rows_ok, j[accept]] = w0[rows_ok, j[accept]]
        w[rows_ok, k[accept]] = 0
        error[rows_ok] = after[accept]
        swaps += int(accept.sum())
        active = torch.zeros_like(active)
        active[rows_ok] = error[rows_ok].abs() > threshold
    return w.to(weight.dtype), swaps


@dataclass
class DSnoT:
    """``refine=dsnot``: the engine's hook (``pruners/refine.py``) around each pruned block."""

    name: str = "dsnot"
    max_cycles: int = 50
    threshold: float = 0.1
    var_power: float = 1.0
    needs_calibration: bool = True
    cost: RefineCost | None = field(default=COST)

    def prepare(self, block) -> tuple[dict, dict]:
        """The dense weights and the input moments of every Linear of the block (one block pass)."""
        dense = {n: l.weight.data.clone() for n, l in block.linears.items()}
        return dense, block.collect(InputMoments)

    def apply(self, block, state) -> None:
        """Refine every Linear of the block in place; record swaps and the summed |expected error|."""
        dense, moments = state
        m = block.pattern.m if block.pattern.is_nm else None
        swaps, before, after = 0, 0.0, 0.0
        for name, linear in block.linears.items():
            start = time.perf_counter()
            stat = moments[name]
            mean = stat.mean
            before += float(expected_error(dense[name], linear.weight.data, mean).abs().sum())
            refined, count = dsnot_refine(dense[name], linear.weight.data, mean, stat.var, stat.norms(), m,
                                          self.max_cycles, self.threshold, self.var_power)
            linear.weight.data.copy_(refined)
            after += float(expected_error(dense[name], refined, mean).abs().sum())
            swaps += count
            block.record_linear(name, time.perf_counter() - start)
        block.record("dsnot_swaps", swaps)
        block.record("dsnot_expected_error", before, 0)
        block.record("dsnot_expected_error", after, 1)


def build(name: str = "dsnot", max_cycles: int = 50, threshold: float = 0.1, var_power: float = 1.0) -> DSnoT:
    """Builder used by Hydra's ``_target_`` (paper defaults: 50 cycles, threshold 0.1, variance power 1)."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    check_setting(isinstance(max_cycles, int) and not isinstance(max_cycles, bool) and max_cycles >= 0,
                  "max_cycles", max_cycles, "a whole number >= 0 (paper default 50)")
    check_setting(number(threshold) and threshold >= 0, "threshold", threshold, "a number >= 0 (paper default 0.1)")
    check_setting(number(var_power) and 0 <= var_power <= 10, "var_power", var_power,
                  "a number in [0, 10] (paper default 1)")
    return DSnoT(name=name, max_cycles=max_cycles, threshold=float(threshold), var_power=float(var_power))
