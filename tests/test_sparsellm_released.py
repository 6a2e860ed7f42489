"""SparseLLM with the released schedule: its steps against independent computations, and runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pruners.pattern import SparsityPattern
from pruners.sparsegpt import sparsegpt_prune
from pruners.sparsellm_released import (
    DampedHessian,
    build,
    fc2_gradient_steps,
    optimize_mlp,
    pinv_weight,
    silu_s_gradient_steps,
)
from core.families import adapter_for
from runners.execution.engine import prune_model
from tests.conftest import tiny_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one thread (conftest.one_thread)."""


def expected_zeros(weight, pattern, blocksize=128):
    """SparseGPT's exact count: int(rows * block_cols * s) per column block, or n per m."""
    rows, cols = weight.shape
    if pattern.is_nm:
        return rows * cols // pattern.m * pattern.n_zero
    return sum(int(rows * min(blocksize, cols - c) * pattern.ratio) for c in range(0, cols, blocksize))


def assert_exactly_sparse(weight, pattern, name=""):
    assert int((weight == 0).sum()) == expected_zeros(weight, pattern), name
    if pattern.is_nm:
        groups = (weight == 0).reshape(weight.shape[0], -1, pattern.m).sum(-1)
        assert bool((groups == pattern.n_zero).all()), name


def spd(n, seed=0, dead=()):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, n, generator=gen)
    x[:, list(dead)] = 0.0
    return (2.0 / x.shape[0]) * x.T @ x


def test_damping_accumulates_in_place():
    """After k uses each diagonal entry grew by m0 ((1 + percdamp)^k - 1); dead inputs start at 1."""
    h0, pd, k = spd(16, dead=(3,)), 0.01, 4
    weight = torch.randn(8, 16)
    stored = DampedHessian(h0)
    start = h0.diagonal().clone()
    start[3] = 1.0
    m0 = float(start.mean())
    for use in range(1, k + 1):
        before = stored.matrix.clone()
        pruned = stored.prune(weight, SparsityPattern.parse(0.5), 128, pd)
        grown = m0 * ((1 + pd) ** use - 1)
        torch.testing.assert_close(stored.matrix.diagonal(), start + grown, rtol=1e-6, atol=1e-6)
        # SparseGPT saw exactly the stored H, with no damping of its own. The dead input's
        # column is zeroed on the first use only: afterwards H_33 > 0, as in the released code.
        wz = weight.clone()
        if use == 1:
            wz[:, 3] = 0.0
            assert bool((pruned[:, 3] == 0).all())
        torch.testing.assert_close(pruned, sparsegpt_prune(wz, stored.matrix, SparsityPattern.parse(0.5), 128, 0.0))
        off = ~torch.eye(16, dtype=torch.bool)
        assert torch.equal(stored.matrix[off], before[off])  # only the diagonal moves
    assert stored.uses == k
    # The first use is exactly plain SparseGPT (which dampens a private copy).
    torch.testing.assert_close(DampedHessian(h0).prune(weight, SparsityPattern.parse(0.5), 128, pd),
                               sparsegpt_prune(weight, h0, SparsityPattern.parse(0.5), 128, pd))


def test_fc2_gradient_steps_match_closed_form_and_autograd():
    """10 steps at lr 0.01 on mean((p W^T + b - Y)^2) equal the linear recurrence's closed form."""
    gen = torch.Generator().manual_seed(1)
    tokens, d_ff, out = 40, 6, 3
    p = torch.randn(tokens, d_ff, generator=gen, dtype=torch.float64)
    Y = torch.randn(tokens, out, generator=gen, dtype=torch.float64)
    b = torch.randn(out, generator=gen, dtype=torch.float64)
    w0 = torch.randn(out, d_ff, generator=gen, dtype=torch.float64)
    lr, steps = 0.01, 10
    U = Y - b
    # W_{k+1} = W_k M + lr B, M = I - lr A, A = 2/(N out) p^T p, B = 2/(N out) U^T p.
    scale = 2.0 / (tokens * out)
    M = torch.eye(d_ff, dtype=torch.float64) - lr * scale * p.T @ p
    B = scale * U.T @ p
    closed = w0 @ torch.linalg.matrix_power(M, steps) + lr * B @ sum(
        torch.linalg.matrix_power(M, j) for j in range(steps))
    ours = fc2_gradient_steps(w0, p.T @ p, p.T @ U, tokens, lr, steps)
    torch.testing.assert_close(ours.double(), closed, rtol=1e-6, atol=1e-8)
    # The released formulation: autograd on the mean loss with the bias inside.
    w = w0.clone().requires_grad_(True)
    for _ in range(steps):
        loss = (p @ w.T + b - Y).square().mean()
        (grad,) = torch.autograd.grad(loss, w)
        w = (w - lr * grad).detach().requires_grad_(True)
    torch.testing.assert_close(ours.double(), w.detach(), rtol=1e-6, atol=1e-8)
    assert float((closed - w0).norm()) > 0  # it moved (if only a little)


def test_s_step_equals_two_autograd_gradient_steps():
    """2 steps at lr 0.01 on alpha||s - g||^2 + gamma||p - silu(s) z||^2 (summed), by autograd."""
    gen = torch.Generator().manual_seed(2)
    s, g, z, p = (2 * torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(4))
    alpha, gamma, lr = 5.0, 5.0, 0.01
    ref = s.clone()
    for _ in range(2):
        ref.requires_grad_(True)
        loss = alpha * (ref - g).square().sum() + gamma * (p - F.silu(ref) * z).square().sum()
        (grad,) = torch.autograd.grad(loss, ref)
        ref = (ref - lr * grad).detach()
    ours = silu_s_gradient_steps(s, g, z, p, alpha, gamma, lr, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    assert torch.equal(s, s.clone())  # input not modified in place (a fresh tensor per step)


def test_pinv_weight_is_the_pseudo_inverse_refit():
    """pinv_weight(A^T A, A^T T) = T^T-side least squares T A^+, also for a rank-deficient A."""
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    A[:, 2] = 0.0  # a dead input: the minimum-norm solution gives it weight 0
    T = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    ours = pinv_weight(A.T @ A, A.T @ T, torch.finfo(torch.float64).eps)
    torch.testing.assert_close(ours.double(), (torch.linalg.pinv(A) @ T).T, rtol=1e-5, atol=1e-6)
    assert float(ours[:, 2].abs().max()) < 1e-12


def test_iteration_counts_per_block():
    """LLaMA blocks 1, 30, 31 get one iteration, every other block (and every OPT block) 4."""
    pruner = build()
    assert [pruner.iterations_for("gated_silu", i) for i in (0, 1, 2, 29, 30, 31, 32)] == [4, 1, 4, 4, 1, 1, 4]
    assert {pruner.iterations_for("relu", i) for i in range(40)} == {4}
    assert build(one_iteration_blocks=[]).iterations_for("gated_silu", 1) == 4


def test_one_iteration_is_sparsegpt_on_the_mlp():
    """With one iteration the MLP weights are plain SparseGPT's with dense Hessians."""
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(300, 16, generator=gen)
    w = {k: torch.randn(*shape, generator=gen) / 4 for k, shape in
         (("gate", (32, 16)), ("up", (32, 16)), ("down", (16, 32)))}
    s, z = X @ w["gate"].T, X @ w["up"].T
    p = F.silu(s) * z
    Y = p @ w["down"].T
    pattern = SparsityPattern.parse(0.5)
    new, hist = optimize_mlp("gated_silu", X, Y, w, {}, {"z": z.clone(), "s": s.clone(), "p": p.clone()},
                             pattern, alpha=5.0, beta=5.0, gamma=5.0, iterations=1)
    hx = (2.0 / 300) * X.T @ X
    for k in ("gate", "up"):
        torch.testing.assert_close(new[k], sparsegpt_prune(w[k], hx, pattern), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(new["down"], sparsegpt_prune(w["down"], (2.0 / 300) * p.T @ p, pattern),
                               rtol=1e-4, atol=1e-5)
    assert len(hist["objective"]) == len(hist["mlp_rel_error"]) == 1


def _run(name, sparsity, **settings):
    model = tiny_model(name)
    # 512 tokens > d_ff: with fewer tokens than MLP units the released pseudo-inverse refit of
    # down interpolates p exactly (no ridge) and the iterates blow up, a property of the method.
    tokens = torch.randint(0, 1000, (8, 64))
    adapter = adapter_for(model)
    pattern = SparsityPattern.parse(sparsity)
    report = prune_model(model, adapter, build(**settings), pattern, tokens, [0, 1, 2], "cpu")
    return model, adapter, pattern, report


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
@pytest.mark.parametrize("sparsity", ["0.6", "3:4"])
def test_end_to_end_exact_sparsity_and_diagnostics(name, sparsity):
    """Through the engine: every Linear exactly sparse (exact 3:4 groups), finite, diagnostics per step."""
    model, adapter, pattern, report = _run(name, sparsity)
    for block in adapter.blocks(model):
        for lname, linear in adapter.linears(block).items():
            assert bool(torch.isfinite(linear.weight).all()), lname
            assert_exactly_sparse(linear.weight.data, pattern, lname)
    assert all(r["sparsity"] > 0 for r in report.layers)
    steps = {}
    for row in report.blocks:
        if row["metric"] in ("objective", "mlp_rel_error"):
            assert row["value"] == row["value"] and row["value"] >= 0  # finite, not NaN
            steps.setdefault((row["block"], row["metric"]), []).append(row["step"])
    # LLaMA block 1 gets one iteration (as the released code hard-codes); all others 4.
    one = {1} if name == "tiny-llama" else set()
    for block in range(3):
        for metric in ("objective", "mlp_rel_error"):
            assert steps[(block, metric)] == ([1] if block in one else [1, 2, 3, 4])
    errors = [r["value"] for r in report.blocks if r["metric"] == "rel_output_error"]
    assert len(errors) == 3 and all(0 < e < 1 for e in errors)


def test_fc2_lstsq_variant_is_the_exact_least_squares_refit(monkeypatch):
    """fc2_update=lstsq (the pseudo-inverse refit of older released commits): at iteration 2 the
    dense fc2 handed to SparseGPT is the exact least-squares fit of the target on the auxiliary p
    of iteration 1, as torch.linalg.lstsq solves it in float64 on the same data, and the returned
    fc2 is SparseGPT of that refit on p's Hessian; through the engine it runs and is exactly sparse."""
    gen = torch.Generator().manual_seed(5)
    tokens, hidden, d_ff = 400, 16, 32
    X = torch.randn(tokens, hidden, generator=gen)
    w = {"up": torch.randn(d_ff, hidden, generator=gen) / 4, "down": torch.randn(hidden, d_ff, generator=gen) / 6}
    b = {"up": 0.1 * torch.randn(d_ff, generator=gen), "down": 0.1 * torch.randn(hidden, generator=gen)}
    z = X @ w["up"].T + b["up"]
    Y = F.relu(z) @ w["down"].T + b["down"] + 0.05 * torch.randn(tokens, hidden, generator=gen)
    pattern = SparsityPattern.parse(0.5)
    options = dict(alpha=0.1, beta=0.1, gamma=0.1, fc2_update="lstsq")

    def init():
        return {"z": z.clone(), "p": F.relu(z)}

    first = init()  # the storage is overwritten in place: after one iteration it holds p of iteration 1
    optimize_mlp("relu", X, Y, w, b, first, pattern, iterations=1, **options)
    p1 = first["p"].double()
    U = (Y - b["down"]).double()
    refit = torch.linalg.lstsq(p1, U).solution.T  # (hidden, d_ff), float64

    handed = []
    prune = DampedHessian.prune

    def record(self, weight, *args, **kwargs):
        handed.append(weight.clone())
        return prune(self, weight, *args, **kwargs)

    monkeypatch.setattr(DampedHessian, "prune", record)
    new, _ = optimize_mlp("relu", X, Y, w, b, init(), pattern, iterations=2, **options)
    down = [t for t in handed if t.shape == (hidden, d_ff)]
    assert len(down) == 2  # the dense fc2 at iteration 1, the refit at iteration 2
    torch.testing.assert_close(down[1].double(), refit, rtol=1e-4, atol=1e-5)
    assert float((down[1] - w["down"]).norm()) > 1e-2 * float(w["down"].norm())  # the refit moved fc2
    expected = sparsegpt_prune(refit.float(), (2.0 / tokens) * (p1.T @ p1).float(), pattern, 128, 0.01)
    torch.testing.assert_close(new["down"], expected, rtol=1e-4, atol=1e-5)
    assert_exactly_sparse(new["down"], pattern)

    model, adapter, pattern, _ = _run("tiny-opt", "0.5", fc2_update="lstsq", iterations=2)
    for block in adapter.blocks(model):
        assert_exactly_sparse(block.fc2.weight.data, pattern)


BAD = [
    ("iterations", 0), ("iterations", 2.5), ("alpha", 0.0), ("gamma", -1), ("fc2_update", "adam"),
    ("fc2_lr", 0), ("s_lr", -0.1), ("fc2_steps", -1), ("s_steps", 1.5), ("blocksize", 0),
    ("percdamp", -0.01), ("one_iteration_blocks", [1, -2]), ("one_iteration_blocks", "1,30"),
    ("calib_nsamples", {"opt": 0}), ("calib_nsamples", {"llama": "32"}), ("calib_nsamples", 32),
]


@pytest.mark.parametrize("key,value", BAD)
def test_build_rejects_bad_values_in_one_line(key, value):
    """build() names the key, the value and what is accepted, on one line."""
    with pytest.raises(ValueError) as err:
        build(**{key: value})
    message = str(err.value)
    assert "\n" not in message and key in message and repr(value) in message and "accepted" in message


def test_config_instantiates_with_calibration_sizes():
    """The YAML builds the pruner; calib_nsamples is the released per-family default."""
    from omegaconf import OmegaConf

    from runners.registry import build as build_config

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "pruner" / "sparsellm_released.yaml")
    pruner = build_config(conf)
    assert pruner.name == "sparsellm_released" and pruner.needs_calibration
    assert pruner.calib_nsamples == {"opt": 64, "llama": 32}
    assert (pruner.iterations, pruner.one_iteration_blocks, pruner.fc2_update) == (4, (1, 30, 31), "gd")
    assert pruner.hyperparameters("relu") == {"alpha": 0.1, "beta": 0.1, "gamma": 0.1}
    assert pruner.hyperparameters("gated_silu") == {"alpha": 5.0, "beta": 5.0, "gamma": 5.0}
    assert build(calib_nsamples={}).calib_nsamples is None
    assert build(calib_nsamples={"opt": 128}).calib_nsamples == {"opt": 128}


@pytest.mark.slow
def test_smollm2_two_blocks(fresh_smollm2):
    """On the real SmolLM2: blocks 0-1 at 70%, exact sparsity, block 1 one iteration, finite."""
    model, _ = fresh_smollm2
    adapter = adapter_for(model)
    pattern = SparsityPattern.parse(0.7)
    tokens = torch.randint(0, 49152, (2, 128))
    report = prune_model(model, adapter, build(), pattern, tokens, [0, 1], "cpu")
    for block in adapter.blocks(model)[:2]:
        for lname, linear in adapter.linears(block).items():
            assert_exactly_sparse(linear.weight.data, pattern, lname)
    steps = [(r["block"], r["step"]) for r in report.blocks if r["metric"] == "objective"]
    assert steps == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1)]
    errors = [r["value"] for r in report.blocks if r["metric"] == "rel_output_error"]
    assert all(e == e and e < 1 for e in errors), errors
