"""A store that checks itself: damaged runs are named, skipped by readers and recomputed; writes are atomic."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from runners.execution import claims, store
from runners.reporting.report import summarize
from tests.conftest import ROOT, data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
SPARSITIES = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "2:4"]
SWEEP = ["-m", "model=tiny-llama", "pruner=magnitude", f"sparsity={','.join(SPARSITIES)}", "protocol=smoke",
         "eval.datasets=[wikitext2]", "prune.diagnostics=false"]  # no calibration pass: nothing here reads it
DEAD_PID = 4194305  # above the largest pid_max Linux allows: no such process


def _py(*args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _sweep(results, *extra):
    return _py("run.py", *SWEEP, f"results.dir={results}", f"data.local_dir={data_dir()}", *extra)


def _store(results, sparsities):
    """Magnitude runs at ``sparsities`` and their dense baseline, written in this process by the
    run_job that each of run.py's jobs calls, with the settings of ``SWEEP`` (same run ids)."""
    from runners.execution.job import run_job

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        base = compose(config_name="config", overrides=[*SWEEP[1:3], *SWEEP[4:], f"results.dir={results}",
                                                        f"data.local_dir={data_dir()}"])
    for sparsity in sparsities:
        cfg = base.copy()
        cfg.sparsity = sparsity if ":" in sparsity else float(sparsity)  # as the command line gives it
        assert run_job(cfg) == "ok", sparsity
    return results


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished store: 2 magnitude runs and the dense baseline (copy it before damaging it)."""
    return _store(tmp_path_factory.mktemp("finished") / "results", SPARSITIES[:2])


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A finished store of the whole SWEEP: 10 magnitude runs and the dense baseline."""
    return _store(tmp_path_factory.mktemp("finished-sweep") / "results", SPARSITIES)


def _copy(finished, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(finished, results)
    return results, sorted(p for p in (results / "runs").iterdir())


def _rewrite_manifest(folder, **changes):
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **changes}))


def _change_a_value(path):
    """The same table with one perplexity changed: still a valid CSV, no longer the bytes recorded."""
    frame = pd.read_csv(path)
    frame.loc[0, "value"] = 1.0
    frame.to_csv(path, index=False)


DAMAGE = {  # name -> (damage to one run folder, the file the one-line reason must name); the first 10: end to end
    "metrics truncated": (lambda f: (f / "metrics.csv").write_bytes((f / "metrics.csv").read_bytes()[:-12]),
                          "metrics.csv"),
    "metrics empty": (lambda f: (f / "metrics.csv").write_bytes(b""), "metrics.csv"),
    "metrics binary": (lambda f: (f / "metrics.csv").write_bytes(b"\x89PNG\x00\xff\xfe" * 20), "metrics.csv"),
    "metrics wrong shape": (lambda f: (f / "metrics.csv").write_text("a,b\n1,2\n"), "metrics.csv"),
    "metrics changed": (lambda f: _change_a_value(f / "metrics.csv"), "metrics.csv"),
    "manifest truncated": (lambda f: (f / "manifest.json").write_bytes((f / "manifest.json").read_bytes()[:200]),
                           "manifest.json"),
    "manifest empty": (lambda f: (f / "manifest.json").write_bytes(b""), "manifest.json"),
    "manifest binary": (lambda f: (f / "manifest.json").write_bytes(b"\x00\xff\xfe\x80" * 50), "manifest.json"),
    "manifest [1]": (lambda f: (f / "manifest.json").write_text("[1]"), "manifest.json"),
    "manifest other run": (lambda f: _rewrite_manifest(f, run_id="tiny-llama__wanda__0.5__0123456789"),
                           "manifest.json"),
    "manifest no status": (lambda f: _rewrite_manifest(f, status=None), "manifest.json"),
    "layers changed": (lambda f: (f / "layers.csv").write_bytes((f / "layers.csv").read_bytes() + b"\n"),
                       "layers.csv"),
    "blocks missing": (lambda f: (f / "blocks.csv").unlink(), "blocks.csv"),
}


def test_a_written_run_records_its_checksums_and_writer(finished):
    for folder in (finished / "runs").iterdir():
        manifest = store.read_manifest(folder)
        assert manifest["run_id"] == folder.name and manifest["writer"]["host"] == claims.hostname()
        assert manifest["metrics_sha256"] == store.sha256((folder / "metrics.csv").read_bytes())
        for name in ("layers.csv", "blocks.csv") if "__dense__" not in folder.name else ():
            assert manifest["sha256"][name] == store.sha256((folder / name).read_bytes())
        assert store.check_run(folder) == ("complete", "")


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_check_run_names_the_damaged_file(finished, tmp_path, kind):
    results, folders = _copy(finished, tmp_path)
    folder = next(f for f in folders if "__magnitude__0.1__" in f.name)
    damage, name = DAMAGE[kind]
    damage(folder)
    state, reason = store.check_run(folder)
    assert state == "damaged" and reason.startswith(name + ":") and "\n" not in reason, reason
    assert store.read_manifest(folder) is None and not store.is_complete(folder)
    assert folder.name not in set(store.load_metrics(results)["run_id"])  # skipped, no crash


def test_killed_run_is_incomplete(finished, tmp_path):
    _, folders = _copy(finished, tmp_path)
    (folders[0] / "manifest.json").unlink()
    assert store.check_run(folders[0])[0] == "incomplete"


@pytest.mark.subprocess
def test_damaged_store_is_named_skipped_recomputed_and_cleaned(finished_sweep, tmp_path):
    """Every kind of damage at once: `store check` lists each run, the report skips it in one line,
    the next sweep names it in one line and recomputes it; afterwards the store is clean and complete."""
    results, folders = _copy(finished_sweep, tmp_path)
    damaged = {}
    writer = store.read_manifest(folders[0])["writer"]["pid"]  # the sweep that wrote the finished store
    for folder, (damage, name) in zip(folders, list(DAMAGE.values())[:10]):  # dense sorts first: damaged too
        damage(folder)
        damaged[folder.name] = name
    intact = [f for f in folders if f.name not in damaged]
    assert len(damaged) == 10 and len(intact) == 1
    stamps = {f.name: (f / "manifest.json").stat().st_mtime_ns for f in intact}
    host, old = claims.hostname(), time.time() - 2 * store.TEMP_MAX_AGE
    leftovers = [results / f".summary.csv.tmp{DEAD_PID}.{host}", intact[0] / f".metrics.csv.tmp{DEAD_PID}",
                 intact[0] / f".layers.csv.tmp{DEAD_PID}.other-node", folders[1] / f".manifest.json.tmp{DEAD_PID}"]
    live = [intact[0] / f".metrics.csv.tmp{os.getpid()}.{host}",  # this process is alive: an in-flight write
            intact[0] / f".blocks.csv.tmp{DEAD_PID}.other-node"]  # a fresh file of another host: maybe writing
    for path in leftovers + live:
        path.write_text("partial")
    os.utime(leftovers[2], (old, old))  # another host's pid means nothing here; age does

    check = _py("-m", "runners.execution.store", "check", f"results.dir={results}")
    assert check.returncode == 1
    for rid, name in damaged.items():
        (line,) = [x for x in check.stdout.splitlines() if rid in x and not x.startswith("temp")]
        assert line.startswith("damaged") and f": {name}:" in line, line
    assert sum(line.startswith("temp") for line in check.stdout.splitlines()) == len(leftovers)

    report = _py("-m", "runners.reporting.report", f"results.dir={results}")
    assert report.returncode == 0, report.stderr[-3000:]
    for rid, name in damaged.items():
        (line,) = [x for x in (report.stdout + report.stderr).splitlines() if rid in x]
        assert "damaged run" in line and f": {name}:" in line and "skipped" in line, line

    sweep = _sweep(results)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    out = sweep.stdout + sweep.stderr
    for rid, name in damaged.items():
        (line,) = [x for x in out.splitlines() if rid in x and "damaged run" in x]
        assert f": {name}:" in line and "computing it again" in line, line
        assert store.read_manifest(results / "runs" / rid)["writer"]["pid"] not in (writer, os.getpid())
    for f in intact:  # untouched runs were skipped, not redone
        assert (f / "manifest.json").stat().st_mtime_ns == stamps[f.name]
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in live)
    for path in live:
        path.unlink()

    check = _py("-m", "runners.execution.store", "check", f"results.dir={results}")
    assert check.returncode == 0, check.stdout
    report = _py("-m", "runners.reporting.report", f"results.dir={results}")
    assert report.returncode == 0 and "damaged run" not in report.stdout + report.stderr
    summary = pd.read_csv(results / "summary.csv")
    assert sorted(summary["run_id"]) == sorted(f.name for f in folders)  # each run once, none missing
    table = (results / "report" / "report.md").read_text()
    assert all(f"{s} wikitext2" in table for s in SPARSITIES) and "| dense" in table


def _summary_with_sentinel(finished, tmp_path):
    results, _ = _copy(finished, tmp_path)
    old = b"model,value\nprevious,1.0\n"
    (results / "summary.csv").write_bytes(old)
    return results, old


def test_full_disk_during_the_summary_write_keeps_the_previous_file(finished, tmp_path, monkeypatch):
    results, old = _summary_with_sentinel(finished, tmp_path)

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full_disk)
    with pytest.raises(OSError):
        summarize(results)
    assert (results / "summary.csv").read_bytes() == old
    assert not list(results.glob(".*.tmp*"))  # the failed write cleaned up after itself


KILL_BEFORE_RENAME = """
import os, signal, sys
real = os.replace
def replace(src, dst):
    if str(dst).endswith("summary.csv"):  # the new summary is written in full, not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
from runners.reporting.report import summarize
summarize(sys.argv[1])
"""


@pytest.mark.subprocess
def test_kill_during_the_summary_write_keeps_the_previous_file(finished, tmp_path):
    results, old = _summary_with_sentinel(finished, tmp_path)
    proc = _py("-c", KILL_BEFORE_RENAME, str(results))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (results / "summary.csv").read_bytes() == old
    (tmp,) = results.glob(".summary.csv.tmp*")  # the killed writer's leftover ...
    assert store.remove_temp_files(results) == [tmp] and not tmp.exists()  # ... is removed (its pid is dead)
    assert summarize(results) and (results / "summary.csv").read_bytes() != old


def _job(results, *overrides):
    from runners.execution.job import run_job

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            *SWEEP[1:3], "sparsity=0.1", *SWEEP[4:], f"data.local_dir={data_dir()}", f"results.dir={results}",
            *overrides])
    return run_job(cfg)


@pytest.mark.parametrize("status", ["error", "oom", "nan"])
def test_failed_runs_are_done_unless_retry_failed(finished, tmp_path, status):
    results, folders = _copy(finished, tmp_path)
    folder = next(f for f in folders if "__magnitude__0.1__" in f.name)
    _rewrite_manifest(folder, status=status)  # the status is not in a checksum: still a complete run
    assert store.is_done(folder) and not store.is_done(folder, retry_failed=True)
    assert _job(results) == f"skipped:{status}"  # skipped as done
    assert _job(results, "retry_failed=true") == "ok"  # computed again
    assert store.read_manifest(folder)["status"] == "ok"


def test_unavailable_runs_are_always_retried(finished, tmp_path):
    results, folders = _copy(finished, tmp_path)
    folder = next(f for f in folders if "__magnitude__0.1__" in f.name)
    _rewrite_manifest(folder, status="unavailable")
    assert not store.is_done(folder)
    assert _job(results) == "ok"
