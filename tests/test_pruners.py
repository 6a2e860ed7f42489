"""Magnitude and Wanda hit their targets exactly, on tied weights and on SmolLM2."""
import pytest
import torch

from pruners.magnitude import magnitude_prune
from pruners.pattern import SparsityPattern
from pruners.wanda import InputNorms, wanda_prune


def tied_weight(rows=48, cols=64):
    """Weights on a 4-bit-like grid without 0: most values tie, like SmolLM2's dequantized weights."""
    grid = torch.randint(1, 9, (rows, cols)).float() * 0.01
    return grid * torch.where(torch.rand(rows, cols) < 0.5, -1.0, 1.0)


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.9])
def test_magnitude_exact_count_on_ties(sparsity):
    """Magnitude zeroes exactly int(numel*s) weights even when many weights tie."""
    w = tied_weight()
    out = magnitude_prune(w, None, SparsityPattern.parse(sparsity))
    assert int((out == 0).sum()) == int(w.numel() * sparsity)
    kept = out != 0
    assert torch.equal(out[kept], w[kept])  # no other weight changed
    assert out[kept].abs().min() >= w[~kept].abs().max()  # smallest magnitudes went


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_wanda_exact_per_row_and_scores(sparsity):
    """Wanda zeroes exactly int(in*s) per row and keeps the highest |W|*||X|| scores."""
    w, x = tied_weight(), torch.randn(200, 64) * torch.linspace(0.1, 3, 64)
    stats = InputNorms(64)
    stats.add(x[:77])
    stats.add(x[77:])
    out = wanda_prune(w, stats, SparsityPattern.parse(sparsity))
    assert ((out == 0).sum(1) == int(64 * sparsity)).all()
    score = w.abs() * x.norm(dim=0)
    for r in range(w.shape[0]):
        kept = out[r] != 0
        assert score[r][kept].min() >= score[r][~kept].max() - 1e-6


def test_input_norms_running_mean():
    """The running mean of squared inputs over uneven batches equals the one-shot mean."""
    x = torch.randn(103, 8)
    stats = InputNorms(8)
    for chunk in x.split([1, 50, 52]):
        stats.add(chunk)
    torch.testing.assert_close(stats.sq_mean, (x * x).mean(0))


@pytest.mark.parametrize("prune", [magnitude_prune, wanda_prune])
@pytest.mark.parametrize("label", ["2:4", "3:4", "4:8"])
def test_nm_exact_on_ties(prune, label):
    """Both methods give exactly N zeros in every group of M inputs, on tied weights."""
    p = SparsityPattern.parse(label)
    w = tied_weight()
    stats = InputNorms(64)
    stats.add(torch.ones(4, 64))  # equal norms: Wanda's scores tie as much as the weights do
    out = prune(w, stats, p)
    assert ((out == 0).view(48, -1, p.m).sum(-1) == p.n_zero).all()


@pytest.mark.slow
@pytest.mark.parametrize("label", ["0.7", "3:4"])
def test_exact_counts_on_smollm2(fresh_smollm2, label):
    """On real SmolLM2 Linears: exact per-matrix (magnitude), per-row (Wanda) and per-group (N:M) counts.

    SmolLM2's dequantized weights hold some exact zeros (whole groups in places); those are the
    lowest scores, so each unit ends with max(target, zeros it already had) zeros.
    """
    from core.families import adapter_for

    model, _ = fresh_smollm2
    adapter, p = adapter_for(model), SparsityPattern.parse(label)
    for block in list(adapter.blocks(model))[:3] + [adapter.blocks(model)[-1]]:
        for name, linear in adapter.linears(block).items():
            w = linear.weight.data
            rows, cols = w.shape
            mag = magnitude_prune(w, None, p)
            stats = InputNorms(cols)
            stats.add(torch.randn(32, cols))
            wan = wanda_prune(w, stats, p)
            if p.is_nm:
                before = (w == 0).view(rows, -1, p.m).sum(-1).clamp(min=p.n_zero)
                for out in (mag, wan):
                    assert torch.equal((out == 0).view(rows, -1, p.m).sum(-1), before), name
            else:
                k_mat, k_row = int(w.numel() * p.ratio), int(cols * p.ratio)
                assert int((mag == 0).sum()) == max(k_mat, int((w == 0).sum())), name
                assert torch.equal((wan == 0).sum(1), (w == 0).sum(1).clamp(min=k_row)), name
