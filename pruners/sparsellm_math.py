"""SparseLLM's MLP optimizer as pure tensor functions (no model, no hooks, no devices moved).

Layout is token-major: ``X`` (tokens x hidden) is the MLP input, ``Y`` (tokens x hidden) the
dense MLP output, and the auxiliaries ``z``, ``s``, ``p`` are (tokens x d_ff) (the transpose
of the paper's d_ff x tokens). Weights keep nn.Linear's (out x in) layout. Objectives:

* ReLU (OPT):  ``b||p W2^T + b2 - Y||^2 + g||p - relu(z)||^2 + a||z - (X W1^T + b1)||^2``
* gated SiLU (LLaMA): ``b||p Wd^T - Y||^2 + g||p - silu(s) * z||^2 + a||z - X Wu^T||^2
  + a||s - X Wg^T||^2``

Each alternating iteration: refit the weights by least squares (after the first; ``X^+`` is
one Cholesky factor of ``X^T X`` per block), prune each with SparseGPT (down/fc2's Hessian from
the current ``p``, mask chosen afresh), then the ``p``, ``z`` (and ``s``) steps. One pass over
the tokens per iteration does the auxiliary steps, the diagnostics, and the Gram matrices that
the next iteration's refits need, chunk by chunk. All math is float32 (small factorizations in
float64); ``z``/``s``/``p`` may be stored in bfloat16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fallbacks
from .pattern import SparsityPattern
from .sparsegpt import add_gram, mirror_gram, sparsegpt_prune


def ridge_cholesky(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """Lower Cholesky factor (float64) of ``gram + ridge * mean(diag) * I``.

    The ridge keeps rank-deficient statistics (dead inputs, dead ReLU units) solvable; it is
    raised tenfold while the float32-accumulated matrix is numerically indefinite.
    """
    # The ridge goes onto the diagonal of the one float64 copy in place (no identity matrix and
    # no shifted copy: at d_ff = 28672 each of those is 6.6 GB); the sums are the same as g + lam I.
    g = gram.double()
    diag = g.diagonal().clone()
    lam = ridge * float(diag.mean().clamp_min(1e-12))
    for tries in range(8):
        torch.add(diag, lam, out=g.diagonal())
        factor, info = torch.linalg.cholesky_ex(g)
        if int(info) == 0:
            if tries:
                fallbacks.record("ridge_raised", f"{g.shape[0]}-wide Gram matrix needed the ridge raised "
                                 f"{tries} time(s) to {ridge * 10 ** tries:g} x mean(diag)")
            return factor
        lam *= 10.0
    raise RuntimeError("SparseLLM: Gram matrix is not positive definite even with a large ridge")


def lstsq_weight(factor: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """Least-squares weight (out x in) from ``chol(A^T A)`` and ``A^T B`` (in x out)."""
    return torch.cholesky_solve(cross.double(), factor).t().float().contiguous()


def relu_z_step(p: torch.Tensor, m: torch.Tensor, alpha: float, gamma: float,
                with_objective: bool = False):
    """Exact elementwise minimizer of ``gamma (p - relu(z))^2 + alpha (z - m)^2``.

    On ``z >= 0`` the objective is a convex quadratic with minimizer
    ``(gamma p + alpha m) / (gamma + alpha)`` clipped at 0; on ``z <= 0`` it is
    ``gamma p^2 + alpha (z - m)^2``, minimized by ``min(m, 0)`` with value
    ``gamma p^2 + alpha relu(m)^2``. The better of the two wins. With ``with_objective`` also
    return the per-entry objective at the chosen ``z``. Computed over alpha (``c = gamma /
    alpha``) in few passes over memory, since these tensors are tokens x d_ff.
    """
    c = gamma / alpha
    z1 = torch.add(m, p, alpha=c).div_(1 + c).clamp_(min=0)
    e1, d1 = z1 - m, p - z1
    h1 = torch.addcmul(e1.mul_(e1), d1, d1, value=c)
    del e1, d1
    e2 = m.clamp(min=0)
    h2 = torch.addcmul(e2.mul_(e2), p, p, value=c)
    del e2
    first = h1 <= h2
    z = torch.where(first, z1, m.clamp(max=0))
    if not with_objective:
        return z
    return z, torch.where(first, h1, h2).mul_(alpha)


def _scaled_s_objective(s, silu_s, g, z, p, c):
    """Per entry ``(s - g)^2 + c (p - silu_s z)^2`` (the s objective over alpha, with
    ``c = gamma / alpha``), and the residual ``p - silu_s z``. Every comparison of the s step
    uses this one formula, so "not worse" holds exactly, not just up to rounding."""
    resid = torch.addcmul(p, z, silu_s, value=-1)
    diff = s - g
    return torch.addcmul(diff.mul_(diff), resid, resid, value=c), resid


def _silu(s):
    """``silu(s)`` and ``sigmoid(s)``: one transcendental pass instead of two."""
    sig = torch.sigmoid(s)
    return s * sig, sig


def _one_plus_c_sq(x, c):
    """``1 + c x^2`` in one pass."""
    return torch.addcmul(x.new_ones(()), x, x, value=c)


def _s_objective(s, g, z, p, alpha, gamma):
    """Per entry ``alpha (s - g)^2 + gamma (p - silu(s) z)^2``."""
    return _scaled_s_objective(s, _silu(s)[0], g, z, p, gamma / alpha)[0].mul_(alpha)


def silu_s_step(s, g, z, p, alpha: float, gamma: float, steps: int = 1, halvings: int = 3,
                with_objective: bool = False):
    """Decrease ``alpha (s - g)^2 + gamma (p - silu(s) z)^2`` elementwise, starting from ``s``.

    The objective is separable, so each entry is a 1-D problem. Gauss-Newton steps (curvature
    ``2 alpha + 2 gamma z^2 silu'(s)^2 >= 2 alpha``: finite, downhill) with a per-entry
    backtracking line search: an entry moves only where the move lowers its own objective
    (the published fixed-rate gradient steps can diverge). The full step is tried on every
    entry; the halvings only on the few entries where it failed. ``s`` is not modified.
    With ``with_objective`` also return the per-entry objective at the new ``s``.

    Written as few passes over memory as the math allows (these tensors are tokens x d_ff):
    everything is divided by ``alpha``, and sigmoid is evaluated once per trial point.
    """
    c = gamma / alpha
    h_new = None
    for _ in range(steps):
        silu_s, sig = _silu(s)
        h0, resid = _scaled_s_objective(s, silu_s, g, z, p, c)
        # z silu'(s), with silu'(s) = sig (1 + s - silu(s)) = sig + sig (s - silu(s))
        zd = torch.addcmul(sig, sig, s - silu_s).mul_(z)
        del silu_s, sig
        # Gauss-Newton on h = (s - g)^2 + c resid^2: h' = 2 (s - g) - 2 c zd resid,
        # h'' ~ 2 + 2 c zd^2, so the step -h'/h'' is ((g - s) + c zd resid) / (1 + c zd^2).
        step = torch.addcmul(g - s, zd, resid, value=c)
        step.div_(_one_plus_c_sq(zd, c))
        del zd, resid
        trial = s + step
        h_trial = _scaled_s_objective(trial, _silu(trial)[0], g, z, p, c)[0]
        worse = h_trial > h0  # a zero step leaves h unchanged, so is never "worse"
        new = torch.where(worse, s, trial)
        h_new = torch.where(worse, h0, h_trial)
        del trial, h_trial
        idx = worse.view(-1).nonzero().squeeze(1)
        if idx.numel():
            s_b, g_b, z_b, p_b, step_b, h_b = (t.reshape(-1)[idx] for t in (s, g, z, p, step, h0))
            best_b, pending = s_b.clone(), torch.ones_like(s_b, dtype=torch.bool)
            t = 0.5
            for _ in range(halvings):
                trial_b = s_b + t * step_b
                h_trial_b = _scaled_s_objective(trial_b, _silu(trial_b)[0], g_b, z_b, p_b, c)[0]
                ok = pending & (h_trial_b < h_b)
                best_b = torch.where(ok, trial_b, best_b)
                h_b = torch.where(ok, h_trial_b, h_b)
                pending &= ~ok
                t *= 0.5
            new.view(-1)[idx] = best_b
            h_new.view(-1)[idx] = h_b
        s = new
    if not with_objective:
        return s
    if h_new is None:
        return s, _s_objective(s, g, z, p, alpha, gamma)
    return s, h_new.mul_(alpha)


def _spd_inverse(a: torch.Tensor) -> torch.Tensor:
    """float32 inverse of a well-conditioned SPD float64 matrix (via Cholesky; solving against
    the identity, since torch.cholesky_inverse is very slow on CPU)."""
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return torch.cholesky_solve(eye, torch.linalg.cholesky(a)).float()


def make_p_step(w_down: torch.Tensor, beta: float, gamma: float):
    """Closure ``(r, u) -> (p, beta * ||p W^T - u||^2)`` for the p step.

    ``p`` minimizes ``beta ||p W^T - u||^2 + gamma ||p - r||^2`` row by row, i.e. solves
    ``(beta W^T W + gamma I) p = beta W^T u + gamma r`` (d_ff x d_ff). When hidden < d_ff the
    same solution comes from the smaller hidden x hidden system (push-through identity):
    ``p = r + beta q W`` with ``q = (u - r W^T) M^-1``, ``M = gamma I + beta W W^T``, and then
    ``p W^T - u = -gamma q``, so the beta term costs nothing extra.
    """
    d, f = w_down.shape
    w = w_down.double()
    if d < f:
        m = gamma * torch.eye(d, dtype=w.dtype, device=w.device) + beta * (w @ w.t())
        m_inv = _spd_inverse(m)

        def step(r, u):
            q = (u - r @ w_down.t()) @ m_inv
            flat = q.reshape(-1)
            return torch.addmm(r, q, w_down, alpha=beta), beta * gamma**2 * float(torch.dot(flat, flat))
    else:
        a = beta * (w.t() @ w) + gamma * torch.eye(f, dtype=w.dtype, device=w.device)
        a_inv = _spd_inverse(a)

        def step(r, u):
            p = torch.addmm(gamma * r, u, w_down, alpha=beta) @ a_inv
            return p, beta * float((p @ w_down.t() - u).square().sum())
    return step


def _optimize(kind, X, Y, ins, w_down, b_down, pattern: SparsityPattern, alpha, beta, gamma,
              iterations, refit, blocksize, percdamp, storage_dtype, keep_best, ridge, s_steps,
              chunk, init):
    """Shared alternating loop. ``ins``: list of (aux key, dense weight, bias or None).

    ``init``: optional dense auxiliaries already at hand (e.g. captured Linear outputs), a
    dict with the keys of ``ins`` and ``"p"``, each (tokens x d_ff); used as the storage.
    """
    if refit not in ("lstsq", "none"):
        raise ValueError(f"refit={refit!r}: use 'lstsq' or 'none'")
    if min(alpha, beta, gamma) <= 0 or iterations < 1:
        raise ValueError("SparseLLM needs alpha, beta, gamma > 0 and iterations >= 1")
    tokens, hidden = X.shape
    d_ff = w_down.shape[1]
    X = X.float()
    U = Y.float() - b_down.float() if b_down is not None else Y.float()  # target of p W^T
    ins = [(key, w.float(), None if b is None else b.float()) for key, w, b in ins]
    keys = [key for key, _, _ in ins] + ["p"]
    if init is not None:
        if set(init) != set(keys) or any(v.shape != (tokens, d_ff) for v in init.values()):
            raise ValueError(f"init must map {keys} to ({tokens}, {d_ff}) tensors")
        aux = {k: init[k].to(storage_dtype) for k in keys}
    else:
        aux = {k: torch.empty(tokens, d_ff, dtype=storage_dtype, device=X.device) for k in keys}
    if chunk is None:
        # The elementwise steps are memory-bound: ~1M-element (4 MB) temporaries stay in the
        # CPU's last-level cache (3x faster per element here than 16 MB ones), and the matrix
        # products run at the same speed down to 256-token chunks. A GPU wants big kernels.
        budget = 1 << (20 if X.device.type == "cpu" else 26)
        chunk = min(max(256, budget // d_ff), max(tokens, 1))
    spans = [slice(i, min(i + chunk, tokens)) for i in range(0, tokens, chunk)]

    def act(pre):  # p as a function of the pre-activations (dict by aux key)
        return F.relu(pre["z"]) if kind == "relu" else F.silu(pre["s"]) * pre["z"]

    def zeros(*shape):
        return torch.zeros(*shape, dtype=torch.float32, device=X.device)

    # Dense initialization; X^T X and the Gram matrices of p for the first prune of down.
    gram_x, ptp, ptu = zeros(hidden, hidden), zeros(d_ff, d_ff), zeros(d_ff, hidden)
    for c in spans:
        xc = X[c]
        gram_x.addmm_(xc.t(), xc)
        if init is None:
            pre = {k: F.linear(xc, w, b) for k, w, b in ins}
            p = act(pre)
            for k in pre:
                aux[k][c] = pre[k]
            aux["p"][c] = p
            del pre
        else:
            p = aux["p"][c].float()
        add_gram(ptp, p)
        ptu.addmm_(p.t(), U[c])
        del p
    ptp = mirror_gram(ptp)
    chol_x = ridge_cholesky(gram_x, ridge)  # X^+ once per block
    h_x = gram_x * (2.0 / tokens)
    del gram_x
    current = {k: w for k, w, _ in ins}
    dense_down = w_down.float()
    y_norm = float(Y.float().square().sum().sqrt())
    history = {"objective": [], "mlp_rel_error": [], "best_iteration": None}
    best = None
    cross = {}
    for it in range(1, iterations + 1):
        if it > 1:
            if not all(bool(torch.isfinite(t).all()) for t in (ptp, ptu, *cross.values())):
                fallbacks.record("aux_overflow_stop", f"auxiliaries not finite after iteration {it - 1} of "
                                 f"{iterations}: stopped, returning iteration {best[1] if best else None}")
                break  # auxiliaries overflowed: keep the best iterate so far
            for k, _, _ in ins:
                current[k] = lstsq_weight(chol_x, cross[k])
        pre_down = dense_down  # iteration 1, or refit="none"
        if it > 1 and refit == "lstsq":
            pre_down = lstsq_weight(ridge_cholesky(ptp, ridge), ptu)
        pruned = {k: sparsegpt_prune(current[k], h_x, pattern, blocksize, percdamp) for k in current}
        pruned_down = sparsegpt_prune(pre_down, ptp * (2.0 / tokens), pattern, blocksize, percdamp)
        p_step = make_p_step(pruned_down, beta, gamma)
        last = it == iterations
        if not last:
            cross = {k: zeros(hidden, d_ff) for k in current}
            ptp.zero_()
            ptu.zero_()
        objective = err2 = 0.0
        for c in spans:
            xc, uc = X[c], U[c]
            m = {k: F.linear(xc, pruned[k], b) for k, _, b in ins}
            err2 += float(F.mse_loss(act(m) @ pruned_down.t(), uc, reduction="sum"))  # true MLP error
            z = aux["z"][c].float()
            if kind == "relu":
                p, term_b = p_step(F.relu(z), uc)
                z, f_z = relu_z_step(p, m["z"], alpha, gamma, with_objective=True)
                # f_z = gamma (p - relu(z))^2 + alpha (z - m)^2 per entry, at the new z
                term = float(f_z.sum())
                del f_z
                new = {"z": z, "p": p}
            else:
                s = aux["s"][c].float()
                silu_s = _silu(s)[0]
                p, term_b = p_step(silu_s * z, uc)
                # z = (alpha m + gamma a p) / (alpha + gamma a^2), a = silu(s); over alpha.
                c_ratio = gamma / alpha
                z = torch.addcmul(m["z"], silu_s, p, value=c_ratio)
                z.div_(_one_plus_c_sq(silu_s, c_ratio))
                del silu_s
                s, f_s = silu_s_step(s, m["s"], z, p, alpha, gamma, steps=s_steps,
                                     with_objective=True)
                # f_s = alpha (s - g)^2 + gamma (p - silu(s) z)^2 per entry, at the new s
                term = float(f_s.sum()) + alpha * float(F.mse_loss(z, m["z"], reduction="sum"))
                del f_s
                new = {"z": z, "s": s, "p": p}
            objective += term_b + term
            for k, v in new.items():
                aux[k][c] = v
            if not last:
                for k, _, b in ins:
                    cross[k].addmm_(xc.t(), new[k] if b is None else new[k] - b)
                add_gram(ptp, p)
                ptu.addmm_(p.t(), uc)
            del m, new, z, p
        if not last:
            ptp = mirror_gram(ptp)
        rel = (err2 ** 0.5) / max(y_norm, 1e-30)
        history["objective"].append(objective)
        history["mlp_rel_error"].append(rel)
        finite = all(bool(torch.isfinite(w).all()) for w in [*pruned.values(), pruned_down])
        if not finite:
            fallbacks.record("nonfinite_iterate_skipped", f"iteration {it}: pruned MLP weights not finite, not taken")
        if finite and (best is None or not keep_best or rel <= best[0]):
            best = (rel, it, pruned, pruned_down)
    if best is None:
        raise FloatingPointError("SparseLLM: every iterate had non-finite weights")
    history["best_iteration"] = best[1]
    return best[2], best[3], history


_DEFAULTS = dict(iterations=4, refit="lstsq", blocksize=128, percdamp=0.01,
                 storage_dtype=torch.float32, keep_best=True, ridge=1e-4, s_steps=1, chunk=None,
                 init=None)


def optimize_mlp_relu(X, Y, W1, b1, W2, b2, pattern, alpha=0.1, beta=0.1, gamma=0.1, **options):
    """OPT MLP ``fc2(relu(fc1(x)))``: return pruned ``(W1, W2, history)``.

    ``history`` has per-iteration ``objective`` and ``mlp_rel_error`` (``||MLP(X) - Y|| /
    ||Y||`` with that iteration's pruned weights) and ``best_iteration`` (the iterate
    returned: the lowest MLP error with ``keep_best``, else the last). Options: see
    ``_DEFAULTS`` (``refit="none"`` re-prunes the dense W2 each iteration instead of refitting;
    ``init={"z": fc1 output, "p": fc2 input}`` reuses captured dense activations, which then
    serve as the auxiliaries' storage and are overwritten).
    """
    opts = {**_DEFAULTS, **options}
    ins = [("z", W1, b1)]
    w, w_down, hist = _optimize("relu", X, Y, ins, W2, b2, pattern, alpha, beta, gamma, **opts)
    return w["z"], w_down, hist


def optimize_mlp_gated(X, Y, Wg, Wu, Wd, pattern, alpha=5.0, beta=5.0, gamma=5.0,
                       bg=None, bu=None, bd=None, **options):
    """LLaMA MLP ``down(silu(gate(x)) * up(x))``: return pruned ``(Wg, Wu, Wd, history)``.

    As ``optimize_mlp_relu``; ``init`` keys: ``"z"`` up output, ``"s"`` gate output, ``"p"``
    down input.
    """
    opts = {**_DEFAULTS, **options}
    ins = [("z", Wu, bu), ("s", Wg, bg)]
    w, w_down, hist = _optimize("gated_silu", X, Y, ins, Wd, bd, pattern, alpha, beta, gamma, **opts)
    return w["s"], w["z"], w_down, hist
