"""The random pruner alone: exact counts, N:M groups, reproducible from the seed."""
import torch

from llm_prune_random import build
from pruners.pattern import SparsityPattern


def _prune(seed, pattern, weight):
    return build(seed=seed).prune_fn(weight, None, SparsityPattern.parse(pattern))


def test_exact_unstructured_count_and_seeded():
    weight = torch.randn(16, 24) + 5  # no zero to begin with
    a, b, c = _prune(0, 0.7, weight), _prune(0, 0.7, weight), _prune(1, 0.7, weight)
    assert int((a == 0).sum()) == int(weight.numel() * 0.7)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[a != 0], weight[a != 0])  # kept weights unchanged


def test_nm_groups():
    weight = torch.randn(8, 32) + 5
    pruned = _prune(3, "3:4", weight)
    assert ((pruned.reshape(8, 8, 4) == 0).sum(-1) == 3).all()


def test_the_mask_is_spread_over_the_matrix():
    """Random, not structured: over many rows the zeros of each column are near their expectation."""
    pruned = _prune(0, 0.5, torch.ones(4000, 8))
    per_column = (pruned == 0).float().mean(0)
    assert ((per_column - 0.5).abs() < 0.05).all()
