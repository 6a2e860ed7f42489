"""Hydra callbacks: print the results table when a run or a sweep ends, and set the exit code."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# Statuses that make the invocation fail (exit 1); ok and skipped-as-done runs exit 0.
FAILED = ("error", "oom", "nan", "unavailable")
EXIT_CODE = 0  # read by run.py after Hydra returns
REPORTED = False  # set once the table was printed (run.py prints it itself when a sweep ends early)
log = logging.getLogger("sweep")
_started: dict[int, float] = {}


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def job_statuses(folders: list[Path]) -> list[str]:
    """The status each job left in its folder; a job that left none crashed (``error``)."""
    statuses = []
    for folder in folders:
        try:
            statuses.append(str(json.loads((folder / "status.json").read_text())["status"]))
        except (OSError, ValueError, KeyError, TypeError):
            statuses.append("error")
    return statuses


def dense_statuses(folders: list[Path]) -> dict[str, str]:
    """The dense baselines the jobs needed, by run id: the status of the job that computed one
    (a failed one when jobs disagree, e.g. ``unavailable`` retried), else ``skipped:<status>``.
    A dense baseline is a run of its own: its failure is not its pruned run's (runners/execution/job.py)."""
    found: dict[str, str] = {}
    for folder in folders:
        try:
            dense = json.loads((folder / "status.json").read_text()).get("dense")
            rid, status = str(dense["run_id"]), str(dense["status"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # no status.json (job_statuses counts it), or a job that needed no baseline
        if rid not in found or _rank(status) > _rank(found[rid]):
            found[rid] = status
    return found


def _rank(status: str) -> int:
    """Which of several jobs' statuses of one dense baseline counts: failed > computed > skipped."""
    return 0 if status.startswith("skipped") else 1 + exit_code([status])


def exit_code(statuses: list[str]) -> int:
    """0 when every run is ok or skipped as done, 1 when any failed."""
    return 1 if any(s.split(":")[-1] in FAILED and not s.startswith("skipped") for s in statuses) else 0


class PrintReport(Callback):
    """After ``python run.py`` (single or ``-m``), write summary.csv, print the table, set EXIT_CODE."""

    def _report(self, config: DictConfig, folders: list[Path]) -> None:
        global EXIT_CODE, REPORTED
        from runners.reporting.report import summarize

        REPORTED = True
        print(summarize(config.results.dir), flush=True)
        statuses = job_statuses(folders)
        dense = dense_statuses(folders)
        EXIT_CODE = exit_code(statuses + list(dense.values()))
        failed = [s for s in statuses if exit_code([s])]
        if failed:
            print(f"{len(failed)} of {len(statuses)} runs failed ({', '.join(sorted(set(failed)))}): exit code 1",
                  flush=True)
        for rid, status in sorted(dense.items()):
            if exit_code([status]):
                print(f"the dense baseline {rid} failed ({status}): exit code 1", flush=True)

    def _position(self, config: DictConfig) -> tuple[int, int]:
        total = int(os.environ.get("LLM_PRUNE_SWEEP_SIZE", "1") or 1)
        num = _select(config, "hydra.job.num")
        return (int(num) + 1 if num is not None else 1), total

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        k, n = self._position(config)
        _started[k] = time.perf_counter()
        settings = " ".join(_select(config, "hydra.overrides.task") or []) or "defaults"
        log.info("run %d/%d start: %s", k, n, settings)

    def on_job_end(self, config: DictConfig, job_return=None, **kwargs) -> None:
        k, n = self._position(config)
        took = time.perf_counter() - _started.pop(k, time.perf_counter())
        status = getattr(job_return, "_return_value", None)
        status = status if isinstance(status, str) else "error"
        elapsed = time.time() - float(os.environ.get("LLM_PRUNE_START", time.time()))
        # Jobs may run in parallel (joblib, submitit): count every job that has finished, in any
        # process or on any node, by the status.json files in the shared sweep folder.
        done = _finished(config) or k
        eta = (n - done) * elapsed / done
        log.info("run %d/%d end: %s in %s; %d/%d done, sweep elapsed %s, ETA %s for %d more", k, n, status,
                 _clock(took), done, n, _clock(elapsed), _clock(eta), n - done)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._report(config, [Path(config.hydra.runtime.output_dir)])

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        folders = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        if "BasicLauncher" not in str(_select(config, "hydra.launcher._target_")):
            # The jobs' own lines went to their processes' logs (submitit: .submitit/<job>/): one line each here.
            for folder, line in zip(folders, job_lines(folders)):
                print(line, flush=True)
        self._report(config, folders)


def _finished(config: DictConfig) -> int:
    """How many jobs of this sweep have left their status.json (0 outside a sweep)."""
    sweep = _select(config, "hydra.sweep.dir")
    if not sweep or str(_select(config, "hydra.mode")) != "RunMode.MULTIRUN":
        return 0
    return sum(1 for _ in Path(sweep).glob("*/status.json"))


def job_lines(folders: list[Path]) -> list[str]:
    """``run k/n: <status> (host H pid P, H:MM:SS) <settings>`` for each job folder of a sweep."""
    lines = []
    for folder in folders:
        try:
            info = json.loads((folder / "status.json").read_text())
        except (OSError, ValueError):
            info = {"status": "error (the job left no status: killed?)"}
        took = _clock(info["end"] - info["start"]) if "start" in info and "end" in info else "?"
        where = f"host {info.get('host', '?')} pid {info.get('pid', '?')}"
        lines.append(f"run {int(folder.name) + 1}/{len(folders)}: {info.get('status')} ({where}, {took}) "
                     f"{' '.join(info.get('overrides', []))}".rstrip())
    return lines


def _select(config: DictConfig, key: str):
    """``OmegaConf.select`` that never raises (the hydra node may be absent or read-only)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(config, key, default=None)
    except Exception:  # noqa: BLE001 - progress lines must never fail a run
        return None
