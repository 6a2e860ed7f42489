"""Exit codes mean something: 0 all ok or skipped as done, 1 when any run failed (after the rest ran), 2 bad settings."""
import subprocess
import sys

import pytest

from runners.callbacks import exit_code
from runners.execution.store import read_manifest
from tests.conftest import ROOT, broken_model_folder, data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "run.py", *args, "protocol=smoke", "eval.datasets=[wikitext2]",
                           f"data.local_dir={data_dir()}"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_exit_code_rule():
    """Failed statuses make 1; ok and skipped-as-done runs make 0."""
    assert exit_code(["ok", "ok"]) == 0 and exit_code(["ok", "skipped:error"]) == 0
    for bad in ("error", "oom", "nan", "unavailable"):
        assert exit_code(["ok", bad]) == 1


@pytest.mark.subprocess
def test_failing_run_makes_the_sweep_exit_1_after_the_others(tmp_path):
    """A sweep whose first model cannot load: the other run and its dense baseline still finish, then exit 1."""
    empty = broken_model_folder(tmp_path / "not-a-model")
    results = tmp_path / "r"
    args = ("-m", "model=hub,tiny-opt", f"model.name_or_path={empty}", "pruner=magnitude", "sparsity=0.5",
            f"results.dir={results}")
    proc = _run(*args)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    manifests = [read_manifest(p) for p in (results / "runs").iterdir()]
    statuses = sorted(m["status"] for m in manifests)
    assert statuses == ["error", "ok", "ok"]  # the hub run failed; tiny-opt magnitude and its dense baseline ran
    failed = [m for m in manifests if m["status"] == "error"][0]
    assert failed["run_key"]["model"]["source"] == "hub"
    assert "1 of 2 runs failed" in proc.stdout


@pytest.mark.subprocess
def test_single_run_ok_exits_0_and_failure_exits_1(tmp_path):
    """Without -m: 0 for a good run, 1 for a run that fails."""
    good = _run("model=tiny-llama", "pruner=magnitude", f"results.dir={tmp_path / 'a'}")
    assert good.returncode == 0, good.stderr[-2000:]
    empty = broken_model_folder(tmp_path / "empty")
    bad = _run("model=hub", f"model.name_or_path={empty}", "pruner=magnitude", f"results.dir={tmp_path / 'b'}")
    assert bad.returncode == 1, bad.stderr[-2000:]
