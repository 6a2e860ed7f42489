"""Sparsity patterns: parsing, validation and exact mask selection."""
import pytest
import torch

from pruners.pattern import SparsityPattern, lowest_k_mask, nm_mask, select_mask


@pytest.mark.parametrize("value,label,ratio", [
    (0.7, "0.7", 0.7), ("0.7", "0.7", 0.7), ("70%", "0.7", 0.7), ("2:4", "2:4", 0.5),
    ("3:4", "3:4", 0.75), ("4:8", "4:8", 0.5), (0, "0", 0.0)])
def test_parse_accepts(value, label, ratio):
    """Floats, percentages and N:M strings parse to the right label and zero ratio."""
    p = SparsityPattern.parse(value)
    assert p.label == label and p.ratio == pytest.approx(ratio)


@pytest.mark.parametrize("value", [1.2, 1.0, -0.1, "5:4", "0:4", "4:4", "2:0", "a", "2:4:8", "nan", True, None])
def test_parse_rejects_with_value_named(value):
    """Bad sparsities raise one line that names the value and the accepted forms."""
    with pytest.raises(ValueError) as info:
        SparsityPattern.parse(value)
    msg = str(info.value)
    assert repr(value) in msg and "N:M" in msg and "\n" not in msg


def test_lowest_k_exact_with_ties():
    """All-equal scores still give exactly k pruned entries, the first k in order."""
    scores = torch.ones(7, 9)
    mask = lowest_k_mask(scores, 20)
    assert int(mask.sum()) == 20
    assert mask.flatten()[:20].all()


def test_nm_mask_exact_with_ties():
    """N:M masks have exactly N pruned in every group of M, also with tied scores."""
    scores = torch.randint(0, 3, (16, 32)).float()
    for n, m in [(2, 4), (3, 4), (4, 8), (1, 2)]:
        mask = nm_mask(scores, n, m)
        assert (mask.view(16, -1, m).sum(-1) == n).all()


def test_select_mask_per_row_counts():
    """Per-row selection prunes int(cols*ratio) of every row."""
    scores = torch.rand(5, 33).round(decimals=1)
    mask = select_mask(scores, SparsityPattern.parse(0.7), per_row=True)
    assert (mask.sum(1) == int(33 * 0.7)).all()


def test_nm_needs_divisible_columns():
    """An N:M pattern on a row length not divisible by M is a clear error."""
    with pytest.raises(ValueError, match="multiple of 4"):
        SparsityPattern.parse("2:4").check_columns(30, "fc1")


def test_exact_pattern_spreads_the_remainder_over_rows_by_the_next_lowest_score():
    """exact: round(ratio * numel) zeros in all, row counts within one, the extra zeros in the rows
    whose next-lowest score is smallest, each row's zeros its lowest scores; same label."""
    torch.manual_seed(0)
    scores = torch.rand(7, 10)
    pattern = SparsityPattern(0.33, exact=True)
    mask = select_mask(scores, pattern, per_row=True)
    per_row = mask.sum(1)
    assert int(mask.sum()) == round(0.33 * 70) == 23 and set(per_row.tolist()) == {3, 4}
    ordered = scores.sort(1).values
    expected_extra = set(torch.argsort(ordered[:, 3])[:23 - 21].tolist())  # 2 rows get a 4th zero
    assert set(torch.nonzero(per_row == 4).squeeze(1).tolist()) == expected_extra
    for r in range(7):  # a row's zeros are its lowest scores
        assert scores[r][mask[r]].max() <= scores[r][~mask[r]].min()
    assert pattern.label == SparsityPattern(0.33).label
    # the papers' floor when not exact: int(10 * 0.33) = 3 per row, 21 in all
    assert int(select_mask(scores, SparsityPattern(0.33), per_row=True).sum()) == 21
    assert int(select_mask(scores, pattern, per_row=False).sum()) == 23


def test_exact_sparsegpt_hits_the_rounded_matrix_count():
    """SparseGPT's column blocks take cumulative targets when exact: the matrix gets round(ratio * numel)."""
    from pruners.sparsegpt import sparsegpt_prune

    torch.manual_seed(1)
    weight, x = torch.randn(9, 300), torch.randn(400, 300)
    hessian = 2 * x.t() @ x / 400
    for ratio in (0.7, 0.613):
        exact = sparsegpt_prune(weight, hessian, SparsityPattern(ratio, exact=True), blocksize=128)
        floor = sparsegpt_prune(weight, hessian, SparsityPattern(ratio), blocksize=128)
        assert int((exact == 0).sum()) == round(ratio * weight.numel())
        assert int((floor == 0).sum()) == sum(int(c * 9 * ratio) for c in (128, 128, 44))
