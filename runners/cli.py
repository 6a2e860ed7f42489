"""Checks of command-line overrides before Hydra composes anything or a model loads."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from eval.datasets import check_dataset_names
from pruners.pattern import SparsityPattern

from core.layers import resolve_layers

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "pruner", "protocol", "experiment", "allocation", "refine")


def choices(group: str) -> list[str]:
    """Names accepted by a config group (its YAML files; for ``pruner`` also the installed plugins')."""
    names = {p.stem for p in (CONF / group).glob("*.yaml")}
    if group == "pruner":
        from runners.execution.plugins import pruner_entry_points

        names |= set(pruner_entry_points())
    return sorted(names)


def _sweep_values(value: str) -> list[str]:
    """The values of a simple comma sweep (``a,b,c``); other sweep syntaxes are left to Hydra."""
    if value.startswith(("range(", "choice(", "glob(", "interval(", "[")):
        return []
    return [v.strip().strip("'\"") for v in value.split(",") if v.strip()]


def check_overrides(argv: list[str]) -> str | None:
    """Return a one-line problem with the overrides in ``argv``, or None when they look valid."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        try:
            if key in GROUPS:
                for v in _sweep_values(value):
                    if v not in choices(key) and v != "null":
                        return f"{key}={v!r} is not valid: accepted {', '.join(choices(key))}"
                    if key == "pruner" and not (CONF / "pruner" / f"{v}.yaml").is_file():
                        from runners.execution.plugins import check_plugin

                        check_plugin(v)  # a plugin that fails to load: its one-line error
            elif key == "sparsity":
                for v in _sweep_values(value):
                    SparsityPattern.parse(v)
            elif key == "prune.layers" and not value.startswith("["):
                for v in _sweep_values(value):
                    resolve_layers(int(v) if v.isdigit() else v)
            elif key == "eval.datasets" and value.startswith("["):
                check_dataset_names(v.strip().strip("'\"") for v in value.strip("[]").split(",") if v.strip())
        except ValueError as err:
            return str(err)
    return None


def sweep_points(argv: list[str]) -> list[list[str]]:
    """The override list of every job the command line launches (one list without ``-m``)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    if not multirun:
        return [overrides]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose(config_name="config", overrides=first_point(overrides), return_hydra_config=True)
    params = OmegaConf.to_container(base.hydra.sweeper.params) if base.hydra.sweeper.get("params") else {}
    parsed = parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()] + overrides)
    return BasicSweeper.split_arguments(parsed, None)[0]


def first_point(overrides: list[str]) -> list[str]:
    """The overrides with every comma sweep replaced by its first value (one composable job)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    first = []
    for o in OverridesParser.create().parse_overrides(overrides):
        value = next(iter(o.sweep_string_iterator())) if o.is_discrete_sweep() else o.get_value_element_as_str()
        first.append(f"{o.get_key_element()}={value}")
    return first


def results_dir(argv: list[str]) -> str:
    """The ``results.dir`` of the command line's first run."""
    from hydra import compose, initialize_config_dir

    job = [o for o in first_point([a for a in argv if not a.startswith("-")]) if not o.startswith("hydra")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return str(compose(config_name="config", overrides=job).results.dir)


def is_multirun(argv: list[str]) -> bool:
    """True when the command line asks Hydra for a sweep (``-m``)."""
    return any(a in ("-m", "--multirun") for a in argv)


def log_folder(argv: list[str]) -> str:
    """The folder Hydra will log the invocation's jobs in, resolved as Hydra resolves it:
    ``hydra.sweep.dir`` for a sweep (``-m``), else ``hydra.run.dir`` (conf/config.yaml: under
    ``results.dir``, named by the time and ``hydra.callbacks.progress.invocation``). ``argv`` holds
    the command line and the overrides run.py adds; run.py gives the result to Hydra
    (``hydra.sweep.dir=...``) and reads the jobs' status.json files there when Hydra returns."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals

    setup_globals()  # Hydra's resolvers (``now``), as @hydra.main registers them
    key = "hydra.sweep.dir" if is_multirun(argv) else "hydra.run.dir"
    kept = (key, "hydra.callbacks.")
    overrides = [o for o in first_point([a for a in argv if not a.startswith("-")])
                 if not o.lstrip("+~").startswith("hydra") or o.startswith(kept)]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        # Hydra names the job after run.py (``hydra.job.name``); compose alone would call it ``app``
        cfg = compose(config_name="config", overrides=["hydra.job.name=run", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for a folder given with ${hydra:...}, as Hydra resolves it
    return str(OmegaConf.select(cfg, key))
