"""Hydra callbacks: print the results table when a run or a sweep ends, and set the exit code."""
from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# Statuses that make the invocation fail (exit 1); ok and skipped-as-done runs exit 0.
FAILED = ("error", "oom", "nan", "unavailable")
EXIT_CODE = 0  # read by run.py after Hydra returns


def job_statuses(folders: list[Path]) -> list[str]:
    """The status each job left in its folder; a job that left none crashed (``error``)."""
    statuses = []
    for folder in folders:
        try:
            statuses.append(str(json.loads((folder / "status.json").read_text())["status"]))
        except (OSError, ValueError, KeyError, TypeError):
            statuses.append("error")
    return statuses


def exit_code(statuses: list[str]) -> int:
    """0 when every run is ok or skipped as done, 1 when any failed."""
    return 1 if any(s.split(":")[-1] in FAILED and not s.startswith("skipped") for s in statuses) else 0


class PrintReport(Callback):
    """After ``python run.py`` (single or ``-m``), write summary.csv, print the table, set EXIT_CODE."""

    def _report(self, config: DictConfig, folders: list[Path]) -> None:
        global EXIT_CODE
        from runners.report import summarize

        print(summarize(config.results.dir), flush=True)
        statuses = job_statuses(folders)
        EXIT_CODE = exit_code(statuses)
        failed = [s for s in statuses if exit_code([s])]
        if failed:
            print(f"{len(failed)} of {len(statuses)} runs failed ({', '.join(sorted(set(failed)))}): exit code 1",
                  flush=True)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._report(config, [Path(config.hydra.runtime.output_dir)])

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        self._report(config, sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()))
