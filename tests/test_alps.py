"""ALPS (pruners/alps.py) against an exhaustive search, SparseGPT, and its exact patterns."""
from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from pruners.alps import alps_prune, build, pcg_refine
from pruners.pattern import SparsityPattern
from pruners.sparsegpt import sparsegpt_prune
from runners.cli import CONF
from tests.conftest import data_dir


def reconstruction_error(pruned: torch.Tensor, dense: torch.Tensor, h: torch.Tensor) -> float:
    """``sum_r (w_r - ŵ_r)^T H (w_r - ŵ_r)``, the layer-wise objective (float64)."""
    diff = (pruned - dense).double()
    return float(((diff @ h.double()) * diff).sum())


def row_optimum_by_zeros(w: torch.Tensor, h: torch.Tensor) -> list[float]:
    """For one row, the least error with exactly z pruned inputs, z = 0..in: every mask is tried,
    and for each the kept weights solve the least-squares problem ``H_SS w_S = (H ŵ)_S``."""
    n = w.numel()
    w, h = w.double(), h.double()
    best = [float("inf")] * (n + 1)
    for kept_count in range(n + 1):
        for kept in itertools.combinations(range(n), kept_count):
            fit = torch.zeros(n, dtype=torch.float64)
            if kept:
                idx = torch.tensor(kept)
                fit[idx] = torch.linalg.solve(h[idx][:, idx], (h @ w)[idx])
            diff = fit - w
            best[n - kept_count] = min(best[n - kept_count], float(diff @ h @ diff))
    return best


def exhaustive_optimum(weight: torch.Tensor, h: torch.Tensor, zeros: int) -> float:
    """The least error over all masks of the whole matrix with exactly ``zeros`` zeros (ALPS's
    and SparseGPT's comparison group): rows are independent, so the per-row optima for each zero
    count are combined by dynamic programming over the rows."""
    table = {0: 0.0}
    for row in weight:
        per_count = row_optimum_by_zeros(row, h)
        merged: dict[int, float] = {}
        for used, err in table.items():
            for z, row_err in enumerate(per_count):
                if used + z <= zeros:
                    merged[used + z] = min(merged.get(used + z, float("inf")), err + row_err)
        table = merged
    return table[zeros]


def random_problem(seed: int, rows: int, cols: int, samples: int = 64, mixing: float = 0.3):
    """Weights and ``H = (2/N) X^T X`` of random inputs with correlated features and uneven
    scales, as LLM activations have (enough samples for full rank)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + mixing * torch.randn(cols, cols, generator=gen) / cols ** 0.5
    x = torch.randn(samples, cols, generator=gen) @ mix * torch.exp(0.5 * torch.randn(cols, generator=gen))
    return torch.randn(rows, cols, generator=gen), 2 * x.T @ x / samples


def test_alps_beats_sparsegpt_and_is_near_the_exhaustive_optimum():
    """8 inputs at 50%: on every problem ALPS's error is no worse than SparseGPT's on the same H,
    and on average within 3% of the best of all masks."""
    pattern = SparsityPattern.parse(0.5)
    gaps = []
    for seed in range(10):
        weight, h = random_problem(seed, rows=3, cols=8)
        alps = reconstruction_error(alps_prune(weight, h, pattern), weight, h)
        sparsegpt = reconstruction_error(sparsegpt_prune(weight, h, pattern), weight, h)
        best = exhaustive_optimum(weight, h, pattern.zeros(weight.numel()))
        assert best <= alps * (1 + 1e-6)  # the search really is a lower bound
        assert alps <= sparsegpt * (1 + 1e-6), (seed, alps, sparsegpt)
        gaps.append(alps / best - 1)
    assert sum(gaps) / len(gaps) < 0.03, gaps


def test_pcg_solves_the_least_squares_problem_on_a_fixed_support():
    """With enough steps, PCG reaches the closed-form kept weights of every row."""
    weight, h = random_problem(1, rows=4, cols=8)
    keep = torch.rand(4, 8, generator=torch.Generator().manual_seed(2)) > 0.4
    refined = pcg_refine(h, weight, torch.zeros_like(weight), keep, iters=8)
    for r in range(4):
        idx = keep[r].nonzero().squeeze(1)
        exact = torch.linalg.solve(h[idx][:, idx].double(), (h.double() @ weight[r].double())[idx])
        assert torch.allclose(refined[r, idx].double(), exact, atol=1e-3)
        assert (refined[r, ~keep[r]] == 0).all()


@pytest.mark.parametrize("sparsity", ["0.7", "0.9", "2:4", "3:4"])
def test_exact_sparsity_and_nm(sparsity):
    """The pattern's exact zero count over the matrix; N:M exactly in every group of every row."""
    pattern = SparsityPattern.parse(sparsity)
    for seed in range(3):
        weight, h = random_problem(seed, rows=6, cols=8 if pattern.is_nm else 40, samples=128)
        pruned = alps_prune(weight, h, pattern)
        zeros = pruned == 0
        if pattern.is_nm:
            assert (zeros.reshape(6, -1, pattern.m).sum(2) == pattern.n_zero).all()
        else:
            assert int(zeros.sum()) == pattern.zeros(weight.numel())
        exact = SparsityPattern(pattern.ratio, pattern.n_zero, pattern.m, exact=True)
        if not pattern.is_nm:  # layer-wise allocations' exact counts: round, not floor
            assert int((alps_prune(weight, h, exact) == 0).sum()) == round(weight.numel() * pattern.ratio)


def test_settings_are_checked_in_one_line():
    for key, value in (("rho0", 0), ("rho_every", 0), ("max_iter", 0), ("pcg_iter", -1), ("percdamp", -0.1), ("tol", 0)):
        with pytest.raises(ValueError, match=rf"^pruner\.{key}={value!r} is not valid: accepted [^\n]+$"):
            build(**{key: value})


@pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
@pytest.mark.parametrize("model,sparsity", [("tiny-llama", "0.7"), ("tiny-opt", "2:4")])
def test_smoke_run_is_ok_with_exact_sparsity(model, sparsity, tmp_path, cache_dir):
    from runners.execution.job import run_job

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"data.local_dir={data_dir()}", f"model={model}", "protocol=smoke", "pruner=alps",
            f"sparsity={sparsity}", "eval.datasets=[wikitext2]", f"results.dir={tmp_path}",
            f"cache_dir={cache_dir}"])
    assert run_job(cfg) == "ok"
    (folder,) = [f for f in (tmp_path / "runs").iterdir() if "__alps__" in f.name]
    layers = pd.read_csv(folder / "layers.csv")
    pattern = SparsityPattern.parse(sparsity)
    assert len(layers) > 0
    expected = layers.numel.map(pattern.zeros) if not pattern.is_nm else layers.numel * pattern.n_zero // pattern.m
    assert (layers.zeros == expected).all()
