"""SparseGPT: reconstruction quality, the OBS update, exact sparsity, and its Hessian."""
from pathlib import Path

import pytest
import torch
from torch import nn

from pruners.magnitude import magnitude_prune
from pruners.pattern import SparsityPattern, lowest_k_mask, nm_mask
from pruners.sparsegpt import Hessian, build, sparsegpt_prune
from pruners.wanda import InputNorms, wanda_prune

ROOT = Path(__file__).resolve().parents[1]


def correlated_inputs(tokens: int, n_in: int) -> torch.Tensor:
    """Inputs with correlated features and a few high-variance ones spread over N:M groups."""
    z = torch.randn(tokens, n_in)
    x = z @ (torch.randn(n_in, n_in) / n_in**0.5) + 0.3 * z
    x[:, torch.arange(1, n_in, 13)] *= 6.0  # stride 13: at most one per group of 4
    return x


def hessian_of(x: torch.Tensor, batch: int = 500) -> Hessian:
    """A Hessian statistic fed ``x`` in batches, as the engine does."""
    stats = Hessian(x.shape[1])
    for chunk in x.split(batch):
        stats.add(chunk)
    return stats


def tied_weight(rows: int, cols: int) -> torch.Tensor:
    """Weights on a 4-bit-like grid without 0, so that most values tie."""
    grid = torch.randint(1, 9, (rows, cols)).float() * 0.01
    return grid * torch.where(torch.rand(rows, cols) < 0.5, -1.0, 1.0)


@pytest.mark.parametrize("sparsity", ["0.5", "0.7", "2:4"])
def test_reconstruction_beats_wanda_and_magnitude(sparsity):
    """On correlated inputs ||(W - W')X|| ranks SparseGPT < Wanda < magnitude, each >10% apart."""
    x = correlated_inputs(2048, 256)
    w = nn.Linear(256, 64).weight.detach()
    norms = InputNorms(256)
    for chunk in x.split(500):
        norms.add(chunk)
    pattern = SparsityPattern.parse(sparsity)

    def error(pruned):
        return float(((w - pruned) @ x.T).norm())

    sparsegpt = error(sparsegpt_prune(w, hessian_of(x), pattern))
    wanda = error(wanda_prune(w, norms, pattern))
    magnitude = error(magnitude_prune(w, None, pattern))
    assert sparsegpt < 0.9 * wanda, (sparsegpt, wanda)
    assert wanda < 0.9 * magnitude, (wanda, magnitude)


def test_zero_sparsity_leaves_weights_unchanged():
    """Unstructured sparsity 0 returns the weights bit for bit, even with a dead input."""
    x = correlated_inputs(300, 64)
    x[:, 5] = 0.0
    w = torch.randn(16, 64)
    out = sparsegpt_prune(w, hessian_of(x), SparsityPattern.parse(0.0))
    assert torch.equal(out, w)


def _obs_reference(w: torch.Tensor, x: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """Float64 OBS removal of w[row, col], the columns before ``col`` held fixed.

    With ``G = (H[col:, col:])^-1`` of the dampened ``H``: ``dw = -(w_rq / G_00) G[:, 0]``.
    For ``col == 0`` this is the textbook ``-(w_rq / [H^-1]_qq) H^-1[:, q]``.
    """
    x64, w64 = x.double(), w.double().clone()
    h = 2.0 / x.shape[0] * x64.T @ x64
    h += 0.01 * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    g = torch.linalg.inv(h[col:, col:])
    w64[row, col:] -= w64[row, col] / g[0, 0] * g[:, 0]
    return w64


@pytest.mark.parametrize("col", [0, 9, 15])
def test_single_weight_matches_obs_update(col):
    """Pruning one weight applies the closed-form OBS update to its row and nothing else."""
    x = correlated_inputs(1024, 16)
    w = 0.5 + torch.rand(4, 16)  # |w| >= 0.5 everywhere but the planted weight
    row = 2
    w[row, col] = 1e-3
    pattern = SparsityPattern(ratio=1 / 64)  # int(64 * 1/64) == 1 weight
    assert int(w.numel() * pattern.ratio) == 1
    out = sparsegpt_prune(w, hessian_of(x), pattern, blocksize=128)  # one block: all columns
    assert out[row, col] == 0 and int((out == 0).sum()) == 1
    expected = _obs_reference(w, x, row, col)
    assert torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-5)
    others = [r for r in range(4) if r != row]
    assert torch.equal(out[others], w[others])  # no error, no update
    if col == 0:  # the textbook full-inverse formula, computed directly
        x64 = x.double()
        h = 2.0 / x.shape[0] * x64.T @ x64
        hinv = torch.linalg.inv(h + 0.01 * torch.diagonal(h).mean() * torch.eye(16, dtype=h.dtype))
        textbook = w.double()[row] - w[row, 0].double() / hinv[0, 0] * hinv[:, 0]
        assert torch.allclose(out[row].double(), textbook, rtol=1e-4, atol=1e-5)


def _columnwise_reference(w, h, pattern, blocksize, percdamp=0.01):
    """Float64 transcription of the published loop: eager rank-1 updates, column by column."""
    w, h = w.double().clone(), h.double().clone()
    rows, cols = w.shape
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += percdamp * torch.diagonal(h).mean() * torch.eye(cols, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        w1, u1 = w[:, start:end].clone(), u[start:end, start:end]
        errs = torch.zeros_like(w1)
        d = torch.diagonal(u1)
        mask = torch.zeros_like(w1, dtype=torch.bool)
        if not pattern.is_nm:
            mask = lowest_k_mask((w1 / d) ** 2, int(w1.numel() * pattern.ratio))
        for j in range(end - start):
            if pattern.is_nm and j % pattern.m == 0:
                group = (w1[:, j:j + pattern.m] / d[j:j + pattern.m]) ** 2
                mask[:, j:j + pattern.m] = nm_mask(group, pattern.n_zero, pattern.m)
            q = w1[:, j].masked_fill(mask[:, j], 0.0)
            errs[:, j] = (w1[:, j] - q) / d[j]
            w1[:, j:] -= errs[:, j:j + 1] * u1[j:j + 1, j:]
            w1[:, j] = q
        w[:, start:end] = w1
        w[:, end:] -= errs @ u[start:end, end:]
    return w


@pytest.mark.parametrize("sparsity", ["0.6", "2:4", "3:4"])
def test_matches_columnwise_reference(sparsity):
    """Same masks and (to float32 accuracy) same weights as the plain column-by-column loop."""
    pattern = SparsityPattern.parse(sparsity)
    x = correlated_inputs(600, 96)
    x[:, 10] = 0.0
    stats = hessian_of(x)
    w = torch.randn(24, 96)
    out = sparsegpt_prune(w, stats, pattern, blocksize=32)
    expected = _columnwise_reference(w, stats.matrix, pattern, blocksize=32)
    assert torch.equal(out == 0, expected == 0)
    assert torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_unstructured_exact_per_block_on_ties(sparsity):
    """Tied weights: each 128-column block loses exactly int(rows*width*s) weights."""
    rows, cols = 48, 320  # blocks of 128, 128 and 64 columns
    w = tied_weight(rows, cols)
    stats = hessian_of(correlated_inputs(512, cols))
    out = sparsegpt_prune(w, stats, SparsityPattern.parse(sparsity))
    expected_total = 0
    for start in range(0, cols, 128):
        width = min(128, cols - start)
        expected = int(rows * width * sparsity)
        assert int((out[:, start:start + 128] == 0).sum()) == expected
        expected_total += expected
    assert int((out == 0).sum()) == expected_total


def _stable_sort_mask(scores, k):
    """Reference: the first k entries of a stable sort."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores.reshape(-1), stable=True)[:k]] = True
    return mask.view_as(scores)


def test_sort_free_selection_equals_stable_sort():
    """The block selection picks exactly pattern.lowest_k_mask's entries, ties included."""
    tied = torch.randint(0, 5, (64, 128)).float()  # five distinct values: ties everywhere
    distinct = torch.rand(64, 128)
    for scores in (tied, distinct):
        for k in (0, 1, 777, 4096, 8191):
            assert torch.equal(lowest_k_mask(scores, k), _stable_sort_mask(scores, k))


@pytest.mark.parametrize("sparsity", ["2:4", "3:4"])
@pytest.mark.parametrize("blocksize", [128, 6])
def test_nm_exact_on_ties(sparsity, blocksize):
    """Every group of 4 inputs of every row has exactly N zeros (any block size)."""
    pattern = SparsityPattern.parse(sparsity)
    w = tied_weight(32, 256)
    out = sparsegpt_prune(w, hessian_of(correlated_inputs(512, 256)), pattern, blocksize=blocksize)
    zeros = (out.reshape(32, -1, 4) == 0).sum(-1)
    assert (zeros == pattern.n_zero).all()


def test_nm_rejects_indivisible_columns():
    """An N:M pattern whose M does not divide the input size is refused."""
    with pytest.raises(ValueError, match="multiple of 4"):
        sparsegpt_prune(torch.randn(4, 30), torch.eye(30), SparsityPattern.parse("2:4"))


@pytest.mark.parametrize("sparsity", ["0.5", "2:4"])
def test_dead_inputs(sparsity):
    """Always-zero input features give no NaN and a zero weight column."""
    x = correlated_inputs(400, 64)
    x[:, [3, 40]] = 0.0
    out = sparsegpt_prune(torch.randn(16, 64), hessian_of(x), SparsityPattern.parse(sparsity))
    assert torch.isfinite(out).all()
    assert (out[:, [3, 40]] == 0).all()


def test_rank_deficient_hessian_without_dampening():
    """percdamp=0 on a singular Hessian (fewer tokens than inputs) still gives finite weights."""
    x = correlated_inputs(20, 64)
    out = sparsegpt_prune(torch.randn(16, 64), hessian_of(x), SparsityPattern.parse(0.5), percdamp=0.0)
    assert torch.isfinite(out).all() and int((out == 0).sum()) == 16 * 32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_is_kept(dtype):
    """The result has the weight's dtype, with exact zeros at the target count."""
    w = torch.randn(16, 128).to(dtype)
    out = sparsegpt_prune(w, hessian_of(correlated_inputs(300, 128)), SparsityPattern.parse(0.5))
    assert out.dtype == dtype and int((out == 0).sum()) == 16 * 64


def test_hessian_running_mean():
    """The running mean over uneven batches equals (2/N) X^T X computed in one go."""
    x = correlated_inputs(141, 32)
    stats = Hessian(32)
    start = 0
    for size in (1, 7, 100, 0, 33):
        stats.add(x[start:start + size])
        start += size
    assert stats.tokens == 141
    assert torch.allclose(stats.matrix, 2.0 / 141 * x.T @ x, rtol=1e-5, atol=1e-5)


def test_hessian_is_not_modified():
    """Pruning leaves the given Hessian (object or raw tensor) untouched: no compounding damp."""
    x = correlated_inputs(400, 64)
    x[:, 7] = 0.0  # dead input: its H_jj := 1 must happen on a copy too
    stats = hessian_of(x)
    before = stats.matrix.clone()
    w = torch.randn(16, 64)
    first = sparsegpt_prune(w, stats, SparsityPattern.parse(0.6))
    second = sparsegpt_prune(w, stats, SparsityPattern.parse(0.6))
    raw = sparsegpt_prune(w, stats.matrix, SparsityPattern.parse(0.6))
    assert torch.equal(stats.matrix, before)
    assert torch.equal(first, second) and torch.equal(first, raw)


@pytest.mark.parametrize("rows", [1, 16])
def test_weight_is_not_modified(rows):
    """The input weight is never written, even when its transpose is already contiguous."""
    w = torch.randn(rows, 64)
    before = w.clone()
    out = sparsegpt_prune(w, hessian_of(correlated_inputs(300, 64)), SparsityPattern.parse("2:4"))
    assert torch.equal(w, before) and not torch.equal(out, w)


def test_config_builds_pruner():
    """conf/pruner/sparsegpt.yaml instantiates a pruner with the Hessian statistic."""
    from omegaconf import OmegaConf

    from runners.registry import build as build_config

    pruner = build_config(OmegaConf.load(ROOT / "conf" / "pruner" / "sparsegpt.yaml"))
    assert pruner.name == "sparsegpt" and pruner.make_stat is Hessian and not pruner.sequential
    assert pruner.prune_fn.keywords == {"blocksize": 128, "percdamp": 0.01}
    with pytest.raises(ValueError):
        build(blocksize=0)


def test_hessian_upper_strips_equal_full_product():
    """Wide inputs (upper-triangle strips, mirrored on read) give the same symmetric H as one product."""
    x = torch.randn(300, 640, dtype=torch.float64).float()
    stat = Hessian(640)
    for chunk in x.split([100, 1, 199]):
        stat.add(chunk)
    expected = 2.0 / 300 * x.double().T @ x.double()
    torch.testing.assert_close(stat.matrix.double(), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(stat.matrix, stat.matrix.T)
