"""RIA (Relative Importance and Activations; Zhang et al., ICLR 2024, "Plug-and-Play"), per Linear.

Sample config (``conf/pruner/ria.yaml``)::

    _target_: pruners.ria.build
    name: ria
    a: 0.5
    permute: false

Score of weight ``W_ij`` (output row i, input column j)::

    RIA_ij = (|W_ij| / sum_k |W_ik|  +  |W_ij| / sum_k |W_kj|) * ||X_j||_2 ** a

the *relative importance* (``|W_ij|`` relative to every weight of its output row, plus relative to
every weight of its input column) times the input-activation norm to the power ``a`` (paper
default 0.5). Calibration statistics are Wanda's (``pruners.wanda.InputNorms``: ``||X_j||_2`` up to
a common factor, which ``** a`` keeps common, so no ranking changes). The comparison group is the
output row, as in the paper: unstructured prunes exactly ``int(in * s)`` lowest scores of every row;
N:M the ``n_zero`` lowest of every group of ``m`` inputs of a row.

Channel permutation (``permute: true``, N:M only; the same mask as ``permute: false`` when the
sparsity is unstructured, where the order of the inputs does not matter). The paper reorders the
input channels before forming the N:M groups, so that large scores do not compete for the same
few kept places of one group. Here, per Linear, the permutation ``p`` is chosen to maximise the
*kept importance* (sum of the scores the N:M mask keeps): start from the better of the identity
and a heuristic reallocation (channels sorted by their total score, dealt to the groups in snake
order, so each group gets one channel of each importance tier), then improve it by the paper's
linear sum assignment: for each slot of the groups in turn, take that slot's channel out of every
group and assign the channels back to the groups optimally (``scipy.optimize.linear_sum_assignment``;
the current assignment is a candidate, so no step lowers the kept importance, and the result is
never below the unpermuted mask's).

What ``permute: true`` means in this harness: the mask is N:M *in the permuted column order*
(columns ``p[g*m:(g+1)*m]`` hold exactly ``n_zero`` zeros in every row), not in the stored order.
Hardware would gather the inputs in order ``p`` (or permute the previous layer's outputs) before
the sparse matmul; the harness evaluates the model unchanged, which computes exactly the same
outputs, since zeros are zeros in any order. Such runs are labelled ``ria+permute`` so that their
numbers are never read as plain (stored-order) N:M. ``RiaPruner.permutations`` keeps the
permutation of every Linear pruned (by block and name) so that the pattern can be checked in that
order (``pattern_ok``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .base import LinearGroup, PerLinearPruner, check_setting
from .cost import SelectionCost
from .pattern import SparsityPattern, nm_mask, select_mask
from .wanda import InputNorms

# Cost model (pruners/cost.py): Wanda's (two passes, a row sort per Linear: 49 ns per weight);
# `make bench` 246.2 s on SmolLM2. The permutation's assignments are not in it.
COST = SelectionCost(seconds_per_weight=49e-9, bench_seconds=246.2, bench_target=2.5)


def ria_scores(weight: torch.Tensor, norms: torch.Tensor, a: float) -> torch.Tensor:
    """RIA score of every weight: relative importance (row and column normalised |W|) x norms ** a."""
    w = weight.abs().float()
    # A row or column of zeros has sum 0: its weights are all 0, so 0/tiny keeps them at 0.
    tiny = torch.finfo(torch.float32).tiny
    relative = w / w.sum(1, keepdim=True).clamp_min(tiny) + w / w.sum(0, keepdim=True).clamp_min(tiny)
    return relative * norms.float().to(w.device).pow(a).unsqueeze(0)


def kept_importance(scores: torch.Tensor, n_zero: int, m: int, order: torch.Tensor | None = None) -> float:
    """Sum of the scores an N:M mask keeps when the groups are formed in column ``order`` (None: stored)."""
    s = scores if order is None else scores[:, order]
    return float(s.masked_fill(nm_mask(s, n_zero, m), 0).sum())


def _snake(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Heuristic reallocation: channels by total score, dealt to the groups in snake order."""
    groups = scores.shape[1] // m
    ranked = torch.argsort(scores.sum(0), descending=True, stable=True)
    slots = ranked.view(m, groups).clone()  # tier t holds the channels of ranks t*groups .. (t+1)*groups-1
    slots[1::2] = slots[1::2].flip(1)       # odd tiers dealt backwards, so no group gets every tier's best
    return slots.t().reshape(-1)            # group g = (tier 0's g-th, tier 1's g-th, ...)


def _assignment_step(scores: torch.Tensor, order: torch.Tensor, n_zero: int, m: int, slot: int,
                     chunk: int = 64) -> torch.Tensor:
    """One linear sum assignment: re-place the channels of ``slot`` (one per group) optimally.

    With ``k = m - n_zero`` kept per group and ``R`` the ``m - 1`` other scores of a row of the
    group, ``top_k(R + {c}) = top_k(R) + max(0, c - R_(k))`` (``R_(k)``: the k-th largest of R), so
    the gain of putting channel c in group g is ``sum_rows relu(S[:, c] - t_g)``.
    """
    from scipy.optimize import linear_sum_assignment

    groups = order.numel() // m
    layout = order.view(groups, m)
    others = torch.cat([layout[:, :slot], layout[:, slot + 1:]], 1)           # groups x (m-1)
    rest = scores[:, others]                                                   # rows x groups x (m-1)
    keep = m - n_zero
    threshold = rest.topk(keep, dim=2).values[..., -1]                         # rows x groups
    candidates = layout[:, slot]
    gain = torch.empty(groups, groups, dtype=torch.float64)
    for start in range(0, groups, chunk):  # rows x chunk x groups at a time, to bound memory
        c = scores[:, candidates[start:start + chunk]]
        gain[start:start + chunk] = (c.unsqueeze(2) - threshold.unsqueeze(1)).clamp_min(0).sum(0).double()
    rows, cols = linear_sum_assignment(gain.numpy(), maximize=True)
    new = layout.clone()
    new[torch.as_tensor(cols), slot] = candidates[torch.as_tensor(rows)]
    return new.reshape(-1)


def permutation(scores: torch.Tensor, n_zero: int, m: int, sweeps: int = 2) -> torch.Tensor:
    """Column order whose N:M mask keeps at least the importance of the stored order (see module doc)."""
    identity = torch.arange(scores.shape[1], device=scores.device)
    snake = _snake(scores, m)
    order = snake if kept_importance(scores, n_zero, m, snake) > kept_importance(scores, n_zero, m) else identity
    best = kept_importance(scores, n_zero, m, order)
    for _ in range(sweeps):
        before = best
        for slot in range(m):
            trial = _assignment_step(scores, order, n_zero, m, slot)
            value = kept_importance(scores, n_zero, m, trial)
            if value > best:  # float sums: accept only a real gain, so the result never drops
                order, best = trial, value
        if best <= before:
            break
    return order


def ria_mask(weight: torch.Tensor, norms: torch.Tensor, pattern: SparsityPattern, a: float = 0.5,
             permute: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(mask, order)``: the RIA pruning mask (True = prune) and, with ``permute`` and N:M, the
    column order in which the mask is N:M (None: the stored order)."""
    scores = ria_scores(weight, norms, a)
    if not (permute and pattern.is_nm):
        return select_mask(scores, pattern, per_row=True), None
    order = permutation(scores, pattern.n_zero, pattern.m)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[:, order] = nm_mask(scores[:, order], pattern.n_zero, pattern.m)
    return mask, order


def pattern_ok(weight: torch.Tensor, pattern: SparsityPattern, order: torch.Tensor | None = None) -> bool:
    """True when ``weight`` has exactly the zeros of ``pattern``: N:M in column ``order`` (None: stored)."""
    zeros = weight == 0
    if pattern.is_nm:
        z = zeros if order is None else zeros[:, order]
        return bool((z.reshape(z.shape[0], -1, pattern.m).sum(2) == pattern.n_zero).all())
    return bool((zeros.sum(1) == int(weight.shape[1] * pattern.ratio)).all())


@dataclass
class RiaPruner(PerLinearPruner):
    """``PerLinearPruner`` with RIA's settings; keeps each permuted Linear's column order."""

    a: float = 0.5
    permute: bool = False
    permutations: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``ria``, or ``ria+permute``: permuted N:M is N:M in another column order (module doc)."""
        return f"{self.name}+permute" if self.permute else self.name

    def prune_block(self, block) -> None:
        """Prune every Linear of ``block``; when permuted, record per block ``permuted_nm_ok`` (1: every
        Linear is exactly N:M in its order) and ``permute_gain`` (kept importance permuted / stored)."""
        groups = block.groups if self.sequential else [LinearGroup("all", list(block.linears))]
        ok, kept, stored = True, 0.0, 0.0
        for group in groups:
            stats = block.collect(self.make_stat, group.names)
            for name in group.names:
                linear = block.linears[name]
                block.pattern.check_columns(linear.in_features, name)
                start = time.perf_counter()
                norms = stats[name].norms()
                for part, rows in enumerate(block.rows(name)):
                    weight = linear.weight.data[rows]
                    mask, order = ria_mask(weight, norms, block.pattern, self.a, self.permute)
                    if order is not None:
                        scores = ria_scores(weight, norms, self.a)
                        kept += float(scores.masked_fill(mask, 0).sum())
                        stored += kept_importance(scores, block.pattern.n_zero, block.pattern.m)
                    linear.weight.data[rows] = weight.masked_fill(mask, 0)
                    if order is not None:
                        self.permutations[(block.index, name if part == 0 else f"{name}#{part}")] = order.cpu()
                        ok = ok and pattern_ok(linear.weight.data[rows], block.pattern, order)
                block.record_linear(name, time.perf_counter() - start)
        if stored > 0:
            block.record("permuted_nm_ok", float(ok))
            block.record("permute_gain", kept / stored)


def ria_prune(weight: torch.Tensor, stats: InputNorms, pattern: SparsityPattern, a: float = 0.5,
              permute: bool = False) -> torch.Tensor:
    """Return a copy of ``weight`` with the lowest RIA scores of each row (or N:M group) set to zero."""
    mask, _ = ria_mask(weight, stats.norms(), pattern, a, permute)
    return weight.masked_fill(mask, 0)


def build(name: str = "ria", a: float = 0.5, permute: bool = False, sequential: bool = False) -> RiaPruner:
    """Builder used by Hydra's ``_target_``."""
    check_setting(isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 10, "a", a,
                  "a number in [0, 10] (paper default 0.5)")
    check_setting(isinstance(permute, bool), "permute", permute, "true or false")
    return RiaPruner(name=name, prune_fn=ria_prune, make_stat=InputNorms, sequential=sequential, cost=COST,
                     a=float(a), permute=permute)
