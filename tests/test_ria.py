"""RIA (pruner=ria): the score against its formula written out, exact per-row and N:M sparsity,
channel permutation (kept importance never below the stored order, exactly N:M in the order used),
the engine path and the settings' validation."""
from __future__ import annotations

import itertools

import pytest
import torch

from pruners.pattern import SparsityPattern
from pruners.ria import build, kept_importance, pattern_ok, permutation, ria_mask, ria_prune, ria_scores
from pruners.wanda import InputNorms
from core.families import adapter_for
from runners.execution.engine import prune_model
from runners.validate import check_command_line
from tests.conftest import tiny_model


def _formula(weight: torch.Tensor, x: torch.Tensor, a: float) -> list[list[float]]:
    """RIA_ij = (|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * ||X_j||_2 ** a, with Python sums."""
    rows, cols = weight.shape
    w = weight.double().abs().tolist()
    xs = x.double().tolist()
    row_sum = [sum(w[i][k] for k in range(cols)) for i in range(rows)]
    col_sum = [sum(w[k][j] for k in range(rows)) for j in range(cols)]
    norm = [sum(t[j] ** 2 for t in xs) ** 0.5 for j in range(cols)]
    return [[(w[i][j] / row_sum[i] + w[i][j] / col_sum[j]) * norm[j] ** a for j in range(cols)]
            for i in range(rows)]


def _stats(x: torch.Tensor) -> InputNorms:
    stats = InputNorms(x.shape[1])
    for part in x.split(5):  # several batches, as the engine feeds them
        stats.add(part)
    return stats


@pytest.mark.parametrize("a", [0.5, 1.0, 0.0])
def test_score_equals_the_formula(a):
    """Up to the common factor tokens ** (-a/2) of the RMS norms, which changes no ranking."""
    weight, x = torch.randn(6, 10), torch.randn(23, 10) * torch.rand(10)
    got = ria_scores(weight, _stats(x).norms(), a).double() * x.shape[0] ** (a / 2)
    assert torch.allclose(got, torch.tensor(_formula(weight, x, a), dtype=torch.float64), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("sparsity", ["0.5", "0.7", "2:4", "3:4", "1:8"])
def test_mask_is_the_lowest_formula_scores_per_row_or_group(sparsity):
    pattern = SparsityPattern.parse(sparsity)
    weight, x = torch.randn(7, 16), torch.randn(30, 16) * torch.rand(16)
    pruned = ria_prune(weight, _stats(x), pattern)
    assert pattern_ok(pruned, pattern)
    scores = _formula(weight, x, 0.5)
    size = pattern.m or 16
    per_group = pattern.n_zero if pattern.is_nm else int(16 * pattern.ratio)
    for i, row in enumerate(scores):
        for start in range(0, 16, size):
            cols = range(start, start + size)
            lowest = set(sorted(cols, key=lambda j: row[j])[:per_group])
            assert {j for j in cols if pruned[i, j] == 0} == lowest
            assert all(pruned[i, j] == weight[i, j] for j in cols if j not in lowest)


def _best_partition(scores: torch.Tensor, n_zero: int, m: int) -> float:
    """Exhaustive optimum of the kept importance over all ways to split the columns into groups."""
    cols = list(range(scores.shape[1]))

    def best(rest):
        if not rest:
            return 0.0
        first, others = rest[0], rest[1:]
        value = 0.0
        for mates in itertools.combinations(others, m - 1):
            group = [first, *mates]
            kept = scores[:, group].topk(m - n_zero, dim=1).values.sum().item()
            value = max(value, kept + best([c for c in others if c not in mates]))
        return value

    return best(cols)


@pytest.mark.parametrize("seed", range(8))
def test_permutation_keeps_at_least_the_stored_orders_importance(seed):
    gen = torch.Generator().manual_seed(seed)
    for rows, cols, sparsity in [(5, 8, "2:4"), (12, 32, "2:4"), (9, 24, "1:4"), (6, 16, "5:8")]:
        pattern = SparsityPattern.parse(sparsity)
        weight = torch.randn(rows, cols, generator=gen)
        norms = torch.rand(cols, generator=gen) * 4
        scores = ria_scores(weight, norms, 0.5)
        mask, order = ria_mask(weight, norms, pattern, permute=True)
        assert sorted(order.tolist()) == list(range(cols))
        pruned = weight.masked_fill(mask, 0)
        assert pattern_ok(pruned, pattern, order)  # exactly N:M in the order used
        kept = float(scores.masked_fill(mask, 0).sum())
        assert kept == pytest.approx(kept_importance(scores, pattern.n_zero, pattern.m, order))
        assert kept >= kept_importance(scores, pattern.n_zero, pattern.m) - 1e-6
        if cols == 8:  # 35 ways to split 8 columns into two groups of 4: the optimum bounds it
            assert kept <= _best_partition(scores, pattern.n_zero, pattern.m) + 1e-5


def test_permutation_gains_on_average_and_unstructured_ignores_it():
    gains = []
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        scores = ria_scores(torch.randn(16, 64, generator=gen), torch.rand(64, generator=gen) * 4, 0.5)
        order = permutation(scores, 2, 4)
        gains.append(kept_importance(scores, 2, 4, order) / kept_importance(scores, 2, 4) - 1)
    assert min(gains) >= 0 and sum(gains) / len(gains) > 0.005  # a real gain on random problems
    weight, norms = torch.randn(8, 16), torch.rand(16)
    plain, _ = ria_mask(weight, norms, SparsityPattern(0.6))
    permuted, order = ria_mask(weight, norms, SparsityPattern(0.6), permute=True)
    assert order is None and torch.equal(plain, permuted)


@pytest.mark.parametrize("permute", [False, True])
def test_engine_prunes_tiny_llama_exactly(permute):
    model = tiny_model("tiny-llama")
    adapter = adapter_for(model)
    pruner = build(permute=permute)
    assert pruner.label == ("ria+permute" if permute else "ria") and pruner.needs_calibration
    ids = torch.randint(0, 1000, (3, 16), generator=torch.Generator().manual_seed(0))
    pattern = SparsityPattern.parse("2:4")
    report = prune_model(model, adapter, pruner, pattern, ids, [0, 1, 2], "cpu")
    recorded = {(r["block"], r["metric"]): r["value"] for r in report.blocks}
    assert all((recorded.get((i, "permuted_nm_ok")) == 1.0) == permute for i in range(3))
    assert all(recorded[(i, "permute_gain")] >= 1.0 for i in range(3) if permute)
    for i, block in enumerate(adapter.blocks(model)):
        for name, linear in adapter.linears(block).items():
            order = pruner.permutations.get((i, name))
            assert (order is not None) == permute
            assert pattern_ok(linear.weight.data, pattern, order)


def test_bad_settings_are_one_line():
    with pytest.raises(ValueError, match=r"pruner.a=-1 is not valid: accepted a number in \[0, 10\]"):
        build(a=-1)
    with pytest.raises(ValueError, match="pruner.permute='yes' is not valid: accepted true or false"):
        build(permute="yes")
    problem = check_command_line(["model=tiny-llama", "pruner=ria", "pruner.a=-2"])
    assert problem is not None and "pruner.a=-2" in problem and "\n" not in problem
    assert check_command_line(["model=tiny-llama", "pruner=ria", "pruner.permute=true", "sparsity=2:4"]) is None
