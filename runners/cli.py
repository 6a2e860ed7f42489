"""Checks of command-line overrides before Hydra composes anything or a model loads."""
from __future__ import annotations

from pathlib import Path

from eval.datasets import check_dataset_names
from pruners.pattern import SparsityPattern

from runners.execution.engine import resolve_layers

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
