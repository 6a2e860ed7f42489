"""ALPS: ADMM on the layer-wise reconstruction problem, then PCG on the kept weights.

Meng, Behdin, Wang, Mazumder, "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning
for Large Language Models", NeurIPS 2024. Written from the paper's equations.

Sample config (``conf/pruner/alps.yaml``)::

    _target_: pruners.alps.build
    name: alps
    rho0: 0.1
    rho_every: 3
    max_iter: 300
    pcg_iter: 10
    percdamp: 0.01
    tol: 1e-3
    sequential: false

Per Linear with weight ``Ŵ`` (out x in) and ``H = (2/N) sum_t x_t x_t^T`` (the SparseGPT
``Hessian`` statistic; dead inputs ``H_jj = 0`` get ``H_jj := 1`` and their weight column
zeroed; ``H += percdamp * mean(diag H) * I``, then scaled to mean diagonal 1 so that ``rho``
is scale-free), ALPS minimizes ``sum_r (w_r - ŵ_r)^T H (w_r - ŵ_r)`` over ``W`` with the
target pattern, by ADMM on the split ``W = D`` (``D`` carries the constraint):

* ``W = (Ŵ H + rho D - V) (H + rho I)^-1``: all rows share one matrix, so with ``H = Q Λ Q^T``
  (one eigendecomposition per Linear) every ``rho`` is two matrix products;
* ``D = P(W + V / rho)``: keep the largest magnitudes (unstructured: ``pattern.zeros(numel)``
  zeros over the whole matrix, the paper's layer-wise top-k; N:M: per row and group);
* ``V = V + rho (W - D)``.

Every ``rho_every`` iterations ``rho`` grows by 1.3, 1.2 or 1.1 when the support changed in at
least 10%, 0.5% or fewer of the kept entries since the last check; the loop stops once the
support did not change since the last check and ``||W - D|| <= tol ||Ŵ||`` (or after
``max_iter``). Then the support is fixed and the kept
weights of every row solve ``H_SS w_S = (H ŵ)_S`` by ``pcg_iter`` steps of conjugate
gradients with the diagonal preconditioner, all rows at once. Math in float32; pruned entries
are exactly 0 and the zero count is exactly the pattern's.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .base import PerLinearPruner, check_setting
from .cost import BENCH_TOKENS, SMOLLM2, STAT_BYTES, Shape
from .pattern import SparsityPattern, lowest_k_mask, nm_mask
from .sparsegpt import Hessian, SparseGPTCost, hessian_bytes, widest_input

# The paper's rho schedule: (least support change as a share of the kept entries, factor).
RHO_STEPS = ((0.1, 1.3), (0.005, 1.2), (0.0, 1.1))


def _prune_mask(scores: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """True where pruned: the pattern's lowest scores (whole matrix, or N:M per row)."""
    if pattern.is_nm:
        return nm_mask(scores, pattern.n_zero, pattern.m)
    return lowest_k_mask(scores, pattern.zeros(scores.numel()))


def _prepared_hessian(hessian: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dampened ``H`` in unit-diagonal coordinates (a copy), the column scales, dead-input flags.

    With ``S = diag(H)^1/2`` the problem in ``W S`` has the Hessian ``S^-1 H S^-1`` (diagonal 1):
    the objective and the zero count are unchanged by this change of variables, but the
    projection then ranks ``|w_ij| * S_j`` and one ``rho`` suits every input.
    """
    h = hessian.to(torch.float32).clone()
    diag = h.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    diag.add_(percdamp * diag.mean())
    scale = diag.sqrt()
    return h / scale / scale.unsqueeze(1), scale, dead


def pcg_refine(h: torch.Tensor, target: torch.Tensor, start: torch.Tensor, keep: torch.Tensor,
               iters: int) -> torch.Tensor:
    """Minimize ``sum_r (w_r - t_r)^T H (w_r - t_r)`` over ``w`` supported on ``keep``, from ``start``.

    Preconditioned conjugate gradients, diagonal preconditioner ``1 / H_jj``, one step size per
    row (each row is its own system ``H_SS w_S = (H t)_S``) but batched as matrix products.
    """
    keep_f = keep.to(h.dtype)
    w = start * keep_f
    inv_diag = 1.0 / h.diagonal()
    resid = ((target - w) @ h) * keep_f  # minus the gradient on the support
    z = resid * inv_diag
    direction = z.clone()
    rz = (resid * z).sum(1, keepdim=True)
    for _ in range(iters):
        hd = (direction @ h) * keep_f
        curvature = (direction * hd).sum(1, keepdim=True)
        # Rows already solved have a zero direction: step 0 instead of 0 / 0.
        alpha = torch.where(curvature > 0, rz / curvature.clamp_min(1e-30), torch.zeros_like(rz))
        w.addcmul_(alpha, direction)
        resid.addcmul_(alpha, hd, value=-1.0)
        z = resid * inv_diag
        rz_new = (resid * z).sum(1, keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        direction = z + beta * direction
        rz = rz_new
    return w * keep_f


def alps_prune(
    weight: torch.Tensor,
    stats: object,
    pattern: SparsityPattern,
    rho0: float = 0.1,
    rho_every: int = 3,
    max_iter: int = 300,
    pcg_iter: int = 10,
    percdamp: float = 0.01,
    tol: float = 1e-3,
) -> torch.Tensor:
    """Return a pruned copy of ``weight`` (out x in) that ALPS fits to the dense outputs.

    ``stats`` is a ``Hessian`` or a raw (in x in) tensor; it is never modified.
    """
    rows, cols = weight.shape
    pattern.check_columns(cols)
    if not pattern.is_nm and pattern.ratio == 0:
        return weight.detach().clone()
    hessian = stats.matrix if isinstance(stats, Hessian) else stats
    h, scale, dead = _prepared_hessian(hessian.to(weight.device), percdamp)
    target = weight.detach().to(torch.float32) * scale  # W S: the unit-diagonal coordinates
    target[:, dead] = 0.0  # a dead input's weight never reaches the output: prune it first

    evals, evecs = torch.linalg.eigh(h)
    evals = evals.clamp_min(0.0)  # float32 round-off on a PSD matrix
    # Ŵ H in the eigenbasis, fixed over the iterations: (Ŵ Q) Λ.
    target_eig = (target @ evecs) * evals

    # Start from magnitude pruning: D = P(Ŵ), V = 0.
    pruned = checked = _prune_mask(target.abs(), pattern)
    d = target.masked_fill(pruned, 0.0)
    v = torch.zeros_like(target)
    rho = float(rho0)
    norm = float(torch.linalg.norm(target))
    kept = max(1, int((~checked).sum()))
    for step in range(1, max_iter + 1):
        # W = (Ŵ H + rho D - V) Q (Λ + rho)^-1 Q^T
        w = ((target_eig + (rho * d - v) @ evecs) / (evals + rho)) @ evecs.T
        shifted = w + v / rho
        pruned = _prune_mask(shifted.abs(), pattern)
        d = shifted.masked_fill(pruned, 0.0)
        v.add_(w - d, alpha=rho)
        if step % rho_every == 0:
            change = int((pruned != checked).sum())
            checked = pruned
            # Done once the support has settled and W agrees with D (the pruned entries of W
            # have reached ~0): stopping on the support alone, while rho is still small,
            # freezes masks that the growing penalty would still improve.
            if change == 0 and float(torch.linalg.norm(w - d)) <= tol * norm:
                break
            share = change / kept
            rho *= next(factor for least, factor in RHO_STEPS if share >= least)

    refined = pcg_refine(h, target, d, ~pruned, pcg_iter) / scale  # back to W
    out = torch.empty(rows, cols, dtype=weight.dtype, device=weight.device)
    return out.copy_(refined.masked_fill_(pruned, 0.0))


# ---- cost model (pruners/cost.py) -----------------------------------------------------------

# ADMM iterations per Linear (it stops once the support settles): 36 on average, 30-45, over the
# 210 Linears of SmolLM2 at 8 x 2048 C4 tokens and 70% (one run, 2026-12-04); assumed the same at
# every scale. Its weight-sized float32 iterates and temporaries per weight.
ALPS_ITERATIONS = 36
ALPS_BYTES = 40


def alps_linear_flops(d_in: int, d_out: int, iterations: int, pcg_iter: int = 10) -> float:
    """One ALPS call: the eigendecomposition of H (about 9 d_in^3), per ADMM iteration the two
    products with the eigenvectors (2 x 2 d_out d_in^2), and the conjugate-gradient steps."""
    return 9.0 * float(d_in) ** 3 + (4.0 * iterations + 2.0 * (pcg_iter + 1)) * d_out * float(d_in) ** 2


def alps_fixed_flops(shape: Shape) -> float:
    """ALPS's token-independent FLOPs of one block at ALPS_ITERATIONS iterations per Linear."""
    return sum(alps_linear_flops(i, o, ALPS_ITERATIONS) for _, i, o in shape.linears())


@dataclass(frozen=True)
class AlpsCost(SparseGPTCost):
    """SparseGPT's passes and Hessians (at SparseGPT's rate); the eigendecompositions and
    iterations at the rate the rest of its `make bench` seconds gives (446.1 s on SmolLM2: 106
    GFLOP/s); the Hessians, H's unit-diagonal copy, its eigenvectors and eigh's workspace (3 d^2),
    and the ADMM's weight-sized iterates held."""

    bench_seconds: float | None = 446.1
    bench_target: float | None = 30.0

    @property
    def rate(self) -> float:
        return SparseGPTCost().rate

    def fixed_seconds(self, shape: Shape) -> float:
        return alps_fixed_flops(shape) / _fixed_rate()

    def working_bytes(self, shape: Shape, tokens: int) -> float:
        d_max, widest = widest_input(shape)
        largest = max(i * o for _, i, o in shape.linears())
        return hessian_bytes(shape) + 3 * STAT_BYTES * d_max ** 2 + ALPS_BYTES * max(largest, widest)


@functools.lru_cache(maxsize=None)
def _fixed_rate() -> float:
    """FLOP/s of ALPS's token-independent work: its `make bench` seconds less its token-dependent
    part (at SparseGPT's rate) over ``alps_fixed_flops``."""
    n, s = BENCH_TOKENS
    cost, blocks = COST, SMOLLM2.blocks
    own = cost.bench_seconds - blocks * cost.flops(SMOLLM2, n * s, s) / cost.rate
    return blocks * alps_fixed_flops(SMOLLM2) / own


COST = AlpsCost()


def build(
    name: str = "alps",
    rho0: float = 0.1,
    rho_every: int = 3,
    max_iter: int = 300,
    pcg_iter: int = 10,
    percdamp: float = 0.01,
    tol: float = 1e-3,
    sequential: bool = False,
) -> PerLinearPruner:
    """Builder used by Hydra's ``_target_``."""
    check_setting(rho0 > 0, "rho0", rho0, "a number > 0 (published: 0.1)")
    check_setting(isinstance(rho_every, int) and rho_every >= 1, "rho_every", rho_every,
                  "a whole number >= 1 (published: 3)")
    check_setting(isinstance(max_iter, int) and max_iter >= 1, "max_iter", max_iter,
                  "a whole number >= 1 (default: 300)")
    check_setting(isinstance(pcg_iter, int) and pcg_iter >= 0, "pcg_iter", pcg_iter,
                  "a whole number >= 0 (default: 10)")
    check_setting(percdamp >= 0, "percdamp", percdamp, "a number >= 0 (default: 0.01, as SparseGPT)")
    check_setting(tol > 0, "tol", tol, "a number > 0 (default: 1e-3)")
    prune_fn = functools.partial(alps_prune, rho0=rho0, rho_every=rho_every, max_iter=max_iter,
                                 pcg_iter=pcg_iter, percdamp=percdamp, tol=tol)
    return PerLinearPruner(name=name, prune_fn=prune_fn, make_stat=Hessian, sequential=sequential, cost=COST)
