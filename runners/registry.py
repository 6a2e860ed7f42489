"""Pruners by name, from their configs: this repository's ``conf/pruner/<name>.yaml`` and the
installed plugins' (runners/execution/plugins.py; a built-in of the same name wins).

A pruner config holds its builder's settings (``_target_``, ``name`` and the builder's
parameters, which enter the run id) and, beside them, how the report shows its runs
(``PRESENTATION``): ``order`` (its rank in tables, plots and ``make bench``: lower first; the
default puts a pruner after every built-in, by name) and ``color`` (its plot colour; the default
takes one from ``CYCLE`` by name). These never reach the builder or the run id: ``settings`` drops
them, ``build`` instantiates what is left.

Run labels (``wanda``, ``ria+permute``, ``wanda+owl+dsnot``: ``<pruner label>[+<allocation>]
[+<refinement>]``, composed by runners/execution/identity.py) are parsed here and only here:
``parse_label``. ``build_method`` builds ``pruner`` or ``pruner+refinement`` (``make bench``'s
names) from their configs.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESENTATION = ("order", "color")  # pruner config keys that are not builder settings
DEFAULT_ORDER = 1000  # a pruner whose config gives no order: after the built-ins (ties: by name)
# Colours of pruners whose config gives none (plugins) and of labels that are not a pruner's name
# (wanda+dsnot, ria+permute): one of these by the label's characters, stable across reports.
CYCLE = ["#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896"]


def settings(node) -> dict:
    """A pruner config's builder settings (resolved): everything but ``PRESENTATION``. What the
    builder gets, what validation checks, and what enters the run id."""
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return {k: v for k, v in raw.items() if k not in PRESENTATION}


def build(node):
    """The pruner a config describes: its builder called with ``settings(node)``."""
    from hydra.utils import instantiate

    return instantiate(settings(node))


def pruner_configs() -> dict[str, Path]:
    """Every pruner config by name: the built-ins', then the installed plugins' not shadowed."""
    return dict(_pruner_configs(tuple(sys.path)))


@lru_cache(maxsize=8)
def _pruner_configs(_path: tuple) -> tuple:
    from runners.execution.plugins import plugin_configs

    found = {p.stem: p for p in sorted((CONF / "pruner").glob("*.yaml"))}
    for name, path in plugin_configs().items():
        found.setdefault(name, path)
    return tuple(found.items())


@dataclass(frozen=True)
class Style:
    """How the report shows a pruner's runs (its config's ``PRESENTATION`` keys)."""

    order: float = DEFAULT_ORDER
    color: str | None = None


def styles() -> dict[str, Style]:
    """Every pruner's ``Style`` by name (read once per ``sys.path``: a plugin installed since shows)."""
    return _styles(tuple(sys.path))


@lru_cache(maxsize=8)
def _styles(path: tuple) -> dict[str, Style]:
    out = {}
    for name, file in _pruner_configs(path):
        raw = OmegaConf.load(file)
        out[name] = Style(float(raw.get("order", DEFAULT_ORDER)), raw.get("color"))
    return out


def style(name: str) -> Style:
    """The ``Style`` of the pruner ``name`` (an unknown one: the defaults)."""
    return styles().get(name, Style())


def color(label: str) -> str:
    """The plot colour of a run label: its pruner config's ``color`` when the label is that pruner's
    name, else one of ``CYCLE`` by the label's characters."""
    own = style(label).color
    return own if own else CYCLE[sum(map(ord, label)) % len(CYCLE)]


@lru_cache(maxsize=None)
def group_names(group: str) -> frozenset[str]:
    """The option names of a config group of this repository (``allocation``, ``refine``)."""
    return frozenset(p.stem for p in (CONF / group).glob("*.yaml"))


@dataclass(frozen=True)
class Label:
    """A run label taken apart: the pruner's config name, the pruner's own label (its name, or
    ``name+variant``), and the allocation and refinement names (None: none)."""

    pruner: str
    own: str
    allocation: str | None = None
    refine: str | None = None


def parse_label(label: str) -> Label:
    """``wanda+owl+dsnot`` -> Label("wanda", "wanda", "owl", "dsnot"); ``ria+permute`` ->
    Label("ria", "ria+permute"). The one parser of run labels (and of ``make bench``'s
    ``pruner+refinement`` names): a trailing part is a refinement or an allocation when one of that
    name exists, any other is the pruner's own variant."""
    parts = label.split("+")
    refine = parts.pop() if len(parts) > 1 and parts[-1] in group_names("refine") else None
    allocation = parts.pop() if len(parts) > 1 and parts[-1] in group_names("allocation") else None
    return Label(parts[0], "+".join(parts), allocation, refine)


def order_key(label: str) -> tuple:
    """Sort key of a run label: its pruner's ``order``, then its name; a pruner's own variant
    (``sparsellm+keep_best``) after its plain runs, and each allocation or refinement right after
    the label it applies to."""
    parts = parse_label(label)
    return (style(parts.pruner).order, parts.pruner, parts.own != parts.pruner, parts.own, label != parts.own, label)


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def build_refine(name: str):
    """The refinement ``refine=<name>`` builds."""
    from hydra.utils import instantiate

    return instantiate(_compose([f"refine={name}"]).refine)


def build_method(text: str):
    """``(pruner, refinement or None)`` built from their configs for ``pruner`` or
    ``pruner+refinement`` (``make bench``'s names), at their configs' settings."""
    parts = parse_label(text)
    if parts.own != parts.pruner or parts.allocation or parts.pruner not in pruner_configs():
        raise ValueError(f"{text!r} is not a pruner or pruner+refinement: accepted "
                         f"{', '.join(sorted(pruner_configs()))}, each with an optional +<refinement> "
                         f"({', '.join(sorted(group_names('refine')))})")
    from hydra.utils import instantiate

    cfg = _compose([f"pruner={parts.pruner}"] + ([f"refine={parts.refine}"] if parts.refine else []))
    return build(cfg.pruner), instantiate(cfg.refine) if parts.refine else None
