"""Claims: one job per run across concurrent sweeps; dead or silent holders are taken over."""
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from runners.execution import claims
from runners.execution.store import check_run, read_manifest
from tests.conftest import ROOT, data_dir

DEAD_PID = 4194305  # above the largest pid_max Linux allows (2**22): no such process can exist
SWEEP = ["-m", "model=tiny-llama", "pruner=magnitude,wanda", "sparsity=0.5,2:4", "protocol=smoke",
         "eval.datasets=[wikitext2]"]
needs_data = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")


def _plant(folder, host, pid, age=0.0):
    """A claim file as another job would have left it, its heartbeat ``age`` seconds old."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / claims.CLAIM_NAME
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "theirs", "started": "earlier"}))
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_claim_is_exclusive_and_released(tmp_path):
    """A claim records host, pid and start; a second claim on a held run fails; release deletes it."""
    claim = claims.acquire(tmp_path / "run")
    assert claim is not None
    held = claims.read_claim(tmp_path / "run")
    assert held["host"] == claims.hostname() and held["pid"] == os.getpid() and held["started"]
    assert claims.acquire(tmp_path / "run") is None  # held by a live process (this one)
    claim.release()
    assert not (tmp_path / "run" / claims.CLAIM_NAME).exists()
    again = claims.acquire(tmp_path / "run")
    assert again is not None
    again.release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # no temporary files left


def test_dead_pid_on_this_host_is_taken_over(tmp_path):
    assert not claims.pid_alive(DEAD_PID)
    _plant(tmp_path / "run", claims.hostname(), DEAD_PID)
    assert claims.is_stale(claims.read_claim(tmp_path / "run"))
    claim = claims.acquire(tmp_path / "run")
    assert claim is not None and claims.read_claim(tmp_path / "run")["pid"] == os.getpid()
    claim.release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # the stale file set aside is gone too


def test_other_host_is_trusted_until_its_heartbeat_is_old(tmp_path):
    """Another host's pid means nothing here: its claim stands while the heartbeat is fresh."""
    path = _plant(tmp_path / "run", "some-other-node", DEAD_PID, age=claims.STALE_SECONDS / 2)
    assert claims.acquire(tmp_path / "run") is None
    old = time.time() - claims.STALE_SECONDS - 5
    os.utime(path, (old, old))
    claim = claims.acquire(tmp_path / "run")
    assert claim is not None and claims.read_claim(tmp_path / "run")["host"] == claims.hostname()
    claim.release()


def test_live_pid_on_this_host_is_not_taken_over(tmp_path):
    _plant(tmp_path / "run", claims.hostname(), os.getppid(), age=claims.STALE_SECONDS / 2)
    assert claims.acquire(tmp_path / "run") is None


def test_stale_claim_left_on_a_done_run_is_removed(tmp_path):
    """A job killed between writing its run and releasing the claim leaves a stale claim: removed, a live one kept."""
    _plant(tmp_path / "dead", claims.hostname(), DEAD_PID)
    _plant(tmp_path / "live", claims.hostname(), os.getppid())
    claims.remove_if_stale(tmp_path / "dead")
    claims.remove_if_stale(tmp_path / "live")
    assert sorted(p.name for p in (tmp_path / "dead").iterdir()) == []
    assert (tmp_path / "live" / claims.CLAIM_NAME).exists()


def test_heartbeat_keeps_the_claim_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "HEARTBEAT_SECONDS", 0.05)
    claim = claims.acquire(tmp_path / "run")
    old = time.time() - 3600
    os.utime(claim.path, (old, old))
    time.sleep(0.5)
    assert claims.read_claim(tmp_path / "run")["age"] < 60
    claim.release()
    time.sleep(0.2)
    assert not claim.path.exists()  # a stopped heartbeat never brings the file back


def _contend(folder, start, hold, results):
    """Child process: try to claim at the same moment as the others; keep a won claim until all tried."""
    start.wait()
    claim = claims.acquire(folder)
    results.put(claim is not None)
    hold.wait()
    if claim is not None:
        claim.release()


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_racing_takers_exactly_one_wins(tmp_path, stale):
    """Six processes claiming one run at once (free, or held by a dead process): exactly one wins."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(4):
        folder = tmp_path / f"run{attempt}"
        if stale:
            _plant(folder, claims.hostname(), DEAD_PID)
        start, hold, results = ctx.Barrier(6), ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(folder, start, hold, results)) for _ in range(6)]
        for p in procs:
            p.start()
        wins = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert sum(wins) == 1, wins
        assert not (folder / claims.CLAIM_NAME).exists()


def _sweep(results):
    args = [sys.executable, "run.py", *SWEEP, f"results.dir={results}", f"data.local_dir={data_dir()}"]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _computed(out: str) -> list[str]:
    """Run ids this sweep's output says it computed (a pruned run's last line, or the dense baseline)."""
    return (re.findall(r"- run (\S+): (?:ok|nan|error|oom|unavailable)$", out, re.M)
            + re.findall(r"- dense baseline (\S+)$", out, re.M))


@pytest.mark.subprocess
@needs_data
def test_two_identical_sweeps_at_once_compute_each_run_once(tmp_path):
    results = tmp_path / "results"
    procs = [_sweep(results), _sweep(results)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    folders = sorted((results / "runs").iterdir())
    assert len(folders) == 5 and sum("__dense__" in f.name for f in folders) == 1  # 4 pruned runs + dense
    assert all(check_run(f)[0] == "complete" for f in folders)
    computed = _computed(outs[0]) + _computed(outs[1])
    assert sorted(computed) == sorted(f.name for f in folders), computed  # every run exactly once
    writers = {f.name: read_manifest(f)["writer"]["pid"] for f in folders}
    for pid, out in zip((procs[0].pid, procs[1].pid), outs):  # the manifest names the sweep that computed it
        assert {r for r, w in writers.items() if w == pid} == set(_computed(out))
    assert not list(results.glob("runs/*/.claim*")) and not list(results.glob("runs/*/.*.tmp*"))
    logs = list((results / "hydra").glob("multirun-*"))  # each sweep logs into its own folder
    assert len(logs) == 2 and {p.name.rsplit("-", 1)[1] for p in logs} == {str(procs[0].pid), str(procs[1].pid)}


@pytest.mark.subprocess
@needs_data
def test_sweep_killed_holding_a_claim_does_not_block_the_next(tmp_path):
    results = tmp_path / "results"
    proc = _sweep(results)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(results.glob("runs/*/.claim")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    held = list(results.glob("runs/*/.claim"))
    assert held, "the kill should land while a run is claimed"
    check = subprocess.run([sys.executable, "-m", "runners.execution.store", "check", f"results.dir={results}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and all(f"stale      {p.parent.name}:" in check.stdout for p in held), check.stdout

    proc = _sweep(results)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    for p in held:
        assert f"run {p.parent.name}: taking over a stale claim" in out
    folders = sorted((results / "runs").iterdir())
    assert len(folders) == 5 and all(check_run(f)[0] == "complete" for f in folders)
    assert not list(results.glob("runs/*/.claim*"))
    check = subprocess.run([sys.executable, "-m", "runners.execution.store", "check", f"results.dir={results}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout
