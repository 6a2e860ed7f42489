"""Sweeps under Hydra launchers: joblib (several processes), submitit local, Slurm's sbatch script,
the store's claims across processes, and one-line errors for bad launcher settings."""
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from runners import launchers
from runners.cli import CONF
from runners.execution import claims
from runners.execution.store import load_metrics, read_manifest
from tests.conftest import ROOT, broken_model_folder, data_dir

needs_data = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
TINY = ["model=tiny-llama", "protocol=smoke", "eval.datasets=[wikitext2]", "sparsity=0.7"]


def _sweep(results, *args, timeout=300):
    return subprocess.run([sys.executable, "run.py", "-m", *TINY, *args, f"results.dir={results}",
                           f"data.local_dir={data_dir()}"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _jobs(results):
    """The status.json of every job of the (single) sweep in ``results``, in job order."""
    (sweep,) = (results / "hydra").glob("multirun-*")
    folders = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return sweep, [json.loads((f / "status.json").read_text()) for f in folders]


def _runs(results):
    return {p.name: read_manifest(p) for p in (results / "runs").iterdir()}


@pytest.mark.subprocess
@needs_data
def test_joblib_runs_jobs_in_parallel_and_each_run_once(tmp_path):
    """Two jobs run at once in two worker processes; the store holds each run once and the dense
    baseline, which both jobs start, is computed by exactly one of them."""
    results = tmp_path / "r"
    proc = _sweep(results, "pruner=wanda,sparsegpt", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    sweep, jobs = _jobs(results)
    assert [j["status"] for j in jobs] == ["ok", "ok"]
    pids = {j["pid"] for j in jobs}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, not the parent
    assert max(j["start"] for j in jobs) < min(j["end"] for j in jobs)  # their times overlap
    runs = _runs(results)
    assert sorted(k.split("__")[1] for k in runs) == ["dense", "sparsegpt", "wanda"]
    assert all(m["status"] == "ok" for m in runs.values())
    for name, manifest in runs.items():  # written by the job that ran it
        assert manifest["writer"]["pid"] in pids, name
    wanda = next(m for k, m in runs.items() if "__wanda__" in k)
    assert wanda["writer"]["pid"] == jobs[0]["pid"]
    logs = [(sweep / str(i) / "run.log").read_text() for i in range(2)]
    dense = next(k for k in runs if "__dense__" in k)
    assert sum(log.count(f"dense baseline {dense}") for log in logs) == 1  # computed once
    metrics = load_metrics(results)
    assert len(metrics) == 3 and not metrics.duplicated(["run_id", "dataset", "metric"]).any()
    # progress counts finished jobs across processes; the parent prints one line per job, then the table
    assert "2/2 done" in out and "1/2 done" in out
    assert "run 1/2: ok" in proc.stdout and "run 2/2: ok" in proc.stdout
    assert "| wanda" in proc.stdout and "| sparsegpt" in proc.stdout and "| dense" in proc.stdout


@pytest.mark.subprocess
@needs_data
def test_submitit_local_end_to_end_and_a_failing_job_is_recorded(tmp_path):
    """Through submitit's local executor: the tiny-llama run and its baseline are stored, a job whose
    model cannot load is stored as error, the sweep goes on and exits 1 after the table."""
    empty = broken_model_folder(tmp_path / "not-a-model")
    results = tmp_path / "r"
    proc = _sweep(results, "model=tiny-llama,hub", f"model.name_or_path={empty}", "pruner=wanda",
                  "hydra/launcher=submitit_local")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    sweep, jobs = _jobs(results)
    assert [j["status"] for j in jobs] == ["ok", "error"]
    assert os.getpid() not in {j["pid"] for j in jobs}
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # both ran as submitit jobs
    runs = _runs(results)
    statuses = sorted((k.split("__")[1], m["status"]) for k, m in runs.items())
    assert statuses == [("dense", "ok"), ("wanda", "error"), ("wanda", "ok")]
    failed = next(m for m in runs.values() if m["status"] == "error")
    assert failed["run_key"]["model"]["source"] == "hub" and failed["error"]
    assert "run 1/2: ok" in proc.stdout and "run 2/2: error" in proc.stdout
    assert "| wanda" in proc.stdout and "1 of 2 runs failed" in proc.stdout


@pytest.mark.subprocess
@needs_data
def test_ctrl_c_under_joblib_stops_the_workers_and_prints_the_table(tmp_path):
    """SIGINT to the whole process group (as Ctrl-C sends it): the table of what finished, exit 130,
    and no worker process left computing (joblib's workers ignore SIGINT: run.py stops them)."""
    args = [sys.executable, "run.py", "-m", *TINY[:3], "pruner=magnitude,sparsellm", "sparsity=0.5,0.6,0.7",
            "calib.nsamples=32", "calib.seqlen=256", "hydra/launcher=joblib", f"results.dir={tmp_path}",
            f"data.local_dir={data_dir()}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:  # interrupt once a job has ended (its run is in the store), others in flight
        seen.append(line)
        if "end: ok" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=120)  # returns only when no worker holds the output pipe
    finally:
        table = subprocess.run(["ps", "-o", "pid=,stat=", "-s", str(proc.pid)], capture_output=True, text=True).stdout
        left = [pid for pid, state in (row.split() for row in table.splitlines()) if not state.startswith("Z")]
        for pid in left:  # (exited ones not yet reaped by init are zombies: not running)
            os.kill(int(pid), signal.SIGKILL)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out[-3000:]
    assert not left, left
    assert "interrupted" in out and "| magnitude" in out


@pytest.mark.subprocess
@needs_data
def test_a_worker_that_dies_still_ends_with_the_table(tmp_path):
    """joblib workers killed mid-run (as the OOM killer would): exit 1 with the launcher's error,
    then the table of what is stored; a killed run is left incomplete, not recorded as done."""
    args = [sys.executable, "run.py", "-m", *TINY[:3], "pruner=sparsellm", "sparsity=0.5,0.6", "calib.nsamples=32",
            "calib.seqlen=256", "hydra/launcher=joblib", f"results.dir={tmp_path}", f"data.local_dir={data_dir()}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:  # a job is pruning (its run claimed, the dense baseline stored)
        seen.append(line)
        if "block 0 pruned" in line:
            break
    workers = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")
               if "LokyProcess" in p.read_text(errors="replace")
               and (p.parent / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(proc.pid)]
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=300)
    out = "".join(seen) + rest
    assert proc.returncode == 1, out[-3000:]
    assert "TerminatedWorkerError" in out and "the sweep stopped early" in out
    from runners.reporting.report import summarize

    assert summarize(tmp_path).strip() in out.split("the sweep stopped early")[1]  # then what is stored
    manifests = {p.name: read_manifest(p) for p in (tmp_path / "runs").iterdir()}
    assert [m["status"] for k, m in manifests.items() if "__dense__" in k] == ["ok"]
    # the killed run: incomplete (not done), computed by the next invocation
    assert any(m is None for k, m in manifests.items() if "__sparsellm__" in k)


def _fake_slurm(tmp_path, monkeypatch):
    """``srun`` and ``sbatch`` on PATH (submitit checks for srun before it writes anything)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "sbatch"):
        tool = bin_dir / name
        tool.write_text("#!/bin/sh\nexit 1\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_slurm_config_composes_into_the_sbatch_script(tmp_path, monkeypatch):
    """hydra/launcher=submitit_slurm composes with one GPU per job by default, and partition, time
    and memory reach the #SBATCH lines submitit would submit (captured before submission)."""
    import submitit
    from hydra.utils import instantiate

    overrides = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=120",
                 "hydra.launcher.mem_gb=80", f"results.dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        local = compose(config_name="config", overrides=["hydra/launcher=submitit_local"], return_hydra_config=True)
        joblib = compose(config_name="config", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    slurm = cfg.hydra.launcher
    assert (slurm.partition, slurm.timeout_min, slurm.mem_gb) == ("gpu", 120, 80)
    assert (slurm.gpus_per_node, slurm.tasks_per_node, slurm.nodes) == (1, 1, 1)
    assert slurm.cpus_per_task == launchers.PROJECT_DEFAULTS["submitit_slurm"]["cpus_per_task"]
    assert (local.hydra.launcher.gpus_per_node, local.hydra.launcher.timeout_min) == (1, 240)
    assert joblib.hydra.launcher.n_jobs == 2

    _fake_slurm(tmp_path, monkeypatch)
    assert launchers.check_launcher(overrides) is None  # valid once Slurm is there
    scripts = []

    class Captured(Exception):
        pass

    def capture(executor, fn, *args):
        scripts.append(executor._executor._make_submission_file_text("COMMAND", "uid"))
        raise Captured

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    cfg.hydra.sweep.dir = str(tmp_path / "sweep")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    with pytest.raises(Captured):
        launcher.launch([["pruner=wanda"], ["pruner=sparsegpt"]], initial_job_idx=0)
    lines = set(scripts[0].splitlines())
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=120", "#SBATCH --mem=80GB", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1", "#SBATCH --cpus-per-task=8"):
        assert line in lines, (line, scripts[0])
    readme = (ROOT / "README.md").read_text()
    assert "## Run on a cluster" in readme
    assert "hydra/launcher=submitit_slurm hydra.launcher.partition=" in readme


def test_bad_launcher_settings_are_one_line_errors(monkeypatch):
    """Each bad launcher value is refused in one line naming it and what is accepted."""
    check = launchers.check_launcher
    monkeypatch.setenv("PATH", "/nonexistent")  # no Slurm here
    cases = {
        ("hydra/launcher=slurm",): "hydra/launcher='slurm' is not valid: accepted basic, joblib, submitit_local",
        ("hydra/launcher=joblib", "hydra.launcher.n_jobs=0"): "hydra.launcher.n_jobs=0 is not valid",
        ("hydra/launcher=joblib", "hydra.launcher.n_jobs=two"): "accepted a whole number",
        ("hydra/launcher=submitit_slurm", "hydra.launcher.partiton=gpu"): "is not a setting of hydra/launcher=",
        ("hydra/launcher=submitit_slurm", "hydra.launcher.mem_gb=0"): "hydra.launcher.mem_gb=0 is not valid",
        ("hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=1.5"): "accepted a whole number",
        ("hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=4"): "accepted 1",
        ("hydra.launcher.n_jobs=2",): "needs a launcher",
        ("hydra/launcher=submitit_slurm",): "needs Slurm's sbatch",
    }
    for args, needle in cases.items():
        message = check(list(args))
        assert message and needle in message and "\n" not in message, (args, message)
    assert check(["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"]) is None
    assert check(["hydra/launcher=basic"]) is None and check(["pruner=wanda"]) is None
    monkeypatch.setitem(launchers.PLUGINS, "joblib", ("no_such_plugin.config", "Conf", "hydra-joblib-launcher"))
    assert "needs the hydra-joblib-launcher package" in check(["hydra/launcher=joblib"])


def test_run_py_refuses_a_bad_launcher_setting_before_starting(tmp_path):
    """What run.py checks before Hydra starts (its one stderr line, exit code 2:
    tests/test_validation.py) is the launcher setting's line; no job starts."""
    from runners.validate import check_command_line

    message = check_command_line(["-m", *TINY, "pruner=wanda", "hydra/launcher=joblib", "hydra.launcher.n_jobs=zero",
                                  f"results.dir={tmp_path}"])
    assert message == "hydra.launcher.n_jobs='zero' is not valid for hydra/launcher=joblib: accepted a whole number"
    assert not (tmp_path / "runs").exists()


def test_claim_link_whose_reply_was_lost_still_counts(tmp_path, monkeypatch):
    """NFS: the link succeeded but the retried call says EEXIST; the link count shows the claim is ours."""
    real_link = os.link

    def lost_reply(src, dst):
        real_link(src, dst)
        raise FileExistsError(17, "File exists")

    monkeypatch.setattr(claims.os, "link", lost_reply)
    claim = claims.acquire(tmp_path / "run")
    assert claim is not None and claims.read_claim(tmp_path / "run")["token"] == claim.token
    monkeypatch.setattr(claims.os, "link", real_link)
    assert claims.acquire(tmp_path / "run") is None  # a real EEXIST: held by someone else
    claim.release()
    assert sorted(p.name for p in Path(tmp_path / "run").iterdir()) == []
