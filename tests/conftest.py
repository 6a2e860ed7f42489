"""Shared fixtures: the offline data folder, tiny random models, and the embedded SmolLM2.

Test tiers (markers in pyproject.toml; `make test-fast` deselects `slow` and `subprocess`):

* ``slow``: loads the real SmolLM2-135M. A test that takes the ``smollm2``/``fresh_smollm2``
  fixtures is marked ``slow`` at collection whether or not it says so.
* ``subprocess``: starts a Python child process (run.py, ``python -m ...``, pip, launcher
  workers, a notebook kernel), itself or through a fixture. An unmarked test that starts one
  fails (``_guarded_popen``), so the fast tier stays in-process.

Tests other than ``slow`` ones, and the child processes, run torch on one thread
(``_one_thread_unless_slow``).
"""
from __future__ import annotations

import os
import subprocess
import sys
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


def tiny_spec(name: str) -> ModelSpec:
    """The ``model=<name>`` preset as run.py composes it (``conf/model/<name>.yaml``), as a ModelSpec."""
    from omegaconf import OmegaConf

    return ModelSpec(**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"), resolve=True))


# The tiny random presets, read from conf/model/ (never re-declared here).
TINY = {name: tiny_spec(name) for name in ("tiny-opt", "tiny-llama")}


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


@pytest.fixture(autouse=True)
def _one_thread_unless_slow(request):
    """Every test but the SmolLM2 ones (``slow``) runs torch on one thread: the tiny models' small
    matrices gain nothing from a second thread, and on a shared 2-core machine two spinning
    OpenMP threads made tests/test_second_order.py 11 times slower (75 s against 6.5 s, load 4.5)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMOLLM2_FIXTURES = {"smollm2", "fresh_smollm2"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items):
    """A test that loads SmolLM2 through its fixtures is ``slow``."""
    for item in items:
        if SMOLLM2_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def _is_python(args) -> bool:
    """Does a Popen argument list start a Python interpreter (this one or another ``python*``)?"""
    first = args if isinstance(args, (str, bytes, os.PathLike)) else (list(args) or [""])[0]
    first = os.fsdecode(first).strip().split(" ")[0]
    return bool(first) and (first == sys.executable or Path(first).name.startswith("python"))


_RUNNING: dict = {"item": None}  # the test being set up, run or torn down (module fixtures included)
_POPEN_INIT = subprocess.Popen.__init__


def _guarded_popen(self, args, *rest, **kwargs):
    """Popen that refuses a Python child for a test not marked ``subprocess``."""
    item = _RUNNING["item"]
    if item is not None and not item.get_closest_marker("subprocess") and _is_python(args):
        raise AssertionError(f"{item.nodeid} starts a Python subprocess ({args!r}), itself or through a "
                             "fixture, but is not marked @pytest.mark.subprocess (tests/conftest.py)")
    _POPEN_INIT(self, args, *rest, **kwargs)


def pytest_configure(config):
    subprocess.Popen.__init__ = _guarded_popen
    # The child processes of the `subprocess` tests (tiny models only) run on one thread too.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_unconfigure(config):
    subprocess.Popen.__init__ = _POPEN_INIT


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Which test is running, for the guard above (its fixtures' setup and teardown included)."""
    _RUNNING["item"] = item
    try:
        yield
    finally:
        _RUNNING["item"] = None
