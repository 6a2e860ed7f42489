"""The accelerator path: the subset marked ``cuda`` that a machine with a GPU runs (`make test-cuda`).

Every test here runs on ``$LLM_PRUNE_TEST_DEVICE`` (default ``cuda``) and is skipped when that
device is CUDA and none is present, so a CPU-only CI skips them. Setting
``LLM_PRUNE_TEST_DEVICE=cpu`` runs the same assertions on the CPU, which is how their logic is
checked on a machine without a GPU (the expectations follow the device kind: ``auto`` is
float16 on CUDA, float32 on the CPU).
"""
import copy
import math
import os

import pytest
import torch
from hydra import compose, initialize_config_dir

from runners.cli import CONF
from runners.execution.identity import run_id
from runners.execution.job import resolve, run_job
from runners.execution.store import load_metrics, read_manifest
from tests.conftest import compose_wanda_smoke, data_dir

DEVICE = os.environ.get("LLM_PRUNE_TEST_DEVICE", "cuda")
KIND = "cuda" if DEVICE.startswith("cuda") else "cpu"
AUTO_DTYPE = "float16" if KIND == "cuda" else "float32"

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(KIND == "cuda" and not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder"),
]


def _compose(results, cache_dir, *overrides):
    """A smoke run on the test device (conftest's Wanda 0.5 smoke config; later overrides win)."""
    return compose_wanda_smoke(results, cache_dir, f"device={DEVICE}", *overrides)


def _perplexities(results) -> dict[str, float]:
    metrics = load_metrics(results)
    return {p: float(metrics[metrics.pruner == p]["value"].iloc[0]) for p in set(metrics.pruner)}


# (pruner override(s), model, sparsity, exact fraction of zeros it must leave)
RUNS = [
    (["pruner=magnitude"], "tiny-llama", "0.5", 0.5), (["pruner=wanda"], "tiny-llama", "0.5", 0.5),
    (["pruner=sparsegpt"], "tiny-llama", "0.5", 0.5), (["pruner=sparsellm"], "tiny-llama", "0.5", 0.5),
    (["pruner=ria"], "tiny-llama", "0.5", 0.5), (["pruner=alps"], "tiny-llama", "0.5", 0.5),
    (["pruner=wanda", "refine=dsnot"], "tiny-llama", "0.5", 0.5),
    (["pruner=sparsellm_released"], "tiny-opt", "0.5", 0.5),
    (["pruner=wanda"], "tiny-opt", "2:4", 0.5), (["pruner=sparsegpt"], "tiny-opt", "3:4", 0.75),
    (["pruner=sparsellm"], "tiny-opt", "3:4", 0.75),
]


@pytest.mark.parametrize("pruner, model, sparsity, zeros", RUNS, ids=lambda v: v if isinstance(v, str) else None)
def test_every_pruner_end_to_end_at_the_auto_dtype(tmp_path, cache_dir, pruner, model, sparsity, zeros):
    """model.dtype=auto on the device: the run is ok, metrics.csv names the device kind and the
    resolved dtype, the zeros are exact and the perplexities finite; a CUDA run records its peak."""
    cfg = _compose(tmp_path, cache_dir, f"model={model}", f"sparsity={sparsity}", *pruner)
    run, built, key = resolve(cfg)
    assert (run.device_kind, run.dtype) == (KIND, AUTO_DTYPE)
    assert run_job(cfg) == "ok"
    manifest = read_manifest(tmp_path / "runs" / run_id(key))
    assert manifest["measured_sparsity"] == zeros
    if KIND == "cuda":
        assert manifest["memory"]["prune"]["peak_cuda_mb"] > 0
    metrics = load_metrics(tmp_path)
    assert set(metrics.device) == {KIND} and set(metrics.dtype) == {AUTO_DTYPE}
    values = _perplexities(tmp_path)
    assert set(values) == {"dense", run.label(built)} and all(math.isfinite(v) for v in values.values())


@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_float32_on_the_device_agrees_with_the_cpu(tmp_path, cache_dir, pruner):
    """The same float32 run on the device and on the CPU: two run ids, the same sparsity and
    perplexities within 1e-3 relative (only the order of floating-point sums differs)."""
    values = {}
    for device in dict.fromkeys((DEVICE, "cpu")):  # one run when the test device is the CPU itself
        cfg = _compose(tmp_path / device, cache_dir, "model=tiny-llama", "model.dtype=float32", f"pruner={pruner}",
                       "sparsity=0.5", f"device={device}")
        assert run_job(cfg) == "ok"
        values[device] = _perplexities(tmp_path / device)
    assert values[DEVICE].keys() == values["cpu"].keys()
    for name, value in values["cpu"].items():
        assert values[DEVICE][name] == pytest.approx(value, rel=1e-3), name


@pytest.mark.slow
def test_smollm2_block_by_block_on_the_device_equals_the_whole_model(smollm2, local_data, cache_dir):
    """SmolLM2 float32, first two 512-token WikiText-2 windows: weights in CPU memory with one block
    at a time on the device give the whole model's perplexity on that device to 1e-5."""
    from eval.blockwise import blockwise_perplexity
    from eval.datasets import eval_tokens
    from eval.perplexity import perplexity

    model, tokenizer = smollm2
    ids = eval_tokens("wikitext2", tokenizer, str(local_data), 512, cache_dir)
    block = blockwise_perplexity(model, ids, 512, DEVICE, max_windows=2)
    assert next(model.parameters()).device.type == "cpu"  # block by block leaves the weights where they were
    whole = perplexity(copy.deepcopy(model).to(DEVICE), ids, 512, DEVICE, max_windows=2)
    assert block == pytest.approx(whole, rel=1e-5)


@pytest.mark.slow
def test_smollm2_gpu_peak_is_within_a_quarter_of_the_plan(tmp_path, cache_dir):
    """A SmolLM2 Wanda run (quick protocol, float16) on the GPU: torch's allocator peak over
    pruning and evaluation is within 25% of the plan's predicted GPU memory."""
    if KIND != "cuda":
        pytest.skip("the GPU memory prediction is checked against a CUDA allocator's peak")
    from runners.plan import plan_rows

    overrides = [f"data.local_dir={data_dir()}", "protocol=quick", "pruner=wanda", "sparsity=0.7",
                 "eval.datasets=[wikitext2]", f"device={DEVICE}", f"results.dir={tmp_path}", f"cache_dir={cache_dir}"]
    rows, _ = plan_rows(overrides)
    (row,) = [r for r in rows if r["pruner"] == "wanda"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    assert run_job(cfg) == "ok"
    memory = read_manifest(tmp_path / "runs" / row["run_id"])["memory"]
    measured = max(memory["prune"]["peak_cuda_mb"], memory["eval"]["peak_cuda_mb"]) * 2**20
    assert measured == pytest.approx(row["estimate"].gpu_mem, rel=0.25)


def test_a_pruned_tiny_model_saved_on_the_device_reloads_on_the_cpu(tmp_path, cache_dir):
    """save.model=true after a device run: the folder loads with from_pretrained on the CPU with the
    same zeros as the run measured."""
    from transformers import AutoModelForCausalLM

    cfg = _compose(tmp_path, cache_dir, "model=tiny-llama", "pruner=wanda", "sparsity=2:4", "save.model=true")
    _, _, key = resolve(cfg)
    assert run_job(cfg) == "ok"
    manifest = read_manifest(tmp_path / "runs" / run_id(key))
    reloaded = AutoModelForCausalLM.from_pretrained(manifest["saved_model"])
    linears = [m for n, m in reloaded.model.layers.named_modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    assert zeros / sum(m.weight.numel() for m in linears) == manifest["measured_sparsity"] == 0.5
