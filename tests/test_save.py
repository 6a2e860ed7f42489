"""save.model=true: the pruned model reloads with from_pretrained to the same perplexity and the same zeros."""
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from eval.datasets import eval_tokens
from eval.perplexity import perplexity
from runners.adapters import adapter_for
from runners.cli import CONF
from runners.identity import run_id
from runners.job import resolve, run_job
from runners.store import load_metrics, read_manifest
from runners.validate import validate
from tests.conftest import data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")


def _cfg(tmp_path, cache_dir, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"data.local_dir={data_dir()}", "protocol=smoke", "pruner=wanda", "sparsity=0.5",
            "eval.datasets=[wikitext2]", f"results.dir={tmp_path / 'store'}", f"cache_dir={cache_dir}", *overrides])


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
