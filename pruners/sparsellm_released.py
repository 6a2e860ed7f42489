"""SparseLLM with the *released* code's schedule, for reproducing published tables.

Sample config (``conf/pruner/sparsellm_released.yaml``)::

    _target_: pruners.sparsellm_released.build
    name: sparsellm_released
    alpha: null                  # null: family default (OPT/ReLU 0.1, LLaMA/gated SiLU 5.0)
    beta: null
    gamma: null
    iterations: 4
    one_iteration_blocks: [1, 30, 31]   # LLaMA (gated SiLU) blocks that get 1 iteration
    fc2_update: gd               # OPT fc2 refit: gd (10 steps, lr 0.01, mean loss) or lstsq
    fc2_lr: 0.01
    fc2_steps: 10
    s_lr: 0.01
    s_steps: 2
    blocksize: 128
    percdamp: 0.01
    calib_nsamples: {opt: 64, llama: 32}

Same auxiliary-variable method as ``pruners.sparsellm`` (read its docstring and
``pruners.sparsellm_math`` first); what differs is the schedule the released code follows:

* OPT fc2: warm start from the previous iteration's *pruned* fc2, then ``fc2_steps`` plain
  gradient steps at ``fc2_lr`` on the mean squared error of ``fc2(p)`` against the dense output
  (``fc2_update: lstsq`` gives the pseudo-inverse refit ``(Y - b) p^+`` instead). LLaMA down,
  OPT fc1, LLaMA up/gate: pseudo-inverse least squares, no ridge.
* LLaMA ``s``: ``s_steps`` plain gradient steps at ``s_lr`` on the summed loss
  ``alpha||s - W_gate X||^2 + gamma||p - silu(s) * z||^2``, no line search.
* Damping as the released SparseGPT class does it: added to the *stored* Hessian in place on
  every use. fc1/up/gate keep their Hessian (from ``X``) for the whole block, so the damping
  compounds: after k uses every diagonal entry grew by ``m0 ((1 + percdamp)^k - 1)`` with
  ``m0`` the initial mean diagonal. fc2/down's Hessian is rebuilt from ``p`` each iteration.
* No keep-best: the last iterate is returned. LLaMA blocks in ``one_iteration_blocks`` (by
  ``block.index``) get one iteration, i.e. plain SparseGPT on the MLP.

``calib_nsamples`` is the released code's default calibration size per model family
(``pruner.calib_nsamples[family]``, None: no preference); the job runner decides whether to
use it. Math is float32 (Gram matrices for the pseudo-inverses and the small solves in
float64); the released code's fp16 storage is a defect not reproduced. Per iteration the block
records ``objective`` and ``mlp_rel_error`` as ``pruners.sparsellm`` does, so divergence shows.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import BlockContext, check_setting
from .pattern import SparsityPattern
from .sparsegpt import Hessian, sparsegpt_prune
from .sparsellm import SparseLLMCost, SparseLLMSettings, attention_names, prune_attention, record_history
from .sparsellm_math import make_p_step, relu_z_step

CHUNK = 4096  # tokens per chunk of the elementwise steps: bounds temporaries, not results
FC2_UPDATES = ("gd", "lstsq")
EPS32, EPS64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps


class DampedHessian:
    """A Linear's stored Hessian, dampened in place on every use (the released behaviour)."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix.detach().float().clone()
        self.uses = 0

    def prune(self, weight: torch.Tensor, pattern: SparsityPattern, blocksize: int,
              percdamp: float) -> torch.Tensor:
        """Dead inputs ``H_jj = 0 -> 1`` (their weight columns zeroed), then
        ``H += percdamp * mean(diag H) * I`` in place, then SparseGPT with no further damping."""
        diag = self.matrix.diagonal()
        dead = diag == 0
        weight = weight.detach().float().clone()
        if bool(dead.any()):
            weight[:, dead] = 0.0
            diag[dead] = 1.0
        diag.add_(percdamp * float(diag.mean()))
        self.uses += 1
        return sparsegpt_prune(weight, self.matrix, pattern, blocksize, percdamp=0.0)


def pinv_weight(gram: torch.Tensor, cross: torch.Tensor, eps: float, eig=None) -> torch.Tensor:
    """Minimum-norm least-squares weight (out x in) ``T A^+`` from ``gram = A^T A`` and
    ``cross = A^T T`` (solved in float64): the released pseudo-inverse refit, no ridge.

    Eigenvalues below ``n * eps * max`` are treated as 0 (torch.linalg.pinv's default rule),
    with ``eps`` the machine epsilon of the precision ``gram`` was accumulated in: below it
    they are rounding noise, and inverting them blows the refit up. ``eig``: ``eigh(gram)``
    already at hand (``X^T X`` is fixed for the block, so it is decomposed once, not per refit).
    """
    vals, vecs = eig if eig is not None else torch.linalg.eigh(gram.double())
    keep = vals > gram.shape[0] * eps * vals.max().clamp_min(0)
    inv = torch.where(keep, 1.0 / torch.where(keep, vals, torch.ones_like(vals)), torch.zeros_like(vals))
    return ((vecs * inv) @ (vecs.T @ cross.double())).T.float().contiguous()


def fc2_gradient_steps(weight, ptp, ptu, tokens: int, lr: float, steps: int) -> torch.Tensor:
    """``steps`` gradient steps on ``mean((p W^T + b - Y)^2)`` over tokens x out entries.

    With ``U = Y - b`` the gradient is ``2 / (tokens * out) * (W p^T p - U^T p)``, so only the
    Gram ``ptp = p^T p`` and ``ptu = p^T U`` are needed (float32).
    """
    w = weight.detach().float().clone()
    ptp, ptu = ptp.float(), ptu.float()
    scale = 2.0 / (tokens * w.shape[0])
    for _ in range(steps):
        w -= lr * scale * (w @ ptp - ptu.T)
    return w


def silu_s_gradient_steps(s, g, z, p, alpha: float, gamma: float, lr: float, steps: int):
    """Plain gradient steps on ``alpha||s - g||^2 + gamma||p - silu(s) z||^2`` (summed), elementwise.

    The gradient is ``2 alpha (s - g) - 2 gamma (p - silu(s) z) z silu'(s)`` with
    ``silu'(s) = sig(s) (1 + s (1 - sig(s)))``. No line search: it can diverge, as released.
    """
    for _ in range(steps):
        sig = torch.sigmoid(s)
        resid = p - s * sig * z
        grad = 2 * alpha * (s - g) - 2 * gamma * resid * z * sig * (1 + s * (1 - sig))
        s = s - lr * grad
    return s


def _grams(X, U, aux, targets, spans):
    """``X^T t`` for each (aux key, bias) in ``targets``, ``p^T p`` and ``p^T U``.

    Accumulated in float32 (these run every iteration over tokens x d_ff and dominate the
    cost; float64 was 4x slower here); returned as float64 for the pseudo-inverse solves.
    """
    d_ff = aux["p"].shape[1]
    cross = {k: X.new_zeros(X.shape[1], d_ff) for k in targets}
    ptp, ptu = X.new_zeros(d_ff, d_ff), X.new_zeros(d_ff, U.shape[1])
    for c in spans:
        xc, pc = X[c], aux["p"][c]
        for k, b in targets.items():
            cross[k].addmm_(xc.T, aux[k][c] if b is None else aux[k][c] - b)
        ptp.addmm_(pc.T, pc)
        ptu.addmm_(pc.T, U[c])
    return {k: v.double() for k, v in cross.items()}, ptp.double(), ptu.double()


def optimize_mlp(kind, X, Y, weights, biases, init, pattern, *, alpha, beta, gamma, iterations,
                 blocksize=128, percdamp=0.01, fc2_update="gd", fc2_lr=0.01, fc2_steps=10,
                 s_lr=0.01, s_steps=2):
    """The released alternating loop on one MLP; returns ``(pruned weights, history)``.

    ``weights``/``biases``: dicts with ``up``, ``down`` (and ``gate`` for ``gated_silu``),
    biases None where absent. ``init``: dense ``z`` (up output), ``p`` (down input) and, gated,
    ``s`` (gate output), each (tokens x d_ff) float32; used as storage and overwritten.
    Per iteration: (after the first) refit up/gate by ``X^+``, down by GD (OPT) or ``p^+``;
    prune up, (gate,) down; then the p, z (and s) steps. ``history``: per-iteration
    ``objective`` and ``mlp_rel_error``; the last iterate is returned, whatever its error.
    """
    tokens = X.shape[0]
    X = X.float()
    b_down = biases.get("down")
    U = Y.float() - b_down.float() if b_down is not None else Y.float()
    spans = [slice(i, min(i + CHUNK, tokens)) for i in range(0, tokens, CHUNK)]
    keys = {"z": "up", "s": "gate"} if kind == "gated_silu" else {"z": "up"}
    bias = {k: (None if biases.get(lin) is None else biases[lin].float()) for k, lin in keys.items()}
    aux = init
    # X^T X once per block in float64 (cheap: hidden x hidden): X^+ is then resolved to the
    # precision of the released float32 SVD even for LLaMA's ill-conditioned hidden states.
    gram_x = X.new_zeros(X.shape[1], X.shape[1], dtype=torch.float64)
    for c in spans:
        gram_x.addmm_(X[c].double().T, X[c].double())
    # One stored Hessian per input-side Linear (released: one SparseGPT object each), kept
    # for the whole block, so its in-place damping compounds over the iterations.
    hessians = {k: DampedHessian((2.0 / tokens) * gram_x.float()) for k in keys}
    eig_x = None  # eigh(X^T X), computed at the first refit and reused by every later one
    current = {k: weights[lin].float() for k, lin in keys.items()}
    down = weights["down"].float()
    pruned_down = None
    ptp = _grams(X, U, aux, {}, spans)[1]
    y_norm = float(Y.float().norm())
    history = {"objective": [], "mlp_rel_error": []}
    for it in range(1, iterations + 1):
        if it > 1:
            cross, ptp, ptu = _grams(X, U, aux, bias, spans)
            if not all(bool(torch.isfinite(t).all()) for t in (ptp, ptu, *cross.values())):
                raise FloatingPointError(f"sparsellm_released: the auxiliaries are not finite after "
                                         f"iteration {it - 1}: the released schedule diverged")
            if eig_x is None:
                eig_x = torch.linalg.eigh(gram_x)
            for k in keys:
                current[k] = pinv_weight(gram_x, cross[k], EPS64, eig_x)
            if kind == "relu" and fc2_update == "gd":
                down = fc2_gradient_steps(pruned_down, ptp.float(), ptu.float(), tokens, fc2_lr, fc2_steps)
            else:
                down = pinv_weight(ptp, ptu, EPS32)
        pruned = {k: hessians[k].prune(current[k], pattern, blocksize, percdamp) for k in keys}
        # down/fc2: Hessian rebuilt from the current p each iteration, dampened once.
        pruned_down = DampedHessian((2.0 / tokens) * ptp.float()).prune(down, pattern, blocksize, percdamp)
        if not all(bool(torch.isfinite(w).all()) for w in [*pruned.values(), pruned_down]):
            raise FloatingPointError(f"sparsellm_released: non-finite weights at iteration {it}: "
                                     "the released schedule diverged (no iterate is kept by design)")
        p_step = make_p_step(pruned_down, beta, gamma)
        objective = err2 = 0.0
        for c in spans:
            xc, uc = X[c], U[c]
            m = {k: F.linear(xc, pruned[k], bias[k]) for k in keys}
            act_m = F.relu(m["z"]) if kind == "relu" else F.silu(m["s"]) * m["z"]
            err2 += float((act_m @ pruned_down.T - uc).square().sum())  # true MLP error
            z = aux["z"][c]
            if kind == "relu":
                p, term_b = p_step(F.relu(z), uc)
                z, f_z = relu_z_step(p, m["z"], alpha, gamma, with_objective=True)
                objective += term_b + float(f_z.sum())
                aux["z"][c], aux["p"][c] = z, p
            else:
                silu_s = F.silu(aux["s"][c])
                p, term_b = p_step(silu_s * z, uc)
                z = (alpha * m["z"] + gamma * silu_s * p) / (alpha + gamma * silu_s.square())
                s = silu_s_gradient_steps(aux["s"][c], m["s"], z, p, alpha, gamma, s_lr, s_steps)
                objective += (term_b + gamma * float((p - F.silu(s) * z).square().sum())
                              + alpha * float((z - m["z"]).square().sum() + (s - m["s"]).square().sum()))
                aux["z"][c], aux["s"][c], aux["p"][c] = z, s, p
        history["objective"].append(objective)
        history["mlp_rel_error"].append(err2 ** 0.5 / max(y_norm, 1e-30))
    out = {keys[k]: w for k, w in pruned.items()}
    out["down"] = pruned_down
    return out, history


@dataclass
class SparseLLMReleasedPruner(SparseLLMSettings):
    """Block pruner: SparseGPT on attention, the released SparseLLM schedule on the MLP."""

    name: str = "sparsellm_released"
    one_iteration_blocks: tuple[int, ...] = (1, 30, 31)
    fc2_update: str = "gd"
    fc2_lr: float = 0.01
    fc2_steps: int = 10
    s_lr: float = 0.01
    s_steps: int = 2
    calib_nsamples: dict[str, int] | None = field(default_factory=lambda: {"opt": 64, "llama": 32})

    @property
    def cost(self) -> SparseLLMCost:
        """SparseLLM's cost model at this run's iterations (float32 storage), at SparseLLM's
        calibrated rate; no make bench ceiling of its own."""
        return SparseLLMCost(self.iterations, 4, bench_target=None)

    def iterations_for(self, kind: str, index: int) -> int:
        """The released per-block count: 1 for LLaMA blocks in ``one_iteration_blocks``."""
        return 1 if kind == "gated_silu" and index in self.one_iteration_blocks else self.iterations

    def prune_block(self, block: BlockContext) -> None:
        """Prune ``block.linears`` in place to ``block.pattern``."""
        pattern, spec = block.pattern, block.mlp
        for lin_name, linear in block.linears.items():
            pattern.check_columns(linear.in_features, lin_name)
        if not pattern.is_nm and pattern.ratio == 0:
            return
        hyper = self.hyperparameters(spec.kind if spec is not None else None)
        roles = {"up": spec.up, "down": spec.down, **({"gate": spec.gate} if spec.gate else {})}
        mlp_names = list(roles.values())
        attn = attention_names(block, mlp_names)
        # One pass over the dense block, as released: X, Y, the dense z/s/p, attention Hessians.
        got = block.capture(inputs=[spec.up, spec.down], outputs=mlp_names, make_stat=Hessian,
                            stat_names=attn)
        prune_attention(block, got.stats, self.blocksize, self.percdamp)  # plain SparseGPT, damping on a copy
        init = {"z": got.outputs[spec.up], "p": got.inputs[spec.down]}
        if spec.gate:
            init["s"] = got.outputs[spec.gate]
        lin = {role: block.linears[name] for role, name in roles.items()}
        start = time.perf_counter()
        try:
            new, history = optimize_mlp(
                spec.kind, got.inputs[spec.up], got.outputs[spec.down],
                {r: l.weight.data for r, l in lin.items()},
                {r: (None if l.bias is None else l.bias.data) for r, l in lin.items()}, init, pattern,
                iterations=self.iterations_for(spec.kind, block.index), blocksize=self.blocksize,
                percdamp=self.percdamp, fc2_update=self.fc2_update, fc2_lr=self.fc2_lr,
                fc2_steps=self.fc2_steps, s_lr=self.s_lr, s_steps=self.s_steps, **hyper)
        except FloatingPointError as err:  # say which block, for the run's status line
            raise FloatingPointError(f"block {block.index}: {err}") from None
        del got, init
        seconds = time.perf_counter() - start
        for role, weight in new.items():
            lin[role].weight.data.copy_(weight.to(lin[role].weight.dtype))
            block.record_linear(roles[role], seconds / len(new))
        record_history(block, history)


def build(
    name: str = "sparsellm_released",
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    iterations: int = 4,
    one_iteration_blocks: Sequence[int] = (1, 30, 31),
    fc2_update: str = "gd",
    fc2_lr: float = 0.01,
    fc2_steps: int = 10,
    s_lr: float = 0.01,
    s_steps: int = 2,
    blocksize: int = 128,
    percdamp: float = 0.01,
    calib_nsamples: Mapping[str, int] | None = None,
) -> SparseLLMReleasedPruner:
    """Builder used by Hydra's ``_target_``; rejects bad values with one line naming the key.

    ``calib_nsamples`` None here means the released defaults ``{opt: 64, llama: 32}``; pass an
    empty mapping for "no preference" (the attribute is then None).
    """
    def is_int(v, low):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def is_num(v, positive):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 if positive else v >= 0)

    for key, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        check_setting(value is None or is_num(value, True), key, value, "a number > 0, or null for the family default")
    check_setting(is_int(iterations, 1), "iterations", iterations, "an integer >= 1")
    blocks = list(one_iteration_blocks) if isinstance(one_iteration_blocks, Sequence) and \
        not isinstance(one_iteration_blocks, str) else None
    check_setting(blocks is not None and all(is_int(b, 0) for b in blocks), "one_iteration_blocks",
           one_iteration_blocks, "a list of block indices >= 0 (may be empty)")
    check_setting(fc2_update in FC2_UPDATES, "fc2_update", fc2_update, " or ".join(FC2_UPDATES))
    for key, value in (("fc2_lr", fc2_lr), ("s_lr", s_lr)):
        check_setting(is_num(value, True), key, value, "a number > 0")
    for key, value in (("fc2_steps", fc2_steps), ("s_steps", s_steps)):
        check_setting(is_int(value, 0), key, value, "an integer >= 0")
    check_setting(is_int(blocksize, 1), "blocksize", blocksize, "an integer >= 1")
    check_setting(is_num(percdamp, False), "percdamp", percdamp, "a number >= 0")
    if calib_nsamples is None:
        calib = {"opt": 64, "llama": 32}
    else:
        ok = isinstance(calib_nsamples, Mapping) and all(
            isinstance(k, str) and is_int(v, 1) for k, v in calib_nsamples.items())
        check_setting(ok, "calib_nsamples", calib_nsamples, "a mapping family -> integer >= 1, e.g. {opt: 64, llama: 32}")
        calib = {str(k): int(v) for k, v in calib_nsamples.items()} or None
    return SparseLLMReleasedPruner(
        name=name, alpha=alpha, beta=beta, gamma=gamma, iterations=iterations,
        one_iteration_blocks=tuple(blocks), fc2_update=fc2_update, fc2_lr=float(fc2_lr),
        fc2_steps=fc2_steps, s_lr=float(s_lr), s_steps=s_steps, blocksize=blocksize,
        percdamp=float(percdamp), calib_nsamples=calib)
