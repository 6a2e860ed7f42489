"""The sweep's progress lines (a Hydra callback) and the end of an invocation (its table and exit code).

``Progress`` is the callback of ``hydra.callbacks.progress`` (conf/config.yaml). Its settings come
through the Hydra config, which run.py fills on the command line it gives Hydra:
``hydra.callbacks.progress.total=N`` (the invocation's jobs), ``.start=T`` (when it started, for
the ETA) and ``.invocation=PID`` (in the log folder's name). Hydra instantiates it in the process
that starts the sweep, and a launcher ships the object with Hydra's context to the processes or
nodes that run the jobs (joblib's workers, submitit's jobs), so every job's ``run k/n`` lines know
n and the start without any environment variable.

Each job leaves ``status.json`` in its folder (run.py's ``main``). After Hydra returns, run.py
reads them from the folder it gave Hydra (``hydra.sweep.dir`` or ``hydra.run.dir``) with
``job_folders`` and calls ``finish``: the table of the store, a line per failure, the exit code
(``exit_code``: 0 when every run is ok or skipped as done, 1 when any failed).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# Statuses that make the invocation fail (exit 1); ok and skipped-as-done runs exit 0.
FAILED = ("error", "oom", "nan", "unavailable")
log = logging.getLogger("sweep")


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


def job_folders(folder: str | Path, multirun: bool) -> list[Path]:
    """The job folders of an invocation whose jobs Hydra logs in ``folder``: its numbered
    subfolders for a sweep (``-m``), else ``folder`` itself."""
    folder = Path(folder)
    if not multirun:
        return [folder]
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def finish(results_dir: str | Path, folders: list[Path]) -> int:
    """The end of an invocation: write summary.csv, print the table and a line per failed run or
    dense baseline; return the exit code from the jobs' status.json files (``exit_code``)."""
    from runners.reporting.report import summarize

    print(summarize(results_dir), flush=True)
    statuses = job_statuses(folders)
    dense = dense_statuses(folders)
    failed = [s for s in statuses if exit_code([s])]
    if failed:
        print(f"{len(failed)} of {len(statuses)} runs failed ({', '.join(sorted(set(failed)))}): exit code 1",
              flush=True)
    for rid, status in sorted(dense.items()):
        if exit_code([status]):
            print(f"the dense baseline {rid} failed ({status}): exit code 1", flush=True)
    return exit_code(statuses + list(dense.values()))


class Progress(Callback):
    """``run k/n start: <settings>`` and ``run k/n end: <status> in H:MM:SS; d/n done, sweep elapsed
    ..., ETA ... for N more`` around every job, in the process that runs it; at the end of a sweep
    under a launcher (joblib, submitit), one line per job in the starting process.

    ``total``: the jobs of the invocation; ``start``: when it started (seconds since the epoch;
    None: when this object was made); ``invocation``: its id, used in the log folder's name
    (conf/config.yaml). run.py sets all three (``hydra.callbacks.progress.<key>=``)."""

    def __init__(self, total: int = 1, start: float | None = None, invocation: int | str = 0) -> None:
        self.total = max(int(total or 1), 1)
        self.start = float(start) if start is not None else time.time()
        self.invocation = invocation
        self._started: dict[int, float] = {}

    def _position(self, config: DictConfig) -> tuple[int, int]:
        num = _select(config, "hydra.job.num")
        return (int(num) + 1 if num is not None else 1), self.total

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        k, n = self._position(config)
        self._started[k] = time.perf_counter()
        settings = " ".join(_select(config, "hydra.overrides.task") or []) or "defaults"
        log.info("run %d/%d start: %s", k, n, settings)

    def on_job_end(self, config: DictConfig, job_return=None, **kwargs) -> None:
        k, n = self._position(config)
        took = time.perf_counter() - self._started.pop(k, time.perf_counter())
        status = getattr(job_return, "_return_value", None)
        status = status if isinstance(status, str) else "error"
        elapsed = time.time() - self.start
        # Jobs may run in parallel (joblib, submitit): count every job that has finished, in any
        # process or on any node, by the status.json files in the shared sweep folder.
        done = _finished(config) or k
        eta = (n - done) * elapsed / done
        log.info("run %d/%d end: %s in %s; %d/%d done, sweep elapsed %s, ETA %s for %d more", k, n, status,
                 _clock(took), done, n, _clock(elapsed), _clock(eta), n - done)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if "BasicLauncher" not in str(_select(config, "hydra.launcher._target_")):
            # The jobs' own lines went to their processes' logs (submitit: .submitit/<job>/): one line each here.
            for line in job_lines(job_folders(config.hydra.sweep.dir, multirun=True)):
                print(line, flush=True)


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
