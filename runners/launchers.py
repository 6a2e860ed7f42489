"""Hydra launchers for sweeps on a cluster or on several processes of one machine.

Three launchers of two optional plugins (``pip install -e '.[cluster]'``) are selected by their
plugins' own names:

* ``hydra/launcher=submitit_slurm`` (hydra-submitit-launcher): one Slurm job per run;
* ``hydra/launcher=submitit_local`` (the same plugin): the same jobs as local processes;
* ``hydra/launcher=joblib`` (hydra-joblib-launcher): several runs at once on this machine.

The plugins' defaults do not suit this harness (no GPU is requested on Slurm, a local job is
killed after 60 minutes, joblib starts one job per CPU, each loading a model), so
``register()`` stores each plugin's own config class again under its name with the values of
``PROJECT_DEFAULTS``: the plugin's schema (field names and types) is kept, so every key stays
settable and checked as ``hydra.launcher.<key>=...``. It is called by this project's search
path plugin (``hydra_plugins/llm_prune_bench_searchpath``), which Hydra runs after importing
every plugin, at every compose, so the project's values win over the plugins' whatever the
import order.

``check_launcher(argv)`` is run.py's check of the launcher settings before anything starts:
an unknown launcher, a plugin that is not installed, an unknown or ill-typed key, a value out
of range, or Slurm without ``sbatch`` is one line naming the value and what is accepted.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
import shutil
import typing

# launcher name -> (config module, config class, pip package)
PLUGINS = {
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher.config", "SlurmQueueConf", "hydra-submitit-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher.config", "LocalQueueConf", "hydra-submitit-launcher"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher.config", "JobLibLauncherConf", "hydra-joblib-launcher"),
}

# This harness's values for the plugins' settings (every other key keeps the plugin's default).
PROJECT_DEFAULTS = {
    # One run per job, one GPU per job (pruning and evaluation use one device); time and
    # memory sized for a 7B-13B model at the paper protocol: raise them for larger models.
    "submitit_slurm": {"gpus_per_node": 1, "tasks_per_node": 1, "nodes": 1, "cpus_per_task": 8, "mem_gb": 64,
                       "timeout_min": 240, "partition": None},
    # The local executor hides every GPU unless gpus_per_node is set (CUDA_VISIBLE_DEVICES=""),
    # and kills a job after timeout_min (the plugin's 60 would kill paper-protocol runs).
    "submitit_local": {"gpus_per_node": 1, "tasks_per_node": 1, "nodes": 1, "timeout_min": 240},
    # The plugin's -1 starts one job per CPU, each holding a whole model in memory.
    "joblib": {"n_jobs": 2},
}


def _at_least(low: int, nullable: bool = False):
    def check(value):
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            return f"a whole number >= {low}" + (" or null" if nullable else "")
        return None
    return check


def _one(value):
    return None if value == 1 and not isinstance(value, bool) else "1 (the harness runs one process per run)"


def _n_jobs(value):
    if isinstance(value, bool) or not isinstance(value, int) or value == 0:
        return "a whole number of parallel jobs >= 1 (or -1: one per CPU)"
    return None


def _name_or_null(value):
    return None if value is None or (isinstance(value, str) and value.strip()) else "a Slurm name or null"


# launcher -> key -> check(value): None when valid, else what is accepted.
RANGES = {
    "submitit_slurm": {"gpus_per_node": _at_least(0, True), "tasks_per_node": _one, "nodes": _one,
                       "cpus_per_task": _at_least(1, True), "mem_gb": _at_least(1, True),
                       "timeout_min": _at_least(1), "array_parallelism": _at_least(1),
                       "partition": _name_or_null, "account": _name_or_null, "qos": _name_or_null},
    "submitit_local": {"gpus_per_node": _at_least(0, True), "tasks_per_node": _one, "nodes": _one,
                       "timeout_min": _at_least(1)},
    "joblib": {"n_jobs": _n_jobs},
}


def schema_class(name: str):
    """The plugin's config class of launcher ``name``, or None when its plugin is not installed."""
    module, cls, _package = PLUGINS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError:
        return None


def register() -> None:
    """Store each installed plugin's config class under its name with ``PROJECT_DEFAULTS``."""
    from hydra.core.config_store import ConfigStore

    for name in PLUGINS:
        cls = schema_class(name)
        if cls is not None:
            ConfigStore.instance().store(group="hydra/launcher", name=name, node=cls(**PROJECT_DEFAULTS[name]),
                                         provider="llm-prune-bench")


def launcher_names() -> list[str]:
    """Every launcher Hydra can select here (``basic`` and the installed plugins')."""
    from hydra.core.config_store import ConfigStore

    register()
    return sorted(n.removesuffix(".yaml") for n in ConfigStore.instance().list("hydra/launcher"))


def _accepted(annotation) -> str:
    """A field's type in words (for the message)."""
    words = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false"}
    if isinstance(annotation, str):  # a postponed annotation such as "Optional[int]"
        inner = re.sub(r"^(typing\.)?Optional\[(.*)\]$", r"\2", annotation)
        return words.get(inner, inner) + (" or null" if inner != annotation else "")
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return _accepted(args[0]) + " or null"
    name = getattr(annotation, "__name__", str(annotation))
    return words.get(name, name)


def check_launcher(argv: list[str]) -> str | None:
    """The first problem with the command line's launcher settings as one line, or None."""
    overrides = [a for a in argv if not a.startswith("-")]
    pairs = [(o.split("=", 1)[0].lstrip("+~"), o.split("=", 1)[1]) for o in overrides if "=" in o]
    choice = next((v for k, v in pairs if k == "hydra/launcher"), None)
    settings = [(k, v) for k, v in pairs if k.startswith("hydra.launcher.")]
    if choice is None:
        if settings:
            return (f"{settings[0][0]}={settings[0][1]!r} needs a launcher: accepted with hydra/launcher="
                    f"{' or hydra/launcher='.join(PLUGINS)}")
        return None
    if choice in PLUGINS and schema_class(choice) is None:
        return (f"hydra/launcher={choice} needs the {PLUGINS[choice][2]} package, which is not installed: "
                "pip install -e '.[cluster]'")
    names = launcher_names()
    if choice not in names:
        return f"hydra/launcher={choice!r} is not valid: accepted {', '.join(names)}"
    if choice not in PLUGINS:
        return None  # basic, or another plugin's launcher: Hydra checks it
    fields = {f.name: f.type for f in dataclasses.fields(schema_class(choice)) if f.name != "_target_"}
    for key, value in settings:
        name = key.removeprefix("hydra.launcher.")
        if name not in fields:
            return (f"{key}={value!r} is not a setting of hydra/launcher={choice}: accepted "
                    f"{', '.join(sorted(fields))}")
    launcher = _compose_launcher([o for o in overrides if o.lstrip("+~").startswith("hydra")])
    if launcher is None:
        return None
    if isinstance(launcher, str):  # the override Hydra could not merge
        value = dict(settings).get(launcher, "?")
        return (f"{launcher}={value!r} is not valid for hydra/launcher={choice}: accepted "
                f"{_accepted(fields[launcher.removeprefix('hydra.launcher.')])}")
    for name, check in RANGES[choice].items():
        accepted = check(launcher.get(name))
        if accepted:
            return f"hydra.launcher.{name}={launcher.get(name)!r} is not valid for hydra/launcher={choice}: accepted {accepted}"
    if choice == "submitit_slurm" and shutil.which("sbatch") is None:
        return ("hydra/launcher=submitit_slurm needs Slurm's sbatch, which is not on this machine's PATH: "
                "accepted on a Slurm login node; here use hydra/launcher=submitit_local or hydra/launcher=joblib")
    return None


def _compose_launcher(hydra_overrides: list[str]):
    """The composed ``hydra.launcher`` node (a dict), the key of the override that failed, or
    None when composition fails for another reason."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from runners.cli import CONF, first_point

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=first_point(hydra_overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        found = re.search(r"override (hydra\.launcher\.[\w.]+)=", str(err))
        return found.group(1) if found else None  # another problem: validate() reports it
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def stop_workers() -> list[int]:
    """SIGTERM every child process of this one (joblib's workers, which ignore SIGINT, and
    submitit's local job controllers, which pass it on to their job); return their pids.

    Called by run.py's Ctrl-C handler before it exits: otherwise the workers outlive the sweep
    and keep computing. A worker stopped this way leaves its run's claim behind, and the next
    sweep on this host takes it over at once (its pid is dead). Slurm jobs are not children:
    they go on (``scancel`` stops them). Linux only (reads /proc); elsewhere nothing is sent."""
    import os
    import signal
    from pathlib import Path

    me, stopped = str(os.getpid()), []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = stat_file.read_text().rsplit(")", 1)[1].split()[1]  # after "(name)": state, ppid, ...
            if ppid == me:
                os.kill(int(stat_file.parent.name), signal.SIGTERM)
                stopped.append(int(stat_file.parent.name))
        except (OSError, IndexError, ValueError):  # gone in between, or not ours to signal
            continue
    return stopped
