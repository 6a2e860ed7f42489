"""AlphaPruning and DLP allocations: their per-block measures against independent computations
(a float64 Hill estimator on matrices with a known power-law spectrum; DLP's median on a
hand-built block), their maps, exact totals under every pruner, settings, validation and identity."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from core.families import adapter_for
from pruners.alphapruning import AlphaPruning, alpha_hill
from pruners.alphapruning import build as alphapruning
from pruners.dlp import Dlp, median_score
from pruners.dlp import build as dlp
from pruners.magnitude import build as magnitude
from pruners.pattern import SparsityPattern
from pruners.ria import build as ria
from pruners.sparsegpt import build as sparsegpt
from pruners.wanda import build as wanda
from runners.cli import CONF
from runners.execution.engine import prune_model
from runners.execution.identity import prepare, run_id
from runners.validate import check_command_line
from tests.test_allocation import _planted  # a tiny model whose block 1 has planted outlier columns


def power_law_matrix(alpha: float, n: int = 400, seed: int = 0) -> torch.Tensor:
    """An n x n matrix whose W^T W eigenvalues are the n quantiles of a power law of density
    ~ x^-alpha on [1, inf): lambda_i = (1 - i / (n + 1))^(-1 / (alpha - 1)), with random rotations."""
    gen = torch.Generator().manual_seed(seed)
    eigs = torch.tensor([(1 - i / (n + 1)) ** (-1 / (alpha - 1)) for i in range(1, n + 1)], dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (u * eigs.sqrt()) @ v.T


def hill_reference(w: np.ndarray, k: int) -> float:
    """Textbook Hill estimator in float64 numpy over the k largest eigenvalues of W^T W, with
    lambda_min the (k)-th largest: 1 + k / sum ln(lambda_i / lambda_min)."""
    eigs = np.sort(np.linalg.eigvalsh(w.T @ w))[::-1]
    top = eigs[:k]
    return 1 + k / np.sum(np.log(top / top[-1]))


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
def test_hill_median_equals_a_float64_reference_and_recovers_a_known_exponent(alpha):
    """xmin=median is the Hill estimator over the upper half of the ESD: equal to an independent
    float64 computation (eigenvalues of W^T W by numpy), and close to the planted exponent."""
    w = power_law_matrix(alpha)
    n = w.shape[0]
    got = alpha_hill(w.float(), "median")
    assert got == pytest.approx(hill_reference(w.numpy(), n - n // 2), rel=1e-4)
    assert got == pytest.approx(alpha, rel=0.12)


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
def test_hill_peak_recovers_a_known_exponent(alpha):
    """xmin=peak (the paper's): on an exact power-law spectrum the ESD peaks at its start, the
    KS-best lambda_min lies there, and the exponent comes back within 10%."""
    assert alpha_hill(power_law_matrix(alpha), "peak") == pytest.approx(alpha, rel=0.10)


def test_heavier_tails_get_lower_alpha_and_lower_sparsity():
    """Blocks of heavier-tailed matrices (alpha 2.5) keep more weights than light-tailed ones (4.0);
    the map is the paper's c((1 - eps) + 2 eps u) with the parameter-weighted mean at the target."""
    a = AlphaPruning(epsilon=0.2)
    measures = {0: a.measure({"w": power_law_matrix(2.5).float()}), 1: a.measure({"w": power_law_matrix(4.0).float()}),
                2: a.measure({"w": power_law_matrix(3.0).float()})}
    assert measures[0] < measures[2] < measures[1]
    sizes = {0: 100, 1: 300, 2: 200}
    t = a.targets(measures, sizes, 0.6)
    assert t[0] < t[2] < t[1]
    assert sum(t[i] * sizes[i] for i in t) / 600 == pytest.approx(0.6, abs=1e-12)
    assert t[1] / t[0] == pytest.approx(1.2 / 0.8)  # the two extremes: (1 + eps) / (1 - eps)


def test_a_block_above_one_is_rejected_with_the_largest_spread_that_fits():
    """One light-tailed block among three: at 0.8 with epsilon 0.2 it asks for 0.8 * 1.2 / 0.9 > 1.
    With u = (0, 0, 0, 1), u_bar = 1/4, the top block is 0.8 (1 + e) / (1 - e + e / 2), below 1 for
    e < 0.2 / 1.3 = 0.1538...: the message names 0.153, which fits, and 0.155 does not."""
    from pruners.pattern import SparsityPattern

    measures, sizes = {0: 3.0, 1: 3.0, 2: 3.0, 3: 6.0}, {i: 50 for i in range(4)}
    with pytest.raises(ValueError, match=r"block 3 the sparsity 1\.067 at sparsity=0\.8: .*allocation\.epsilon <= 0\.153 fits"):
        AlphaPruning(epsilon=0.2).block_patterns(SparsityPattern.parse("0.8"), sizes, measures)
    assert AlphaPruning(epsilon=0.2).largest_fitting_spread(measures, sizes, 0.8) == pytest.approx(0.2 / 1.3, abs=1e-8)
    assert max(AlphaPruning(epsilon=0.153).targets(measures, sizes, 0.8).values()) < 1
    assert max(AlphaPruning(epsilon=0.155).targets(measures, sizes, 0.8).values()) >= 1
    # DLP: s - 2 alpha (u - u_bar) with u = (1, 1, 1, 0), u_bar = 3/4: block 3 at 0.8 + 1.5 alpha < 1 for alpha < 2/15
    with pytest.raises(ValueError, match=r"allocation\.alpha <= 0\.133 fits"):
        Dlp(alpha=0.2).block_patterns(SparsityPattern.parse("0.8"), sizes, measures)


def test_dlp_median_on_a_hand_built_block():
    """The lower median of |W| * ||X|| over both matrices, worked by hand."""
    weights = {"a": torch.tensor([[1.0, -2.0], [3.0, 0.5]]), "b": torch.tensor([[4.0, 1.0, -1.0]])}
    norms = {"a": torch.tensor([2.0, 1.0]), "b": torch.tensor([1.0, 3.0, 0.5])}
    # scores: a -> 2, 2, 6, 0.5; b -> 4, 3, 0.5; sorted 0.5 0.5 2 2 3 4 6: median 2
    assert median_score(weights, norms) == 2.0
    weights["b"] = torch.tensor([[4.0, 1.0, -1.0, 10.0]])
    norms["b"] = torch.tensor([1.0, 3.0, 0.5, 1.0])  # 8 scores, lower middle value 2
    assert median_score(weights, norms) == 2.0


def test_dlp_map_prunes_the_larger_median_more_by_two_alpha():
    """Importance 1 - m / sum m, min-max normalized; s_l = s - 2 alpha (u_l - u_bar): the block with
    the largest median is the most pruned, the extremes 2 alpha apart, the weighted mean the target."""
    d = Dlp(alpha=0.1)
    measures, sizes = {0: 1.0, 1: 3.0, 2: 2.0}, {0: 10, 1: 10, 2: 10}
    t = d.targets(measures, sizes, 0.7)
    assert t[1] > t[2] > t[0] and t[1] - t[0] == pytest.approx(0.2)
    assert t[2] == pytest.approx(0.7) and sum(t.values()) / 3 == pytest.approx(0.7)


@pytest.mark.parametrize("allocation", [AlphaPruning(), Dlp()], ids=["alphapruning", "dlp"])
@pytest.mark.parametrize("pruner", [magnitude(), wanda(), sparsegpt(), ria()], ids=lambda p: p.name)
def test_through_the_engine_every_matrix_is_exact_and_the_total_is_the_targets(allocation, pruner):
    """Under every pruner: each matrix gets round(block ratio x numel) zeros, the total is round(0.7 x
    total) to one weight per matrix, and the per-block rows carry target, measured and the measure."""
    model, adapter = _planted()
    ids = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(0))
    report = prune_model(model, adapter, pruner, SparsityPattern(0.7), ids, [0, 1, 2], "cpu", allocation=allocation)
    target = {r["block"]: r["value"] for r in report.blocks if r["metric"] == "target_sparsity"}
    measure = {r["block"]: r["value"] for r in report.blocks if r["metric"] == f"allocation:{allocation.metric}"}
    assert set(target) == set(measure) == {0, 1, 2} and len(set(target.values())) == 3
    for r in report.layers:
        assert r["zeros"] == round(target[r["block"]] * r["numel"])
    zeros, numel = sum(r["zeros"] for r in report.layers), sum(r["numel"] for r in report.layers)
    assert abs(zeros - round(0.7 * numel)) <= len(report.layers) / 2


def test_alphapruning_measures_the_dense_weights_without_calibration():
    """Weight-only: magnitude + AlphaPruning runs with no calibration tokens, and the recorded
    measure of each block is the mean PL_Alpha_Hill of its dense Linears."""
    model, adapter = _planted()
    expected = {i: float(np.mean([alpha_hill(l.weight.data) for l in adapter.linears(b).values()]))
                for i, b in enumerate(adapter.blocks(model))}
    report = prune_model(model, adapter, magnitude(), SparsityPattern(0.6), None, [0, 1, 2], "cpu",
                         diagnostics=False, allocation=AlphaPruning())
    got = {r["block"]: r["value"] for r in report.blocks if r["metric"] == "allocation:alpha_hill"}
    assert got == pytest.approx(expected, rel=1e-9)
    assert all(math.isfinite(v) for v in got.values())


def test_settings_are_checked_in_one_line():
    with pytest.raises(ValueError, match="allocation.epsilon=1.5"):
        alphapruning(epsilon=1.5)
    with pytest.raises(ValueError, match="allocation.xmin='mean' is not valid: accepted peak, median"):
        alphapruning(xmin="mean")
    with pytest.raises(ValueError, match="allocation.alpha=-0.1"):
        dlp(alpha=-0.1)
    with pytest.raises(ValueError, match="allocation=dlp cannot be combined with sparsity=2:4"):
        Dlp().check(SparsityPattern.parse("2:4"))
    with pytest.raises(ValueError, match="block 1 the sparsity 1.200 at sparsity=0.8"):  # a spread beyond [0, 1): named
        Dlp(alpha=0.4).block_patterns(SparsityPattern(0.8), {0: 10, 1: 10}, {0: 1.0, 1: 2.0})


@pytest.mark.parametrize("argv,needle", [
    (["model=tiny-llama", "allocation=alphapruning", "sparsity=2:4"], "allocation=alphapruning cannot be combined"),
    (["model=tiny-llama", "allocation=dlp", "sparsity=3:4"], "allocation=dlp cannot be combined with sparsity=3:4"),
    (["model=tiny-llama", "allocation=alphapruning", "allocation.xmin=top", "sparsity=0.7"], "allocation.xmin='top'"),
])
def test_validation_names_the_value(argv, needle):
    problem = check_command_line(argv)
    assert problem is not None and needle in problem and "\n" not in problem


def _key(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny-llama", "pruner=magnitude", *overrides])
    from runners.registry import build

    return prepare(cfg).key(build(cfg.pruner))


def test_identity_and_label():
    """Each allocation enters the label and the run id with its settings; AlphaPruning needs no
    calibration (magnitude+alphapruning has none), DLP does."""
    alpha, dlp_key = _key("allocation=alphapruning"), _key("allocation=dlp")
    assert alpha["label"] == "magnitude+alphapruning" and alpha["calib"] is None
    assert dlp_key["label"] == "magnitude+dlp" and dlp_key["calib"] is not None
    assert len({run_id(alpha), run_id(dlp_key), run_id(_key("allocation=dlp", "allocation.alpha=0.1"))}) == 3


def _settings(*overrides) -> str:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny-llama", *overrides])
    from runners.registry import build

    run = prepare(cfg)
    return run.changed_settings(run.label(build(cfg.pruner)))


def test_changed_settings_name_what_differs_from_the_config_files():
    """The metric rows' ``settings``: empty at the defaults, else each changed setting of the pruner,
    allocation and refinement, sorted; the label's own option (keep_best) is not repeated; an
    allocation or refinement that is off adds nothing."""
    assert _settings("pruner=wanda", "allocation=alphapruning") == ""
    assert _settings("pruner=wanda", "allocation=alphapruning", "allocation.epsilon=0.1") == "allocation.epsilon=0.1"
    assert _settings("pruner=sparsegpt", "pruner.percdamp=0.05", "allocation=dlp", "allocation.alpha=0.1",
                     "refine=dsnot") == "pruner.percdamp=0.05 allocation.alpha=0.1"
    assert _settings("pruner=sparsellm", "pruner.keep_best=true") == ""
    assert _settings("pruner=ria", "pruner.a=0.3") == "pruner.a=0.3"  # "a" is in "ria" but not one of its parts
    assert _settings("pruner=dense") == ""


def test_plan_prices_the_allocations():
    """plan=true: DLP adds one dense pass per block, AlphaPruning the SVDs of its matrices."""
    from runners import plan

    shape = plan.Shape.from_config({"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
                                    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3},
                                   "llama")
    base = plan.Method.of(wanda())
    with_dlp, with_alpha = plan.Method.of(wanda(), allocation=Dlp()), plan.Method.of(wanda(), allocation=AlphaPruning())
    t = lambda m: plan.prune_seconds(shape, m, 4096, 512)  # noqa: E731
    assert t(with_dlp) - t(base) == pytest.approx(plan.pass_flops(shape, 4096, 512) / plan.PASS_RATE)
    assert t(with_alpha) > t(base) and plan.Method.of(magnitude(), allocation=AlphaPruning()).calibrated is False


def test_smoke_sweep_under_every_pruner_and_a_plugin(tmp_path, cache_dir, local_data):
    """Each allocation under magnitude, Wanda, SparseGPT, RIA, ALPS and the plugin pruner
    ``random`` (examples/llm-prune-random): every run ends ok, its label names the allocation and
    its layers.csv holds the allocation's exact per-matrix counts."""
    import json

    import pandas as pd

    from runners.execution.job import run_job
    from tests.conftest import compose_wanda_smoke

    for allocation in ("alphapruning", "dlp"):
        for pruner in ("magnitude", "wanda", "sparsegpt", "ria", "alps", "random"):
            extra = ["pruner.max_iter=5"] if pruner == "alps" else []
            cfg = compose_wanda_smoke(tmp_path / "results", cache_dir, "model=tiny-llama", f"pruner={pruner}",
                                      "sparsity=0.7", f"allocation={allocation}", "prune.layers=all", *extra)
            assert run_job(cfg) == "ok", (allocation, pruner)
    runs = [p.parent for p in (tmp_path / "results").rglob("runs/*/manifest.json") if "__dense__" not in str(p)]
    assert len(runs) == 12
    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        blocks, layers = pd.read_csv(run / "blocks.csv"), pd.read_csv(run / "layers.csv")
        target = blocks[blocks.metric == "target_sparsity"].set_index("block").value
        assert manifest["status"] == "ok" and manifest["run_key"]["label"].rsplit("+", 1)[1] in ("alphapruning", "dlp")
        assert (layers.zeros == (layers.block.map(target) * layers.numel).round().astype(int)).all(), run.name
