"""Shared fixtures: the offline data folder, tiny random models, and the embedded SmolLM2."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from runners.execution.models import ModelSpec, load_model

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path | None:
    """The local data copies: $LLM_PRUNE_DATA, else ../shared/data beside the checkout."""
    for candidate in (os.environ.get("LLM_PRUNE_DATA"), ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "README.md").exists():
            return Path(candidate)
    return None


def compose_wanda_smoke(results, cache_dir, *overrides):
    """Config of a Wanda 0.5 smoke run on WikiText-2 into ``results``; later overrides win."""
    from hydra import compose, initialize_config_dir

    from runners.cli import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"data.local_dir={data_dir()}", "protocol=smoke", "pruner=wanda", "sparsity=0.5",
            "eval.datasets=[wikitext2]", f"results.dir={results}", f"cache_dir={cache_dir}", *overrides])


@pytest.fixture(scope="session")
def local_data() -> Path:
    """Path of the offline data folder (tests that need it skip when it is absent)."""
    found = data_dir()
    if found is None:
        pytest.skip("no offline data folder (set LLM_PRUNE_DATA or put shared/data beside the checkout)")
    return found


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """The harness cache (converted SmolLM2, tokenized data): the user's, shared across runs."""
    return os.environ.get("LLM_PRUNE_CACHE", str(Path.home() / ".cache" / "llm-prune-bench"))


TINY = {
    "tiny-opt": ModelSpec(name="tiny-opt", source="tiny", family="opt", dtype="float32",
                          tiny={"hidden_size": 64, "num_layers": 3, "ffn_dim": 256, "heads": 4}),
    "tiny-llama": ModelSpec(name="tiny-llama", source="tiny", family="llama", dtype="float32",
                            tiny={"hidden_size": 64, "num_layers": 3, "ffn_dim": 128, "heads": 4, "kv_heads": 2}),
}


def broken_model_folder(folder: Path) -> Path:
    """A folder that passes validation as a model folder (a tiny OPT config.json and a weights
    file) but cannot load (neither its tokenizer nor its weights file can be read): a run on it
    ends ``error``."""
    import json

    from core.families import family_named

    folder.mkdir(parents=True, exist_ok=True)
    config = family_named("opt").tiny_config(dict(TINY["tiny-opt"].tiny)).to_dict()
    (folder / "config.json").write_text(json.dumps(config, default=str))
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    (folder / "tokenizer.json").write_text("not a tokenizer")
    return folder


def tiny_model(name: str, seed: int = 0):
    """A fresh seeded tiny model (no tokenizer)."""
    from runners.execution.models import _tiny_model

    return _tiny_model(TINY[name], seed).eval()


@pytest.fixture(scope="session")
def smollm2(cache_dir, local_data):
    """(model, tokenizer) of the embedded SmolLM2-135M, float32 on the CPU; do not modify."""
    spec = ModelSpec(name="smollm2-135m", source="embedded", family="llama", dtype="float32")
    return load_model(spec, device="cpu", cache_dir=cache_dir, local_dir=str(local_data))


@pytest.fixture
def fresh_smollm2(smollm2):
    """A deep copy of SmolLM2 that a test may prune."""
    import copy

    return copy.deepcopy(smollm2[0]), smollm2[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices run fastest (and most reproducibly) on one thread; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
