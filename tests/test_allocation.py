"""Layer-wise allocation (allocation=uniform|owl): the OWL map, exact totals, the engine's dense pass,
validation and run identity."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from pruners.allocation import Owl, exact_counts, outlier_ratio, owl, spread
from pruners.magnitude import build as magnitude
from pruners.pattern import SparsityPattern
from pruners.ria import build as ria
from pruners.sparsegpt import build as sparsegpt
from pruners.wanda import build as wanda
from runners.cli import CONF
from core.families import adapter_for
from runners.execution.engine import prune_model
from runners.execution.identity import prepare, run_id
from runners.validate import check_command_line
from tests.conftest import tiny_model


def test_spread_is_linear_decreasing_weighted_mean_and_within_lambda():
    """More outliers -> lower sparsity, linearly; size-weighted mean = target; every block within
    target +- lam and the extreme one on the boundary."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        n = int(torch.randint(2, 12, (1,), generator=gen))
        ratios = {i: float(torch.rand(1, generator=gen)) for i in range(n)}
        sizes = {i: int(torch.randint(100, 5000, (1,), generator=gen)) for i in range(n)}
        s = spread(ratios, sizes, 0.7, 0.08)
        mean = sum(s[i] * sizes[i] for i in s) / sum(sizes.values())
        assert mean == pytest.approx(0.7, abs=1e-12)
        assert all(0.7 - 0.08 - 1e-12 <= v <= 0.7 + 0.08 + 1e-12 for v in s.values())
        assert max(abs(v - 0.7) for v in s.values()) == pytest.approx(0.08)
        order = sorted(s, key=lambda i: ratios[i])
        assert all(s[a] >= s[b] for a, b in zip(order, order[1:]))
        # linear: equal steps in the ratio give equal steps in sparsity
        lo, hi = order[0], order[-1]
        slope = (s[hi] - s[lo]) / (ratios[hi] - ratios[lo])
        for i in s:
            assert s[i] == pytest.approx(s[lo] + slope * (ratios[i] - ratios[lo]), abs=1e-12)


def test_spread_with_equal_ratios_is_uniform():
    assert spread({0: 0.01, 1: 0.01}, {0: 10, 1: 20}, 0.6, 0.08) == {0: 0.6, 1: 0.6}


def test_exact_counts_sum_to_the_rounded_total_and_stay_within_one_per_block():
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        n = int(torch.randint(1, 10, (1,), generator=gen))
        sizes = {i: int(torch.randint(1, 999, (1,), generator=gen)) for i in range(n)}
        ratios = {i: float(torch.rand(1, generator=gen)) for i in range(n)}
        targets = spread(ratios, sizes, 0.55, 0.05) if n > 1 else {0: 0.55}
        counts = exact_counts(targets, sizes, 0.55)
        assert sum(counts.values()) == round(0.55 * sum(sizes.values()))
        assert all(abs(counts[i] - targets[i] * sizes[i]) < 1 + 1e-9 for i in counts)


def test_outlier_ratio_against_a_direct_count():
    a, b = torch.tensor([[1.0, 1.0, 1.0, 30.0]]), torch.tensor([[1.0, 1.0], [1.0, 9.0]])
    values = [1.0, 1.0, 1.0, 30.0, 1.0, 1.0, 1.0, 9.0]
    mean = sum(values) / len(values)
    for m in (1.0, 2.0, 5.0):
        assert outlier_ratio([a, b], m) == sum(v > m * mean for v in values) / len(values)


def _planted(name="tiny-llama"):
    """A tiny model whose block 1 has large input columns (many outliers) and the others none."""
    model = tiny_model(name)
    adapter = adapter_for(model)
    with torch.no_grad():
        for linear in adapter.linears(adapter.blocks(model)[1]).values():
            linear.weight[:, :3] *= 40.0
    return model, adapter


def _zeros(report, block=None):
    rows = [r for r in report.layers if block is None or r["block"] == block]
    return sum(r["zeros"] for r in rows), sum(r["numel"] for r in rows)


@pytest.mark.parametrize("pruner", [magnitude(), wanda(), sparsegpt(), ria()])
def test_owl_through_the_engine_keeps_the_total_exact(pruner):
    """OWL at 0.7 on a tiny model with planted outliers: the outlier block is pruned least, every
    block within 0.7 +- lam, and the total zeros equal round(0.7 * total) to one weight per matrix,
    for whole-matrix (magnitude), per-row (Wanda, RIA) and per-column-block (SparseGPT) pruners alike:
    an allocation's block patterns are exact (SparsityPattern.exact)."""
    model, adapter = _planted()
    ids = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(0))
    report = prune_model(model, adapter, pruner, SparsityPattern(0.7), ids, [0, 1, 2], "cpu",
                         allocation=Owl(m=5.0, lam=0.08))
    target = {r["block"]: r["value"] for r in report.blocks if r["metric"] == "target_sparsity"}
    measured = {r["block"]: r["value"] for r in report.blocks if r["metric"] == "sparsity"}
    ratios = {r["block"]: r["value"] for r in report.blocks if r["metric"] == "allocation:outlier_ratio"}
    assert ratios[1] > max(ratios[0], ratios[2])
    assert target[1] == pytest.approx(0.7 - 0.08, abs=1e-3) and target[1] < min(target[0], target[2])
    assert all(0.7 - 0.08 - 1e-3 <= v <= 0.7 + 0.08 + 1e-3 for v in measured.values())
    zeros, numel = _zeros(report)
    matrices = len(report.layers)
    assert abs(zeros - round(0.7 * numel)) <= matrices / 2
    for i, t in target.items():
        z, n = _zeros(report, i)
        assert measured[i] == z / n
        assert abs(z - t * n) <= sum(r["block"] == i for r in report.layers) / 2
    for r in report.layers:  # each matrix: round(block ratio * numel), exactly
        assert r["zeros"] == round(target[r["block"]] * r["numel"])


def test_owl_exact_false_keeps_each_pruners_own_floor():
    """allocation.exact=false: Wanda floors every row at int(cols * block ratio), as under uniform."""
    model, adapter = _planted()
    ids = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(0))
    report = prune_model(model, adapter, wanda(), SparsityPattern(0.7), ids, [0, 1, 2], "cpu",
                         allocation=Owl(m=5.0, lam=0.08, exact=False))
    target = {r["block"]: r["value"] for r in report.blocks if r["metric"] == "target_sparsity"}
    for r in report.layers:
        rows, cols = (int(v) for v in r["shape"].split("x"))
        assert r["zeros"] == rows * int(cols * target[r["block"]])


def test_owl_dense_pass_measures_the_dense_model():
    """The outlier ratios the engine records equal ones computed from a plain full forward of the
    dense model (hooks on every Linear), so pruning earlier blocks does not leak into them."""
    model, adapter = _planted()
    ids = torch.randint(0, 1000, (3, 16), generator=torch.Generator().manual_seed(1))
    sq, handles = {}, []
    for i, block in enumerate(adapter.blocks(model)):
        for name, linear in adapter.linears(block).items():
            def hook(_m, args, key=(i, name)):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                sq[key] = sq.get(key, 0) + (x * x).sum(0)
            handles.append(linear.register_forward_pre_hook(hook))
    with torch.no_grad():
        for row in ids:
            model(input_ids=row[None])
    for h in handles:
        h.remove()
    expected = {i: outlier_ratio([l.weight.abs() * sq[(i, n)].sqrt()[None] for n, l in adapter.linears(b).items()],
                                 5.0) for i, b in enumerate(adapter.blocks(model))}
    report = prune_model(model, adapter, wanda(), SparsityPattern(0.6), ids, [0, 1, 2], "cpu", allocation=Owl())
    got = {r["block"]: r["value"] for r in report.blocks if r["metric"] == "allocation:outlier_ratio"}
    assert got == pytest.approx(expected, abs=1e-9)


def test_owl_rejects_nm_and_bad_settings():
    with pytest.raises(ValueError, match="allocation=owl cannot be combined with sparsity=2:4"):
        Owl().check(SparsityPattern.parse("2:4"))
    with pytest.raises(ValueError, match="allocation.lam=0.6"):
        owl(lam=0.6)
    with pytest.raises(ValueError, match="allocation.m=0"):
        owl(m=0)


@pytest.mark.parametrize("argv,needle", [
    (["model=tiny-llama", "allocation=owl", "sparsity=2:4"], "allocation=owl cannot be combined with sparsity=2:4"),
    (["-m", "model=tiny-llama", "allocation=uniform,owl", "sparsity=0.5,3:4"], "sparsity=3:4"),
    (["model=tiny-llama", "allocation=owls"], "allocation='owls' is not valid: accepted alphapruning, dlp, owl, uniform"),
    (["model=tiny-llama", "allocation=owl", "allocation.lam=0.4", "sparsity=0.7"], "allocation.lam=0.4"),
    (["model=tiny-llama", "allocation=owl", "allocation.exact=maybe", "sparsity=0.7"], "allocation.exact='maybe'"),
])
def test_validation_names_the_value(argv, needle):
    problem = check_command_line(argv)
    assert problem is not None and needle in problem and "\n" not in problem


def test_validation_accepts_owl_with_a_fraction_and_uniform_with_nm():
    assert check_command_line(["-m", "model=tiny-llama", "allocation=owl", "sparsity=0.5,0.7"]) is None
    assert check_command_line(["model=tiny-llama", "allocation=uniform", "sparsity=2:4"]) is None


def _key(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny-llama", "pruner=magnitude", *overrides])
    from runners.registry import build

    run = prepare(cfg)
    return run.key(build(cfg.pruner))


def test_identity_and_label():
    """owl enters the label and the run id (with its settings and, even for magnitude, the
    calibration); uniform adds nothing to the key, so earlier run ids stay valid."""
    uniform, owl_key = _key("allocation=uniform"), _key("allocation=owl")
    assert "allocation" not in uniform and uniform["label"] == "magnitude" and uniform["calib"] is None
    assert owl_key["label"] == "magnitude+owl" and owl_key["allocation"]["lam"] == 0.08
    assert owl_key["calib"] is not None
    other = _key("allocation=owl", "allocation.m=7")
    assert len({run_id(uniform), run_id(owl_key), run_id(other)}) == 3
