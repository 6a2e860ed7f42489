"""Entry point: ``python run.py [-m] key=value ...`` (Hydra).

Examples::

    python run.py                                   # one run: defaults in conf/config.yaml
    python run.py -m pruner=magnitude,wanda sparsity=0.5,0.7,2:4,3:4 protocol=quick
    python run.py model=hub model.name_or_path=facebook/opt-350m pruner=wanda sparsity=2:4

Every run of the command line is validated before Hydra starts (``runners/validate.py``): a bad
value stops everything at once with one line naming the key, the value and what is accepted,
exit code 2. Otherwise the exit code is 0 when every run ended ok or was skipped as done, and 1
when any run ended as error, oom, nan or unavailable (after all the others ran).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    """Run one configured job (Hydra calls this once per sweep point) and leave its status
    in the job's folder, where the end-of-sweep callback reads every job's status."""
    from hydra.core.hydra_config import HydraConfig

    import time

    from runners.execution.claims import hostname
    from runners.execution.job import SettingsError, run_job
    from runners.execution.store import atomic_write_text

    logging.getLogger("transformers").setLevel(logging.ERROR)
    start = time.time()
    outcome: dict = {}  # the dense baseline this job needed: {"dense": {"run_id", "status"}}
    try:
        status = run_job(cfg, outcome)
    except SettingsError as err:  # validated up front; kept for runs started by other means
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    # Where and when the job ran (a launcher runs jobs in other processes or on other nodes).
    hydra_cfg = HydraConfig.get()
    atomic_write_text(Path(hydra_cfg.runtime.output_dir) / "status.json", json.dumps(
        {"status": status, "host": hostname(), "pid": os.getpid(), "start": start, "end": time.time(),
         "overrides": list(hydra_cfg.overrides.task), **outcome}))
    return status


# Hydra's options that show something and run no job: run.py hands them to Hydra as they are.
INFO_OPTIONS = ("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")


if __name__ == "__main__":
    import time

    from runners import callbacks
    from runners.cli import is_multirun, log_folder, results_dir, sweep_points
    from runners.tool_config import quote
    from runners.validate import check_command_line

    args = sys.argv[1:]
    problem = check_command_line(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    from runners import plan

    if plan.plan_requested(args):  # predict memory and time of every run; Hydra launches nothing
        sys.exit(plan.main(args))
    if any(a.split("=", 1)[0] in INFO_OPTIONS for a in args if a.startswith("-")):
        main()
        sys.exit(0)
    # The progress callback's settings (runners/callbacks.py), through the Hydra config: a launcher
    # ships the callback with them to its worker processes or cluster jobs.
    channel = [f"hydra.callbacks.progress.total={len(sweep_points(args))}",
               f"hydra.callbacks.progress.start={time.time()!r}",
               f"hydra.callbacks.progress.invocation={os.getpid()}"]  # one log folder per invocation
    multirun = is_multirun(args)
    folder = log_folder(args + channel)  # where Hydra logs the jobs, each with its status.json
    results = results_dir(args)  # now: Hydra cannot be composed again while it runs
    sys.argv = [sys.argv[0], *args, *channel, f"hydra.{'sweep' if multirun else 'run'}.dir={quote(folder)}"]

    def interrupted(_signum, _frame):
        """Ctrl-C: show what is in the store so far, then stop at once. Every store write is a
        rename, so stopping here loses nothing written; the run in flight is redone next time."""
        from runners.launchers import stop_workers
        from runners.reporting.report import summarize

        stop_workers()  # a launcher's worker processes would go on computing
        print("\ninterrupted: the runs finished so far\n", flush=True)
        print(summarize(results), flush=True)
        os._exit(130)

    # A handler rather than KeyboardInterrupt: the exception can land in a finalizer, where
    # Python prints and ignores it, and the sweep would go on.
    signal.signal(signal.SIGINT, interrupted)
    try:
        main()
    except SystemExit as stop:
        if stop.code != 1:
            raise
        # Hydra reported an error that ended the sweep early, such as a launcher's worker process
        # that died (killed, out of memory): show what is stored.
        from runners.launchers import stop_workers
        from runners.reporting.report import summarize

        stop_workers()
        print(f"\nthe {'sweep' if multirun else 'run'} stopped early (the error above): the runs in the store; "
              "the runs it did not finish are computed by the next invocation\n", flush=True)
        print(summarize(results), flush=True)
        raise
    # Every job left its status in the folder given to Hydra: the table, then the exit code from them.
    sys.exit(callbacks.finish(results, callbacks.job_folders(folder, multirun)))
