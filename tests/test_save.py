"""save.model=true: the pruned model reloads with from_pretrained to the same perplexity and the same zeros."""
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from eval.datasets import eval_tokens
from eval.perplexity import perplexity
from core.families import adapter_for
from runners.cli import CONF
from runners.execution.identity import run_id
from runners.execution.job import resolve, run_job
from runners.execution.store import load_metrics, read_manifest
from runners.validate import validate
from tests.conftest import compose_wanda_smoke, data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")


def _cfg(tmp_path, cache_dir, *overrides):
    return compose_wanda_smoke(tmp_path / "store", cache_dir, *overrides)


@pytest.mark.parametrize("model", ["tiny-opt", "tiny-llama"])
def test_saved_model_reloads_to_the_same_numbers(tmp_path, cache_dir, model):
    cfg = _cfg(tmp_path, cache_dir, f"model={model}", "save.model=true")
    assert run_job(cfg) == "ok"
    folder = tmp_path / "store" / "runs" / run_id(resolve(cfg)[2])
    manifest = read_manifest(folder)
    saved = manifest["saved_model"]
    assert saved == str((folder / "model").resolve())
    assert not list(folder.glob("model.tmp*"))  # the temporary folder was renamed into place
    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved)  # the folder is self-contained
    ids = eval_tokens("wikitext2", tokenizer, str(data_dir()), 64, cache_dir)
    ppl = perplexity(reloaded, ids, 64, "cpu", max_windows=4, batch_size=4)
    metrics = load_metrics(tmp_path / "store")
    stored = float(metrics[metrics.pruner == "wanda"]["value"].iloc[0])
    assert ppl == pytest.approx(stored, rel=1e-5)
    layers = {r["name"]: int(r["zeros"]) for r in _layer_rows(folder)}
    assert len(layers) == sum(len(adapter_for(reloaded).linears(b)) for b in adapter_for(reloaded).blocks(reloaded))
    assert {n: int((reloaded.get_submodule(n).weight == 0).sum()) for n in layers} == layers
    assert sum(layers.values()) >= 0.5 * sum(reloaded.get_submodule(n).weight.numel() for n in layers)


def _layer_rows(folder):
    import csv

    with open(folder / "layers.csv") as f:
        return list(csv.DictReader(f))


def test_stored_run_without_model_is_computed_again_once(tmp_path, cache_dir):
    """A run stored without its model, asked again with save.model=true, is recomputed to produce it; then skipped."""
    assert run_job(_cfg(tmp_path, cache_dir, "model=tiny-opt")) == "ok"
    assert run_job(_cfg(tmp_path, cache_dir, "model=tiny-opt")) == "skipped:ok"
    with_model = _cfg(tmp_path, cache_dir, "model=tiny-opt", "save.model=true")
    assert run_job(with_model) == "ok"
    assert run_job(with_model) == "skipped:ok"
    runs = [p for p in (tmp_path / "store" / "runs").iterdir() if (p / "model" / "config.json").exists()]
    assert len(runs) == 1 and json.loads((runs[0] / "manifest.json").read_text())["saved_model"]


def test_save_dir_and_bad_values(tmp_path, cache_dir):
    target = tmp_path / "models"
    cfg = _cfg(tmp_path, cache_dir, "model=tiny-llama", "save.model=true", f"save.dir={target}")
    assert run_job(cfg) == "ok"
    assert [p.name for p in target.iterdir()] and (next(target.iterdir()) / "config.json").exists()
    problem = validate(["model=tiny-opt", "save.model=sometimes"])
    assert problem and "save.model='sometimes' is not valid: accepted true or false" in problem


@pytest.mark.slow
def test_saved_smollm2_reloads_with_identical_perplexity_and_zeros(tmp_path, cache_dir):
    """Embedded SmolLM2 (from GGUF), magnitude 50%, smoke protocol: the saved folder (tokenizer included)
    reloads to the stored perplexity and the recorded zero counts, and model=hub on that folder (offline) gives the same number."""
    cfg = _cfg(tmp_path, cache_dir, "model=smollm2-135m", "pruner=magnitude", "prune.diagnostics=false",
               "save.model=true")
    assert run_job(cfg) == "ok"
    folder = tmp_path / "store" / "runs" / run_id(resolve(cfg)[2])
    saved = read_manifest(folder)["saved_model"]
    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved, local_files_only=True)
    ids = eval_tokens("wikitext2", tokenizer, str(data_dir()), 64, cache_dir)
    metrics = load_metrics(tmp_path / "store")
    stored = float(metrics[metrics.pruner == "magnitude"]["value"].iloc[0])
    assert perplexity(reloaded, ids, 64, "cpu", max_windows=4, batch_size=4) == pytest.approx(stored, rel=1e-5)
    layers = {r["name"]: int(r["zeros"]) for r in _layer_rows(folder)}
    assert {n: int((reloaded.get_submodule(n).weight == 0).sum()) for n in layers} == layers
    # The same folder as model=hub (offline, local_files_only): its dense run is the pruned model's number.
    hub = tmp_path / "hub"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hub_cfg = compose(config_name="config", overrides=[
            f"data.local_dir={data_dir()}", "protocol=smoke", "pruner=dense", "eval.datasets=[wikitext2]",
            "model=hub", f"model.name_or_path={saved}", "model.dtype=float32", f"results.dir={hub}",
            f"cache_dir={cache_dir}"])
    assert run_job(hub_cfg) == "ok"
    hub_metrics = load_metrics(hub)
    assert float(hub_metrics[hub_metrics.pruner == "dense"]["value"].iloc[0]) == pytest.approx(stored, rel=1e-5)
