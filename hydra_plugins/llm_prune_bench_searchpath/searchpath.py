"""Adds the ``conf`` folder of every installed pruner plugin to Hydra's config search path.

Hydra finds this class by scanning the ``hydra_plugins`` namespace package, so every compose
(``run.py``'s ``@hydra.main`` and the validation's ``initialize_config_dir``) sees the plugins'
``conf/pruner/<name>.yaml``. The folders are appended: this repository's own configs come first.
See ``runners/execution/plugins.py``.

It also gives the installed launcher plugins' configs (``hydra/launcher=submitit_slurm``,
``submitit_local``, ``joblib``) this project's defaults (``runners/launchers.py``): Hydra calls
this plugin after importing every plugin, so those values replace the plugins' own.
"""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class PrunerPluginSearchPath(SearchPathPlugin):
    """One ``file://`` entry per installed plugin's ``conf`` folder."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        try:
            from runners.execution.plugins import config_dirs
        except ImportError:  # Hydra used outside this harness: nothing to add
            return
        for folder in config_dirs():
            search_path.append(provider="llm-prune-bench-plugin", path=f"file://{folder}")
        from runners.launchers import register

        register()
