"""End-to-end multirun sweeps on tiny models: results store, dense baseline, resume after a kill."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from runners.execution.store import load_metrics, read_manifest
from runners.validate import check_command_line
from tests.conftest import ROOT, data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
SWEEP = ["-m", "model=tiny-llama", "pruner=magnitude,wanda", "sparsity=0.5,2:4", "protocol=smoke",
         "eval.datasets=[wikitext2,c4]"]


def _run(results, extra=(), **kw):
    args = [sys.executable, "run.py", *SWEEP, f"results.dir={results}", f"data.local_dir={data_dir()}", *extra]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def _manifests(results):
    return {p.parent.name: read_manifest(p.parent) for p in (results / "runs").glob("*/manifest.json")}


@pytest.mark.subprocess
def test_sweep_killed_midway_resumes_without_duplicates(tmp_path):
    """A sweep killed after its first runs, then re-run, ends with each run once and nothing lost."""
    results = tmp_path / "results"
    proc = _run(results)
    deadline = time.time() + 300
    while time.time() < deadline and len(_manifests(results)) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = _manifests(results)
    assert 1 <= len(first) < 5, "the kill should land midway"
    stamps = {k: (results / "runs" / k / "manifest.json").stat().st_mtime_ns for k in first}

    proc = _run(results)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    final = _manifests(results)
    assert len(final) == 5  # 4 pruned runs + 1 dense baseline
    assert sum(k.split("__")[1] == "dense" for k in final) == 1
    for k, stamp in stamps.items():  # finished runs were skipped, not redone
        assert (results / "runs" / k / "manifest.json").stat().st_mtime_ns == stamp
    metrics = load_metrics(results)
    assert not metrics.duplicated(["run_id", "dataset", "metric"]).any()
    assert len(metrics) == 5 * 2
    assert set(metrics[metrics.dataset == "c4"]["status"]) == {"unavailable"}
    assert (metrics[metrics.dataset == "wikitext2"]["status"] == "ok").all()
    assert "| wanda" in out and "2:4 wikitext2" in out  # the table printed at the end
    assert not list(results.glob("runs/*/.*.tmp*"))  # no half-written files left behind


@pytest.mark.subprocess
def test_run_files_and_provenance(tmp_path):
    """A run writes metrics/layers/blocks/manifest with provenance and exact measured sparsity."""
    results = tmp_path / "r"
    proc = subprocess.run([sys.executable, "run.py", "model=tiny-opt", "pruner=wanda", "sparsity=3:4",
                           "protocol=smoke", "eval.datasets=[wikitext2]", f"results.dir={results}",
                           f"data.local_dir={data_dir()}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (folder,) = [p for p in (results / "runs").iterdir() if "__wanda__" in p.name]
    manifest = read_manifest(folder)
    assert manifest["status"] == "ok" and manifest["measured_sparsity"] == pytest.approx(0.75)
    for key in ("versions", "git", "hardware", "seconds", "memory", "config", "seed"):
        assert manifest[key] is not None, key
    assert manifest["memory"]["prune"]["peak_rss_mb"] > 0 and manifest["seconds"]["prune"] > 0
    layers = pd.read_csv(folder / "layers.csv")
    assert len(layers) == 3 * 6 and (layers["sparsity"] == 0.75).all()
    blocks = pd.read_csv(folder / "blocks.csv")
    assert set(blocks[blocks.metric == "rel_output_error"]["block"]) == {0, 1, 2}
    metrics = pd.read_csv(folder / "metrics.csv")
    for col in ("model", "pruner", "sparsity", "layers", "dataset", "metric", "value", "status"):
        assert col in metrics.columns
    assert metrics.loc[0, "sparsity"] == "3:4" and metrics.loc[0, "status"] == "ok"


def test_layers_beyond_the_model_stop_the_sweep_before_any_run(tmp_path):
    """prune.layers past the model's last block is rejected for the whole sweep before anything runs
    (a run that fails at run time is recorded and the sweep goes on: tests/test_exit_codes.py)."""
    results = tmp_path / "r"
    message = check_command_line(["-m", "model=tiny-opt", "pruner=magnitude", "prune.layers=5-6,0-1", "protocol=smoke",
                                  "eval.datasets=[ptb]", f"results.dir={results}", f"data.local_dir={data_dir()}"])
    assert message is not None and "prune.layers='5-6'" in message and "0-2" in message, message
    assert not (results / "runs").exists()
