"""What a new user meets first: help, progress with an ETA, Ctrl-C, and offline without surprises."""
import os
import signal
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir

from runners.cli import CONF
from runners.execution.store import read_manifest
from tests.conftest import ROOT, data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
TINY = ["model=tiny-llama", "protocol=smoke", "eval.datasets=[wikitext2]"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "LLM_PRUNE_DATA"}
    env.update(extra)
    return env


@pytest.mark.subprocess
def test_help_shows_examples_sparsity_and_groups():
    """run.py --help is the project's page: examples, the N:M convention, the groups and their options."""
    out = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for needle in ("python run.py -m pruner=sparsellm,wanda sparsity=0.7,0.8,0.9", "N zeros in every M",
                   "3:4 is 75% zeros", "pruner: alps, dense, magnitude", "exit codes"):
        assert needle in out.stdout, needle


def test_local_dir_defaults_to_the_environment(monkeypatch):
    """data.local_dir follows LLM_PRUNE_DATA (as the Makefile sets it), and is null without it."""
    monkeypatch.setenv("LLM_PRUNE_DATA", str(data_dir()))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert compose(config_name="config").data.local_dir == str(data_dir())
    monkeypatch.delenv("LLM_PRUNE_DATA")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert compose(config_name="config").data.local_dir is None


@pytest.mark.subprocess
def test_no_hub_and_no_local_dir_fails_fast_naming_the_setting(tmp_path):
    """With the hub blocked and no data.local_dir, the run fails within seconds and says what to set."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "run.py", *TINY, "pruner=magnitude", f"results.dir={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=_env(HF_ENDPOINT="http://127.0.0.1:9"))
    seconds = time.perf_counter() - start
    assert out.returncode == 1 and seconds < 30, (seconds, out.stderr[-1500:])
    assert "hub cannot be reached" in out.stdout + out.stderr and "data.local_dir" in out.stdout + out.stderr
    statuses = {read_manifest(p)["status"] for p in (tmp_path / "runs").iterdir()}
    assert statuses == {"unavailable"}


@pytest.mark.subprocess
def test_progress_lines_and_interrupt_prints_the_table(tmp_path):
    """A sweep logs `run k/n` with an ETA; SIGINT midway prints the table of what finished, exit 130."""
    args = [sys.executable, "run.py", "-m", *TINY, "pruner=magnitude,sparsellm", "sparsity=0.5,0.6,0.7",
            "calib.nsamples=32", "calib.seqlen=256", f"results.dir={tmp_path}", f"data.local_dir={data_dir()}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # interrupt once the second run has started (the first is in the store)
        seen.append(line)
        if "run 2/6 start" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out[-3000:]
    assert "run 1/6 start" in out and "run 1/6 end: ok" in out and "ETA" in out and "for 5 more" in out
    assert "interrupted" in out and "| magnitude" in out and "run 6/6" not in out
