"""model.dtype=bfloat16 on the CPU: every pruner runs end to end with finite perplexity and exact sparsity."""
import math

import pytest
from hydra import compose, initialize_config_dir

from runners.cli import CONF
from runners.execution.identity import run_id
from runners.execution.job import resolve, run_job
from runners.execution.store import load_metrics, read_manifest
from tests.conftest import data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")


@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt", "sparsellm", "sparsellm_released"])
def test_bfloat16_run_of_every_pruner(tmp_path, cache_dir, pruner):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"data.local_dir={data_dir()}", "model=tiny-llama", "model.dtype=bfloat16", "protocol=smoke",
            f"pruner={pruner}", "sparsity=0.5", "eval.datasets=[wikitext2]", f"results.dir={tmp_path}",
            f"cache_dir={cache_dir}"])
    run, _, key = resolve(cfg)
    assert key["model"]["dtype"] == "bfloat16" and run.dtype == "bfloat16"
    assert run_job(cfg) == "ok"
    manifest = read_manifest(tmp_path / "runs" / run_id(key))
    assert manifest["measured_sparsity"] == 0.5
    metrics = load_metrics(tmp_path)
    values = {p: float(metrics[metrics.pruner == p]["value"].iloc[0]) for p in set(metrics.pruner)}
    assert set(values) == {"dense", run.label(resolve(cfg)[1])} and all(math.isfinite(v) for v in values.values())
    assert set(metrics.dtype) == {"bfloat16"}  # metrics.csv shows the resolved dtype


def test_statistics_stay_float32_for_bfloat16_inputs():
    """Wanda's input norms and SparseGPT's Hessian accumulate bfloat16 activations in float32,
    and agree with the float32 closed form computed from the same (bf16-rounded) inputs."""
    import torch

    from pruners.sparsegpt import Hessian
    from pruners.wanda import InputNorms

    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    norms, hessian = InputNorms(8), Hessian(8)
    norms.add(x)
    hessian.add(x)
    flat = x.reshape(-1, 8).float()
    assert norms.norms().dtype == torch.float32 and hessian.matrix.dtype == torch.float32
    assert torch.allclose(norms.norms(), flat.pow(2).mean(0).sqrt(), rtol=1e-5)
    assert torch.allclose(hessian.matrix, 2 * flat.t() @ flat / flat.shape[0], rtol=1e-5, atol=1e-6)
