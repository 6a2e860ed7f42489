"""Hydra callbacks: print the results table when a run or a sweep ends."""
from __future__ import annotations

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class PrintReport(Callback):
    """After ``python run.py`` (single or ``-m``), write summary.csv and print the table."""

    def _report(self, config: DictConfig) -> None:
        from runners.report import summarize

        print(summarize(config.results.dir), flush=True)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._report(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._report(config)
