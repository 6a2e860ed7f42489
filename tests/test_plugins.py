"""Pruners from installed packages (entry-point group ``llm_prune_bench.pruners``): the worked
example ``examples/llm-prune-random`` installed with pip, run in a sweep, and a broken plugin's
one-line error."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from runners.reporting.labels import sparsity_label
from runners.execution.plugins import GROUP, pruner_entry_points
from runners.execution.store import load_metrics
from runners.validate import check_command_line
from tests.conftest import ROOT, data_dir

EXAMPLE = ROOT / "examples" / "llm-prune-random"


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory):
    """A ``sys.path`` entry where ``llm-prune-random`` is pip-installed (None: it already is, as
    ``make install`` does it). ``pip install --target`` leaves the environment itself untouched."""
    if "random" in pruner_entry_points():
        yield None
        return
    target = tmp_path_factory.mktemp("plugin")
    build = tmp_path_factory.mktemp("plugin-src")
    subprocess.run(["cp", "-r", str(EXAMPLE), str(build)], check=True)  # the build writes beside its sources
    # the environment's setuptools when it has one (no index needed), else pip's isolated build
    offline = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *offline,
                    "--target", str(target), str(build / EXAMPLE.name)], check=True)
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))


def _env(extra: Path | None) -> dict:
    env = dict(os.environ)
    if extra is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_installed_plugin_is_a_pruner_choice(plugin_path):
    assert "random" in pruner_entry_points()
    assert check_command_line(["model=tiny-llama", "pruner=random", "sparsity=2:4"]) is None
    problem = check_command_line(["model=tiny-llama", "pruner=randomm"])
    assert "pruner='randomm' is not valid" in problem and "random" in problem.split("accepted")[1]
    # its settings are checked against its builder like a built-in's
    assert "pruner.seed=-1" in check_command_line(["model=tiny-llama", "pruner=random", "pruner.seed=-1"])


@pytest.mark.subprocess
@pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
def test_sweep_with_the_plugin(plugin_path, tmp_path):
    """The acceptance sweep: random and wanda at 0.5 and 0.7 on tiny-llama, with no repo edit."""
    results = tmp_path / "results"
    out = subprocess.run([sys.executable, "run.py", "-m", "pruner=random,wanda", "sparsity=0.5,0.7",
                          "protocol=smoke", "model=tiny-llama", f"results.dir={results}",
                          f"data.local_dir={data_dir()}", "eval.datasets=[wikitext2]"],
                         cwd=ROOT, env=_env(plugin_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = load_metrics(results)
    ok = metrics[metrics.status == "ok"]
    assert sorted(set(zip(ok.pruner, ok.sparsity.map(sparsity_label)))) == [
        ("dense", "0"), ("random", "0.5"), ("random", "0.7"), ("wanda", "0.5"), ("wanda", "0.7")]
    for folder in (results / "runs").glob("*__random__*"):
        layers = pd.read_csv(folder / "layers.csv")
        ratio = float(folder.name.split("__")[2])
        assert (layers.zeros == (layers.numel * ratio).astype(int)).all()  # exact per matrix
    assert "| random" in out.stdout


@pytest.mark.subprocess
def test_the_example_package_tests(plugin_path):
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                         cwd=ROOT, env=_env(plugin_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "3 passed" in out.stdout


def test_a_broken_plugin_fails_in_one_line(tmp_path):
    """An entry point whose module is missing: the command line is refused before anything runs, naming it."""
    dist = tmp_path / "llm_prune_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llm-prune-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\nbroken = llm_prune_broken_missing:build\n")
    sys.path.insert(0, str(tmp_path))
    try:
        problem = check_command_line(["model=tiny-llama", "pruner=broken"])
    finally:
        sys.path.remove(str(tmp_path))
    assert problem is not None and "\n" not in problem
    assert "pruner='broken'" in problem and "llm_prune_broken_missing:build" in problem
    assert "failed to load: ModuleNotFoundError" in problem  # run.py prints it and exits 2 (tests/test_validation.py)
