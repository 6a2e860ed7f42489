"""SparseGPT: prune column by column and fix the remaining weights with the inverse Hessian.

Sample config (``conf/pruner/sparsegpt.yaml``)::

    _target_: pruners.sparsegpt.build
    name: sparsegpt
    blocksize: 128
    percdamp: 0.01
    sequential: false

Per Linear, with ``H = (2/N) sum_t x_t x_t^T`` over the calibration tokens (float32, running
mean): inputs with ``H_jj = 0`` are dead (``H_jj := 1``, their weight column zeroed); ``H`` is
dampened by ``percdamp * mean(diag H)`` on a private copy; ``U`` is the upper Cholesky factor
of ``H^-1``. Columns are walked in blocks of ``blocksize``. Unstructured: each block prunes
exactly ``int(rows * block_cols * s)`` entries of lowest ``w^2 / U_jj^2`` over the whole
rows x block (so sparsity is uniform per block, not per row). N:M: the ``n_zero`` lowest
scores of each row in every group of ``m`` columns, chosen when the group starts from the
weights as updated so far. Each pruned column's error ``(w - q) / U_jj`` is spread over the
later columns of its block along ``U[j, j:]``; after a block its errors reach all later
columns with one matrix product. Math in float32; the result has the weight's dtype and
pruned entries exactly 0.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import fallbacks
from .base import PerLinearPruner, check_setting
from .cost import STAT_BYTES, Cost, Shape, pass_flops
from .pattern import SparsityPattern, lowest_k_mask, nm_mask


# Inputs at least this wide accumulate Gram matrices on the upper triangle only, in row
# strips: the matrix is symmetric, so this skips ~35% of the work of the step that dominates
# SparseGPT's cost (the 1536-wide down_proj Hessian of SmolLM2) and SparseLLM's Gram of p.
# The lower half is mirrored once, when the matrix is read.
STRIP_MIN, STRIPS = 512, 4


def add_gram(matrix: torch.Tensor, x: torch.Tensor, beta: float = 1.0, alpha: float = 1.0) -> None:
    """``matrix = beta * matrix + alpha * x^T x`` in place (upper triangle only when wide)."""
    n = matrix.shape[0]
    if n < STRIP_MIN:
        matrix.addmm_(x.T, x, beta=beta, alpha=alpha)  # one fused kernel; beta rescales in place
        return
    edges = [n * i // STRIPS for i in range(STRIPS + 1)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        matrix[lo:hi, lo:].addmm_(x[:, lo:hi].T, x[:, lo:], beta=beta, alpha=alpha)


def mirror_gram(matrix: torch.Tensor) -> torch.Tensor:
    """The full symmetric matrix from one that ``add_gram`` filled (a new tensor when wide)."""
    if matrix.shape[0] < STRIP_MIN:
        return matrix
    upper = matrix.triu()
    return upper + upper.triu(1).T


class Hessian:
    """Running mean of ``2 x x^T`` over calibration tokens, in float32 (no stored inputs)."""

    def __init__(self, in_features: int):
        self._matrix = torch.zeros(in_features, in_features, dtype=torch.float32)
        self._mirrored = True
        self.tokens = 0

    @property
    def matrix(self) -> torch.Tensor:
        """The full symmetric ``H`` (float32)."""
        if not self._mirrored:
            self._matrix = mirror_gram(self._matrix)
            self._mirrored = True
        return self._matrix

    def add(self, x: torch.Tensor) -> None:
        """Fold in a (tokens x in_features) batch of inputs."""
        n = self._matrix.shape[0]
        if self._matrix.device != x.device:
            # Statistics live wherever the block runs; the first batch tells us where.
            self._matrix = self._matrix.to(x.device)
        x = x.reshape(-1, n).float()
        batch = x.shape[0]
        if batch == 0:
            return
        total = self.tokens + batch
        # Running mean: rescale the old mean, then add this batch's share, so the values stay
        # O(1) however many tokens are seen (a plain sum would lose float32 precision).
        if self._mirrored and n >= STRIP_MIN:
            self._matrix = self._matrix.triu()  # only the upper triangle is accumulated
        add_gram(self._matrix, x, beta=self.tokens / total, alpha=2.0 / total)
        self._mirrored = n < STRIP_MIN
        self.tokens = total


def _dampened_upper_inverse(
    hessian: torch.Tensor, dead: torch.Tensor | None, percdamp: float
) -> torch.Tensor:
    """``U`` upper triangular with ``U^T U = (H + percdamp * mean(diag H) * I)^-1``.

    ``H`` itself is not modified: the dead inputs' ``H_jj := 1`` and the dampening go to a
    copy, so repeated calls on one statistic never compound.

    The published recipe factors ``H``, inverts it and factors the inverse (three O(n^3)
    steps; the second factorization is where float32 breaks down on ill-conditioned ``H``).
    Same result via the reversal permutation ``J``: with ``J H J = L L^T``, ``R = J L J`` is
    upper triangular and ``H = R R^T``, so ``H^-1 = R^-T R^-1`` and, the Cholesky factor being
    unique, ``U = R^-1 = J L^-1 J``: one factorization and one triangular inverse.
    """
    flipped = hessian.flip(0, 1)  # J H J, a new tensor: the only copy of H we need
    diag = flipped.diagonal()
    if dead is not None:
        diag[dead.flip(0)] = 1.0
    mean = diag.mean()  # > 0: live inputs have H_jj > 0, dead ones now 1
    diag.add_(percdamp * mean)
    factor, info = torch.linalg.cholesky_ex(flipped)
    boost, tries = max(percdamp, 1e-3) * mean / 10, 0
    while int(info) != 0:
        # Numerically indefinite H (rank-deficient float32 statistics): add 10x more dampening
        # rather than fail the run; the published percdamp is kept whenever it suffices.
        if tries == 5:
            raise RuntimeError("SparseGPT: the dampened Hessian is not positive definite")
        boost, tries = boost * 10, tries + 1
        diag.add_(boost)
        factor, info = torch.linalg.cholesky_ex(flipped)
    if tries:
        fallbacks.record("cholesky_damping_raised",
                         f"{hessian.shape[0]}-wide Hessian not positive definite with percdamp={percdamp}; "
                         f"dampening raised {tries} time(s) to {float(boost) / float(mean):.3g} x mean(diag)")
    return _lower_inverse(factor).flip(0, 1)


def _lower_inverse(lower: torch.Tensor) -> torch.Tensor:
    """Inverse of a lower-triangular matrix, by halves.

    ``[[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]``. A triangular solve against
    the identity ignores the zeros of its right-hand side (n^3 flops); halving until the
    pieces are small does the same work as matrix products and ran ~2x faster at n = 1536.
    """
    n = lower.shape[0]
    if n <= 768:  # one solve: fewer kernels win below this (each costs ms on a busy CPU)
        eye = torch.eye(n, dtype=lower.dtype, device=lower.device)
        return torch.linalg.solve_triangular(lower, eye, upper=False)
    half = n // 2
    top, bottom = _lower_inverse(lower[:half, :half]), _lower_inverse(lower[half:, half:])
    out = torch.zeros_like(lower)
    out[:half, :half] = top
    out[half:, half:] = bottom
    out[half:, :half] = -(bottom @ (lower[half:, :half] @ top))
    return out


def sparsegpt_prune(
    weight: torch.Tensor,
    stats: object,
    pattern: SparsityPattern,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """Return a pruned, error-compensated copy of ``weight`` (out x in).

    ``stats`` is a ``Hessian`` or a raw (in x in) tensor; it is never modified.
    """
    rows, cols = weight.shape
    pattern.check_columns(cols)
    if not pattern.is_nm and pattern.ratio == 0:
        return weight.detach().clone()
    if blocksize < 1:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    nm = pattern.is_nm
    if nm:
        # An N:M group must lie inside one block: its later columns only receive the earlier
        # blocks' errors at the block's end, so a straddling group would be scored on stale
        # weights. Round the block down to whole groups.
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)

    hessian = stats.matrix if isinstance(stats, Hessian) else stats
    # May be the caller's own tensor: read only (see _dampened_upper_inverse).
    hessian = hessian.to(device=weight.device, dtype=torch.float32)
    # Work on W^T (in x out): a column of W is then a contiguous row, which makes the
    # per-column vector ops of the inner loop cheap. A fresh buffer, never a view of weight.
    wt = torch.empty(cols, rows, dtype=torch.float32, device=weight.device)
    wt.copy_(weight.detach().t())
    dead = torch.diagonal(hessian) == 0
    if not dead.any():
        dead = None
    else:
        wt[dead] = 0.0
    upper = _dampened_upper_inverse(hessian, dead, percdamp)
    diag = torch.diagonal(upper)

    width = min(blocksize, cols)
    errs_buf = torch.empty(width, rows, dtype=torch.float32, device=wt.device)
    scales_buf = torch.empty(width, rows, dtype=torch.float32, device=wt.device)
    # N:M: every entry is written group by group, so one buffer serves all blocks.
    mask_buf = torch.empty(width, rows, dtype=torch.bool, device=wt.device) if nm else None
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        count = end - start
        block = wt[start:end]  # view: the block's columns as they are at the block's start
        errs, scales = errs_buf[:count], scales_buf[:count]
        # u_cols[i, :i] = U[:i, i] of this block, made contiguous once for the addmv calls.
        u_cols = upper[start:end, start:end].t().contiguous()
        d_block = diag[start:end].unsqueeze(1)
        if nm:
            mask = mask_buf[:count]
            _nm_block_errors(block, u_cols, d_block, pattern, scales, errs, mask)
        else:
            # Unstructured: the block's mask depends only on its weights at the block's start,
            # so it (and mask / U_jj) is known before the column loop.
            scores = (block / d_block).square_()
            if pattern.exact:  # cumulative targets: the blocks' counts add up to round(ratio * numel)
                zeros = round(end * rows * pattern.ratio) - round(start * rows * pattern.ratio)
            else:
                zeros = int(count * rows * pattern.ratio)
            mask = lowest_k_mask(scores, zeros)
            torch.div(mask, d_block, out=scales)
            _block_errors(block, u_cols, scales, errs)
        # The whole effect of this block's errors, on its own columns (the in-block updates,
        # which also bring the pruned entries to ~0) and on all later columns at once.
        wt[start:].addmm_(upper[start:end, start:].t(), errs, alpha=-1.0)
        block.masked_fill_(mask, 0.0)  # exactly zero, not the float residue of w - w
    out = torch.empty(rows, cols, dtype=weight.dtype, device=weight.device)
    return out.copy_(wt.t())


def _block_errors(
    block: torch.Tensor, u_cols: torch.Tensor, scales: torch.Tensor, errs: torch.Tensor
) -> None:
    """Fill ``errs`` (block x rows) with the scaled errors of a block whose mask is known.

    Lazy form of ``W[:, j:] -= err_k * U[k, j:]`` for every earlier column k: column i's
    current value is its start value minus the earlier errors along ``U[:i, i]``. Reading
    ``errs`` once per column is cheaper than rewriting the rest of the block each time, and
    the loop body is two kernels writing into preallocated memory.
    """
    errs_t = errs.t()
    current = torch.empty_like(block[0])
    for i in range(block.shape[0]):
        torch.addmv(block[i], errs_t[:, :i], u_cols[i, :i], alpha=-1.0, out=current)
        # err = (w - q) / U_ii: w / U_ii where pruned, 0 where kept.
        torch.mul(current, scales[i], out=errs[i])


def _nm_block_errors(
    block: torch.Tensor,
    u_cols: torch.Tensor,
    d_block: torch.Tensor,
    pattern: SparsityPattern,
    scales: torch.Tensor,
    errs: torch.Tensor,
    mask: torch.Tensor,
) -> None:
    """Like ``_block_errors``, choosing each group's N:M mask when the group starts.

    Also fills ``mask`` (block x rows, True = pruned).
    """
    m = pattern.m
    errs_t = errs.t()
    group = torch.empty(m, block.shape[1], dtype=block.dtype, device=block.device)
    current = torch.empty_like(block[0])
    for i in range(block.shape[0]):
        offset = i % m
        if offset == 0:
            # The group's weights as updated by the block's earlier groups. One addmv per
            # column: a (m x i) @ (i x rows) matmul is slower on CPU (threading overhead).
            for j in range(m):
                torch.addmv(block[i + j], errs_t[:, :i], u_cols[i + j, :i], alpha=-1.0,
                            out=group[j])
            d_group = d_block[i:i + m]
            group_mask = nm_mask((group / d_group).square_().t(), pattern.n_zero, m).t()
            mask[i:i + m] = group_mask
            torch.div(group_mask, d_group, out=scales[i:i + m])
        # Then only the errors of this group's earlier columns remain to be applied.
        base = i - offset
        torch.addmv(group[offset], errs_t[:, base:i], u_cols[i, base:i], alpha=-1.0, out=current)
        torch.mul(current, scales[i], out=errs[i])


# ---- cost model (pruners/cost.py) -----------------------------------------------------------

# The token-independent work (sparsegpt_linear_flops of every Linear): 116 and 131 GFLOP/s, the
# fitted fixed part c0 of t = c0 + c1 T of the LLaMA-2-7B and OPT-13B blocks of `make
# bench-scale` (256 and 512 tokens, idle machine).
GPT_FLOPS = 123e9


def sparsegpt_linear_flops(d_in: int, d_out: int) -> float:
    """One SparseGPT call: Cholesky, inverse and Cholesky of the inverse (about d_in^3 together)
    plus the lazy column-block updates of the weights (about d_out x d_in^2)."""
    return float(d_in) ** 3 + float(d_out) * d_in ** 2


def linears_flops(linears: list[tuple[str, int, int]]) -> float:
    """``sparsegpt_linear_flops`` summed over ``(name, in, out)`` Linears."""
    return sum(sparsegpt_linear_flops(i, o) for _, i, o in linears)


def hessian_flops(shape: Shape, tokens: int) -> float:
    """Every input group's Hessian over the tokens it reads (an expert: its routed share): 2 T d^2 each."""
    return sum(2.0 * tokens * share * group[0][1] ** 2 for group, share in shape.input_groups())


def hessian_bytes(shape: Shape) -> float:
    """Every input group's float32 Hessian, held for the whole block."""
    return sum(STAT_BYTES * d * d for d in shape.groups())


def widest_input(shape: Shape) -> tuple[int, int]:
    """``(d_max, weights)``: the widest input and the largest Linear that reads it."""
    d_max = max(shape.groups())
    return d_max, max(i * o for _, i, o in shape.linears() if i == d_max)


def call_bytes(shape: Shape) -> float:
    """One call on the widest input: the damped flipped copy, its Cholesky factor, the inverse built
    by halves (the result, the two half inverses and a product: 1.5 d^2) and its flipped copy,
    4.5 d_in^2 in all (3 d^2 predicted the LLaMA-2-7B block 15% low), plus a float32 transposed
    weight and the pruned output weight."""
    d_max, widest = widest_input(shape)
    return 4.5 * STAT_BYTES * d_max ** 2 + 2 * STAT_BYTES * widest


@dataclass(frozen=True)
class SparseGPTCost(Cost):
    """Two passes and the Hessians per block (token-dependent), every Linear's factorizations and
    lazy updates at ``GPT_FLOPS``; the Hessians and one call held. `make bench` 300.1 s on SmolLM2."""

    bench_seconds: float | None = 300.1
    bench_target: float | None = 2.5

    def flops(self, shape: Shape, tokens: int, seqlen: int) -> float:
        return 2 * pass_flops(shape, tokens, seqlen) + hessian_flops(shape, tokens)

    def fixed_seconds(self, shape: Shape) -> float:
        return linears_flops(shape.linears()) / GPT_FLOPS

    def working_bytes(self, shape: Shape, tokens: int) -> float:
        return hessian_bytes(shape) + call_bytes(shape)


COST = SparseGPTCost()


def build(
    name: str = "sparsegpt",
    blocksize: int = 128,
    percdamp: float = 0.01,
    sequential: bool = False,
) -> PerLinearPruner:
    """Builder used by Hydra's ``_target_``."""
    check_setting(blocksize >= 1, "blocksize", blocksize, "a whole number >= 1 (published: 128)")
    check_setting(percdamp >= 0, "percdamp", percdamp, "a number >= 0 (published: 0.01)")
    prune_fn = functools.partial(sparsegpt_prune, blocksize=blocksize, percdamp=percdamp)
    return PerLinearPruner(name=name, prune_fn=prune_fn, make_stat=Hessian, sequential=sequential, cost=COST)
