"""model=hub model.name_or_path=<folder>: a local Hugging Face folder loads offline to the numbers of the tiny path,
and its content, not its place, identifies its runs."""
import shutil

import pytest
import torch

from runners.execution.identity import run_id
from runners.execution.job import resolve, run_job
from runners.execution.models import load_model
from runners.execution.store import load_metrics
from tests.conftest import TINY, compose_wanda_smoke, data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")


def _cfg(results, cache_dir, *overrides):
    return compose_wanda_smoke(results, cache_dir, *overrides)


def _write_folder(name, folder, cache_dir):
    """The tiny model exactly as the tiny path builds it (seed 0), with its tokenizer, via save_pretrained."""
    model, tokenizer = load_model(TINY[name], device="cpu", cache_dir=cache_dir, local_dir=str(data_dir()), seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def _values(results):
    metrics = load_metrics(results)
    return {p: float(metrics[metrics.pruner == p]["value"].iloc[0]) for p in ("dense", "wanda")}


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_local_folder_gives_the_tiny_numbers(tmp_path, cache_dir, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / f"{name}-folder"
    _write_folder(name, folder, cache_dir)
    assert run_job(_cfg(tmp_path / "tiny", cache_dir, f"model={name}")) == "ok"
    assert run_job(_cfg(tmp_path / "hub", cache_dir, "model=hub", f"model.name_or_path={folder}",
                        "model.dtype=float32")) == "ok"
    tiny, hub = _values(tmp_path / "tiny"), _values(tmp_path / "hub")
    assert hub["wanda"] == pytest.approx(tiny["wanda"], rel=1e-5)
    assert hub["dense"] == pytest.approx(tiny["dense"], rel=1e-5)
    assert hub["dense"] < hub["wanda"]


def test_folder_identity_is_its_content(tmp_path, cache_dir):
    """A copy elsewhere (same name) has the same run id; other weights under the same path another."""
    first, second = tmp_path / "a" / "m", tmp_path / "b" / "m"
    model = _write_folder("tiny-opt", first, cache_dir)
    shutil.copytree(first, second)

    def rid(folder):
        return run_id(resolve(_cfg(tmp_path / "s", cache_dir, "model=hub", f"model.name_or_path={folder}"))[2])

    assert rid(first) == rid(second)
    with torch.no_grad():
        model.model.decoder.layers[0].fc1.weight.mul_(2.0)
    model.save_pretrained(second)
    assert rid(second) != rid(first)
