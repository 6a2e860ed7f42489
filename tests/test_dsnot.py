"""DSnoT (refine=dsnot): the expected reconstruction error never grows, zeros per row and N:M groups
stay, one cycle equals a swap chosen by a written-out search, the statistics, the engine hook after
any pruner, run identity and labels, validation, and an end-to-end smoke run."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pruners.magnitude import build as magnitude
from pruners.pattern import SparsityPattern, select_mask
from pruners.refine_dsnot import DSnoT, InputMoments, build, dsnot_refine, expected_error
from pruners.sparsegpt import build as sparsegpt
from pruners.wanda import build as wanda
from runners.cli import CONF
from core.families import adapter_for
from runners.execution.engine import prune_model
from runners.execution.identity import prepare, run_id
from runners.execution.store import load_metrics, read_manifest
from runners.registry import build as build_pruner
from runners.validate import check_command_line
from tests.conftest import ROOT, data_dir, tiny_model


def _problem(seed: int, rows: int = 12, cols: int = 32):
    """Dense weights, inputs with a mean (so the expected error is not ~0) and their moments."""
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(rows, cols, generator=gen)
    x = torch.randn(64, cols, generator=gen) * (0.2 + torch.rand(cols, generator=gen)) \
        + torch.randn(cols, generator=gen)
    moments = InputMoments(cols)
    for part in x.split(16):
        moments.add(part)
    return dense, x, moments


def _masks(dense, x, pattern, seed):
    """Input masks of three kinds: Wanda's, magnitude's and a random one at the pattern."""
    wanda_scores = dense.abs() * x.pow(2).sum(0).sqrt()
    random_scores = torch.rand(dense.shape, generator=torch.Generator().manual_seed(seed))
    return [select_mask(s, pattern, per_row=True) for s in (wanda_scores, dense.abs(), random_scores)]


@pytest.mark.parametrize("sparsity", ["0.5", "0.7", "2:4", "4:8"])
def test_error_never_grows_and_the_pattern_stays(sparsity):
    pattern = SparsityPattern.parse(sparsity)
    swapped = 0
    for seed in range(6):
        dense, x, mom = _problem(seed)
        for mask in _masks(dense, x, pattern, seed):
            pruned = dense.masked_fill(mask, 0)
            refined, swaps = dsnot_refine(dense, pruned, mom.mean, mom.var, mom.norms(), pattern.m)
            before = expected_error(dense, pruned, mom.mean).abs()
            after = expected_error(dense, refined, mom.mean).abs()
            assert (after <= before + 1e-5).all()
            assert torch.equal((refined == 0).sum(1), (pruned == 0).sum(1))
            if pattern.is_nm:
                groups = (refined == 0).reshape(refined.shape[0], -1, pattern.m).sum(2)
                assert (groups == pattern.n_zero).all()
            kept = refined != 0  # a weight kept or grown is its dense value (no weight update)
            assert torch.equal(refined[kept], dense[kept])
            swapped += swaps
    assert swapped > 0


def _one_swap(dense, pruned, mean, var, norms, var_power=1.0):
    """The first cycle by an explicit search over each row: the grow and the prune of the module doc."""
    out = pruned.clone()
    for r in range(dense.shape[0]):
        e = sum(float((dense[r, j] - pruned[r, j]) * mean[j]) for j in range(dense.shape[1]))
        if abs(e) <= 0.1:
            continue
        s = 1.0 if e > 0 else -1.0
        grows = [(s * float(dense[r, j] * mean[j]) / float(var[j]) ** var_power, j)
                 for j in range(dense.shape[1]) if pruned[r, j] == 0 and dense[r, j] != 0]
        prunes = [(float(pruned[r, k].abs() * norms[k]), k)
                  for k in range(dense.shape[1]) if pruned[r, k] != 0 and s * float(pruned[r, k] * mean[k]) < 0]
        grows = [g for g in grows if g[0] > 0]
        if not grows or not prunes:
            continue
        j, k = max(grows)[1], min(prunes)[1]
        new = e - float(dense[r, j] * mean[j]) + float(pruned[r, k] * mean[k])
        if (new > 0) == (e > 0) and new != 0 and abs(new) < abs(e):
            out[r, j], out[r, k] = dense[r, j], 0
    return out


@pytest.mark.parametrize("seed", range(4))
def test_one_cycle_equals_the_written_out_search(seed):
    dense, x, mom = _problem(seed, rows=10, cols=16)
    pruned = dense.masked_fill(_masks(dense, x, SparsityPattern(0.5), seed)[0], 0)
    refined, swaps = dsnot_refine(dense, pruned, mom.mean, mom.var, mom.norms(), None, max_cycles=1)
    expected = _one_swap(dense, pruned, mom.mean, mom.var, mom.norms())
    assert torch.equal(refined, expected)
    assert swaps == int((refined != pruned).any(1).sum()) > 0


def test_stopping_rules():
    dense, x, mom = _problem(0)
    pruned = dense.masked_fill(_masks(dense, x, SparsityPattern(0.5), 0)[0], 0)
    same, swaps = dsnot_refine(dense, pruned, mom.mean, mom.var, mom.norms(), None, max_cycles=0)
    assert swaps == 0 and torch.equal(same, pruned)
    big = float(expected_error(dense, pruned, mom.mean).abs().max()) + 1
    same, swaps = dsnot_refine(dense, pruned, mom.mean, mom.var, mom.norms(), None, threshold=big)
    assert swaps == 0 and torch.equal(same, pruned)
    _, few = dsnot_refine(dense, pruned, mom.mean, mom.var, mom.norms(), None, max_cycles=2)
    _, many = dsnot_refine(dense, pruned, mom.mean, mom.var, mom.norms(), None, max_cycles=50)
    assert few <= 2 * dense.shape[0] and many >= few


def test_moments_match_torch():
    x = torch.randn(50, 7) * 3 + 2
    mom = InputMoments(7)
    for part in x.split(9):
        mom.add(part)
    assert torch.allclose(mom.mean, x.mean(0), atol=1e-5)
    assert torch.allclose(mom.var, x.var(0, unbiased=False), atol=1e-4)
    assert torch.allclose(mom.norms(), x.pow(2).mean(0).sqrt(), atol=1e-5)


@pytest.mark.parametrize("pruner,sparsity", [(wanda(), "0.6"), (magnitude(), "2:4"), (sparsegpt(), "0.5")])
def test_engine_refines_after_any_pruner(pruner, sparsity):
    """Through the engine (threshold 0, so the tiny model's small errors are refined too): the same
    zeros per row as the pruner alone, the N:M pattern kept, and swaps recorded per block."""
    pattern = SparsityPattern.parse(sparsity)
    ids = torch.randint(0, 1000, (3, 16), generator=torch.Generator().manual_seed(0))
    plain, refined = tiny_model("tiny-llama"), tiny_model("tiny-llama")
    adapter = adapter_for(plain)
    prune_model(plain, adapter, pruner, pattern, ids, [0, 1, 2], "cpu", diagnostics=False)
    report = prune_model(refined, adapter, pruner, pattern, ids, [0, 1, 2], "cpu", diagnostics=False,
                         refine=DSnoT(threshold=0.0))
    changed = 0
    for i, (a, b) in enumerate(zip(adapter.blocks(plain), adapter.blocks(refined))):
        for (name, la), lb in zip(adapter.linears(a).items(), adapter.linears(b).values()):
            # Block 0 sees the same inputs in both: the same zeros per row. Later blocks see the refined
            # block's outputs, so their masks differ; SparseGPT's zeros per row vary with the inputs.
            if i == 0:
                assert torch.equal((la.weight == 0).sum(1), (lb.weight == 0).sum(1)), name
            assert int((la.weight == 0).sum()) == int((lb.weight == 0).sum()), name
            if pattern.is_nm:
                assert ((lb.weight == 0).reshape(lb.weight.shape[0], -1, 4).sum(2) == 2).all()
            if i == 0:
                changed += int(((la.weight == 0) != (lb.weight == 0)).sum())
    swaps = [r["value"] for r in report.blocks if r["metric"] == "dsnot_swaps"]
    errors = {(r["block"], r["step"]): r["value"] for r in report.blocks if r["metric"] == "dsnot_expected_error"}
    assert len(swaps) == 3 and min(swaps) > 0
    # SparseGPT's updated weight may differ in sign from its dense value: pruned, then regrown at the dense value
    if pruner.name != "sparsegpt":
        assert changed == 2 * swaps[0]  # each swap: one grown, one pruned
    assert all(errors[(b, 1)] <= errors[(b, 0)] + 1e-6 for b in range(3))


def _key(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny-llama", "protocol=smoke", *overrides])
    return prepare(cfg).key(build_pruner(cfg.pruner))


def test_identity_labels_and_dense_noop():
    """dsnot enters the label and the run id with its settings; none adds nothing; magnitude+dsnot
    reads calibration data; dense with refine=dsnot is the dense baseline itself (nothing to refine)."""
    none, ds = _key("pruner=wanda"), _key("pruner=wanda", "refine=dsnot")
    assert "refine" not in none and none["label"] == "wanda"
    assert ds["label"] == "wanda+dsnot" and ds["refine"]["max_cycles"] == 50
    assert _key("pruner=wanda", "refine=dsnot", "allocation=owl", "sparsity=0.7")["label"] == "wanda+owl+dsnot"
    other = _key("pruner=wanda", "refine=dsnot", "refine.threshold=0.05")
    assert len({run_id(none), run_id(ds), run_id(other)}) == 3
    mag = _key("pruner=magnitude", "refine=dsnot")
    assert mag["label"] == "magnitude+dsnot" and mag["calib"] is not None and _key("pruner=magnitude")["calib"] is None
    assert run_id(_key("pruner=dense", "refine=dsnot")) == run_id(_key("pruner=dense"))


@pytest.mark.parametrize("argv,needle", [
    (["model=tiny-llama", "refine=dsnott"], "refine='dsnott' is not valid: accepted dsnot, none"),
    (["model=tiny-llama", "refine=dsnot", "refine.max_cycles=-1"], "refine.max_cycles=-1 is not valid"),
    (["model=tiny-llama", "refine=dsnot", "refine.threshold=-0.5"], "refine.threshold=-0.5 is not valid"),
    (["model=tiny-llama", "refine=dsnot", "refine.var_power=11"], "refine.var_power=11 is not valid"),
])
def test_bad_settings_are_one_line(argv, needle):
    problem = check_command_line(argv)
    assert problem is not None and needle in problem and "\n" not in problem
    with pytest.raises(ValueError, match="refine.max_cycles=1.5"):
        build(max_cycles=1.5)


@pytest.mark.subprocess
@pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
def test_end_to_end_smoke(tmp_path):
    """pruner=wanda refine=none,dsnot protocol=smoke model=tiny-llama: both runs ok, two run ids,
    the dsnot run labelled and its per-block swaps stored."""
    results = tmp_path / "r"
    common = ["pruner=wanda", "protocol=smoke", "model=tiny-llama", "eval.datasets=[wikitext2]",
              f"data.local_dir={data_dir()}", f"results.dir={results}"]
    proc = subprocess.run([sys.executable, "run.py", "-m", "refine=none,dsnot", *common], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    metrics = load_metrics(results)
    runs = metrics[metrics.pruner != "dense"].drop_duplicates("run_id")
    assert sorted(runs.pruner) == ["wanda", "wanda+dsnot"] and runs.run_id.nunique() == 2
    assert (metrics.status == "ok").all()
    folder = results / "runs" / runs[runs.pruner == "wanda+dsnot"].run_id.iloc[0]
    assert read_manifest(folder)["run_key"]["refine"]["name"] == "dsnot"
    assert "dsnot_swaps" in (folder / "blocks.csv").read_text()


@pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
def test_bad_refine_setting_is_rejected_before_anything_runs(tmp_path):
    from runners.validate import check_command_line

    message = check_command_line(["refine=dsnot", "refine.max_cycles=-3", "pruner=wanda", "protocol=smoke",
                                  "model=tiny-llama", f"data.local_dir={data_dir()}", f"results.dir={tmp_path}"])
    assert message is not None and "refine.max_cycles=-3" in message and "\n" not in message, message


@pytest.mark.parametrize("name", ["none", "dsnot"])
def test_every_refine_config_instantiates(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        obj = instantiate(compose(config_name="config", overrides=[f"refine={name}"]).refine)
    assert obj.name == name and obj.needs_calibration == (name == "dsnot")
    assert callable(obj.prepare) and callable(obj.apply)
