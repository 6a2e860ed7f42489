"""Pruners from installed packages: the ``llm_prune_bench.pruners`` entry-point group.

A package registers ``name = "module:builder"`` in that group and ships the Hydra config
``conf/pruner/<name>.yaml`` inside its top-level package (as package data). Then, once it is
installed, ``pruner=<name>`` works with no edit to this repository:

* the Hydra search-path plugin ``hydra_plugins/llm_prune_bench_searchpath`` appends every such
  package's ``conf`` folder to Hydra's config search path (after this repository's ``conf/``,
  so a built-in pruner of the same name wins);
* ``runners/cli.py`` accepts the names in ``pruner=`` and loads a chosen plugin's entry point
  first, so one that cannot be imported stops the command in one line (exit code 2).

Finding the config folders imports nothing (``importlib.util.find_spec``), so a broken plugin
costs nothing until it is chosen.
"""
from __future__ import annotations

import importlib.util
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

GROUP = "llm_prune_bench.pruners"


def pruner_entry_points() -> dict[str, EntryPoint]:
    """Installed pruner plugins by name (the first of duplicates, in the environment's order)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def _package_dir(ep: EntryPoint) -> Path | None:
    """The folder of the entry point's top-level package, without importing it (None: not found)."""
    top = ep.value.split(":")[0].split(".")[0].strip()
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def config_dirs() -> list[Path]:
    """The ``conf`` folders of the installed pruner plugins that ship one (for Hydra's search path)."""
    dirs = []
    for ep in pruner_entry_points().values():
        folder = _package_dir(ep)
        if folder is not None and (folder / "conf").is_dir() and folder / "conf" not in dirs:
            dirs.append(folder / "conf")
    return dirs


def plugin_configs() -> dict[str, Path]:
    """``pruner=<name>`` configs the plugins ship, by name."""
    found = {}
    for folder in config_dirs():
        for path in sorted((folder / "pruner").glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def load(name: str):
    """The builder a plugin registers as ``name``; a failure is one line naming the plugin and why."""
    ep = pruner_entry_points().get(name)
    if ep is None:
        raise ValueError(f"pruner={name!r} is not an installed plugin: accepted {', '.join(pruner_entry_points())}")
    try:
        return ep.load()
    except Exception as err:  # any import-time failure of third-party code
        dist = f" from {ep.dist.name} {ep.dist.version}" if getattr(ep, "dist", None) else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"pruner={name!r}: the plugin entry point {ep.value!r}{dist} (group {GROUP}) failed to "
                         f"load: {type(err).__name__}: {first}: accepted an entry point that imports; "
                         "reinstall or fix the plugin") from None


def check_plugin(name: str) -> None:
    """Raise the one-line ``load`` error when ``name`` is a plugin that cannot be loaded or ships no config."""
    if name not in pruner_entry_points():
        return
    load(name)
    if name not in plugin_configs():
        ep = pruner_entry_points()[name]
        raise ValueError(f"pruner={name!r}: the plugin {ep.value!r} ships no conf/pruner/{name}.yaml in its "
                         "package: accepted a plugin whose package data has that config")
