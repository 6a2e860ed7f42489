"""Entry point: ``python run.py [-m] key=value ...`` (Hydra).

Examples::

    python run.py                                   # one run: defaults in conf/config.yaml
    python run.py -m pruner=magnitude,wanda sparsity=0.5,0.7,2:4,3:4 protocol=quick
    python run.py model=hub model.name_or_path=facebook/opt-350m pruner=wanda sparsity=2:4

Command-line values are checked before Hydra starts, so a typo stops the sweep at once with
one line naming the bad value and what is accepted.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from runners.cli import check_overrides


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    """Run one configured job (Hydra calls this once per sweep point)."""
    from runners.job import SettingsError, run_job

    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        return run_job(cfg)
    except SettingsError as err:  # one line, no traceback; the sweep stops (exit code 2)
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    problem = check_overrides(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
