"""The settings of the command-line tools (report, store check, bench, bench-scale), read through Hydra.

Each tool declares its settings as a dataclass, a Hydra structured config, whose fields carry
their help, the accepted values and an optional check (``setting``); a nested dataclass gives
dotted keys (``results.dir``, ``report.compare``). ``parse(tool, argv)`` stores the dataclass in
Hydra's ConfigStore and composes it with the command line through Hydra's compose API
(``initialize_config_dir`` on ``conf/`` + ``compose``, as ``runners/validate.py`` composes
run.py's config), so a tool's defaults list can take a config group as run.py does
(``runners/bench.py``: ``model=<name>`` composes ``conf/model/<name>.yaml``). Hydra types every
value by the dataclass; no log folder or file is written.

The command lines these tools have always taken keep working: a list setting takes
comma-separated values (``pruners=wanda,sparsegpt``, ``nsamples=1,2``; Hydra's ``[a,b]`` too) and
a text setting takes its value as written (``sparsity=0.70`` stays ``"0.70"``, a path needs no
quotes): ``overrides`` turns them into Hydra overrides. A bad key or a bad value is one line on
stderr naming the key, the value and what is accepted, exit code 2 (``SettingError`` in-process);
``--help`` lists every setting with its default.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

CONF = Path(__file__).resolve().parents[1] / "conf"
HELP = ("--help", "-h")


class SettingError(ValueError):
    """A rejected command line (one line naming the key, the value and what is accepted)."""


def setting(default, help: str, accepted: str | None = None, check: Callable | None = None):
    """A dataclass field of a tool's settings. ``accepted``: what the key takes, in words (default:
    from its type); ``check(value)``: None when the composed value is valid, else what is accepted
    (or it raises SettingError with its own line, e.g. naming one item of a list)."""
    meta = {"help": help, "accepted": accepted, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(name: str, help: str):
    """A field filled by the config group ``conf/<name>/`` (its option named in the dataclass's
    ``defaults`` list, as in run.py's config.yaml): ``<name>=<option>`` picks the option and
    ``<name>.<key>=`` sets one of its keys."""
    return field(default_factory=dict, metadata={"help": help, "group": name})


def at_least(low: float, whole: bool = True):
    """A check: a number >= ``low`` (``whole``: a whole number)."""
    accepted = f"a whole number >= {low}" if whole else f"a number >= {low}"
    return lambda value: None if value is not None and value >= low else accepted


def positive(value) -> str | None:
    """A check: a number > 0."""
    return None if value is not None and value > 0 else "a positive number"


def not_empty(value) -> str | None:
    """A check: a folder or file name that is not empty."""
    return None if value and value.strip() else "a folder"


def valid_sparsity(value) -> str | None:
    """A check: a sparsity (``pruners.pattern.SparsityPattern``: 0.7, 70%, 2:4)."""
    from pruners.pattern import ACCEPTED, SparsityPattern

    try:
        SparsityPattern.parse(value)
    except ValueError:
        return ACCEPTED
    return None


@dataclass
class Results:
    """``results.dir``: the results store (report and store check)."""

    dir: str = setting("results", "the results store (runs in <results.dir>/runs/)", accepted="a folder",
                       check=not_empty)


@dataclass(frozen=True)
class Tool:
    """A command-line tool: its command, its settings (a dataclass), what it does, examples, an
    optional check of the whole settings (raises SettingError), and the words that must come first
    (``check`` for the store)."""

    command: str
    schema: type
    about: str
    examples: tuple[str, ...] = ()
    check: Callable | None = None
    words: tuple[str, ...] = ()

    @property
    def config_name(self) -> str:
        return "llm_prune_bench_tool_" + re.sub(r"\W+", "_", self.command.split()[-1])


# ---- the settings of a dataclass -----------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One setting: its dotted key, its field, its type (``kind``: str, int, float, bool, list or
    a config group), the list items' type, and whether null is accepted."""

    key: str
    field: dataclasses.Field
    kind: Any
    item: Any = None
    optional: bool = False

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")

    @property
    def accepted(self) -> str:
        given = self.field.metadata.get("accepted")
        if given:
            return given
        words = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}
        if self.kind is list:
            return {int: "whole numbers separated by commas", float: "numbers separated by commas"}.get(
                self.item, "names separated by commas")
        text = words.get(self.kind, "a value")
        return f"{text} or null" if self.optional else text


def keys(schema: type, prefix: str = "") -> list[Key]:
    """Every setting of ``schema``, nested dataclasses as dotted keys, in declaration order."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        if f.name == "defaults":
            continue
        hint, key = hints[f.name], prefix + f.name
        if "group" in f.metadata:
            out.append(Key(key, f, "group"))
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
        base = args[0] if optional else hint
        if dataclasses.is_dataclass(base):
            out += keys(base, key + ".")
        elif typing.get_origin(base) in (list, typing.List):
            out.append(Key(key, f, list, (typing.get_args(base) or (str,))[0], optional))
        else:
            out.append(Key(key, f, base, None, optional))
    return out


def group_defaults(schema: type) -> dict[str, str]:
    """The option of each config group in ``schema``'s defaults list (``{"model": "smollm2-135m"}``)."""
    defaults = next((f for f in dataclasses.fields(schema) if f.name == "defaults"), None)
    if defaults is None:
        return {}
    entries = defaults.default_factory() if defaults.default_factory is not dataclasses.MISSING else defaults.default
    return {k: v for entry in entries if isinstance(entry, dict) for k, v in entry.items()}


def options(name: str) -> list[str]:
    """The options of the config group ``conf/<name>/``."""
    return sorted(p.stem for p in (CONF / name).glob("*.yaml"))


def _default_text(key: Key, schema: type) -> str:
    if key.kind == "group":
        return group_defaults(schema).get(key.key, "")
    value = key.field.default_factory() if key.field.default_factory is not dataclasses.MISSING else key.field.default
    return show(value)


def show(value) -> str:
    """A setting's value as written on a command line (``8.0`` -> ``8``, lists comma-separated)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(show(v) for v in value)
    return str(value)


# ---- the command line -> Hydra overrides --------------------------------------------------


def quote(text: str) -> str:
    """``text`` as a quoted Hydra string: taken as written, no interpolation."""
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)  # backslashes before a quote or the end
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


def overrides(tool: Tool, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Hydra overrides for ``argv`` (``key=value`` words) and the value each key was given as
    written; an unknown key, a word that is not ``key=value``, a group option that does not exist
    is a SettingError."""
    known = {k.key: k for k in keys(tool.schema)}
    groups = {k.key for k in known.values() if k.kind == "group"}
    out, given = [], {}
    for arg in argv:
        if arg.startswith("-"):
            raise SettingError(f"{arg!r} is not an option of {tool.command}: accepted --help, or key=value settings "
                               f"({', '.join(known)})")
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise SettingError(f"{arg!r} is not a setting: accepted key=value with a key among {', '.join(known)}")
        given[key] = value
        if key in groups:
            if value not in options(key):
                raise SettingError(f"{key}={value!r} is not valid: accepted {', '.join(options(key))}")
            out.append(f"{key}={value}")
        elif key.split(".", 1)[0] in groups:
            out.append(arg)  # one key of the group's option: Hydra checks it against the option's keys
        elif key not in known:
            raise SettingError(f"{key}={value!r} is not a known setting: accepted {', '.join(known)}")
        else:
            out.append(f"{key}={_hydra_value(known[key], value)}")
    return out, given


def _hydra_value(key: Key, value: str) -> str:
    """The value as Hydra reads it for this key's type: text quoted as written, a comma list as a
    Hydra list (its text items quoted); numbers and booleans as they are (Hydra converts them)."""
    if key.kind is str:
        return "null" if value == "null" and key.optional else quote(value)
    if key.kind is list:
        if value.startswith("["):
            return value
        if value == "null" and key.optional:
            return "null"
        items = [v.strip() for v in value.split(",") if v.strip()]
        return "[" + ",".join(quote(v) if key.item is str else v for v in items) + "]"
    return value


# ---- composing and checking ----------------------------------------------------------------


def compose_settings(tool: Tool, argv: list[str]):
    """The tool's settings composed with ``argv`` (words after ``tool.words``), checked: the
    dataclass instance (a config group's option as a dict). Raises SettingError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if list(argv[:len(tool.words)]) != list(tool.words):
        first = " ".join(argv[:len(tool.words)])
        what = f"{first!r} is not a command of {tool.command}" if argv else f"{tool.command} needs a command"
        raise SettingError(f"{what}: accepted {' '.join(tool.words)} (usage: {usage(tool)})")
    hydra_overrides, given = overrides(tool, list(argv[len(tool.words):]))
    ConfigStore.instance().store(name=tool.config_name, node=tool.schema)
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=tool.config_name, overrides=hydra_overrides)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise SettingError(f"{missing[0]} is not set: accepted {missing[0]}=<value>")
        settings = OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise SettingError(_one_line(tool, err, given)) from None
    for key in keys(tool.schema):
        check = key.field.metadata.get("check")
        value = _get(settings, key.key)
        accepted = check(value) if check else None
        if accepted:
            raise SettingError(f"{key.key}={given.get(key.key, show(value))!r} is not valid: accepted {accepted}")
    if tool.check is not None:
        tool.check(settings)
    return settings


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _one_line(tool: Tool, err: BaseException, given: dict[str, str]) -> str:
    """Hydra's or OmegaConf's error as one line naming the key, the value and what is accepted."""
    from omegaconf import OmegaConf

    text = str(err).strip() or type(err).__name__
    first = " ".join(text.split("\n")[0].split())
    known = {k.key: k for k in keys(tool.schema)}
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown and unknown.group(1).split(".", 1)[0] in {k for k, v in known.items() if v.kind == "group"}:
        key = unknown.group(1)
        name, parent = key.split(".", 1)[0], key.rpartition(".")[0]
        option = given.get(name) or group_defaults(tool.schema).get(name)
        node = OmegaConf.create({name: OmegaConf.load(CONF / name / f"{option}.yaml")}) if option else {}
        node = OmegaConf.select(node, parent, default=None) if node else None
        accepted = ", ".join(f"{parent}.{k}" for k in node) if OmegaConf.is_dict(node) else ""
        return f"{key}={given.get(key, '')!r} is not a setting of {name}={option}: accepted {accepted or 'none'}"
    match = (unknown or re.search(r"override (\S+?)=", text) or re.search(r"argument '([^'=]+)=", text)
             or re.search(r"full_key: (\S+)", text))
    key = match.group(1) if match else None
    if key in known:
        return f"{key}={given.get(key, '')!r} is not valid: accepted {known[key].accepted}"
    if key in given:  # a key of a group's option (model.dtype=...): Hydra's reason
        return f"{key}={given[key]!r} is not valid: {first}"
    return first


# ---- the command line of a tool -------------------------------------------------------------


def usage(tool: Tool) -> str:
    return f"{tool.command} {' '.join(tool.words) + ' ' if tool.words else ''}[key=value ...]"


def help_text(tool: Tool) -> str:
    """``--help``: what the tool does, every setting with its default, examples, exit codes."""
    lines = [f"usage: {usage(tool)}", "", *textwrap.wrap(tool.about, 96, break_on_hyphens=False), "",
             "Settings (key=default):"]
    for key in keys(tool.schema):
        accepted = ", ".join(options(key.key)) if key.kind == "group" else key.accepted
        lines.append(f"  {key.key}={_default_text(key, tool.schema)}")
        lines += textwrap.wrap(f"{key.help}; accepted: {accepted}", 96, initial_indent=" " * 6,
                               subsequent_indent=" " * 6, break_on_hyphens=False)
    if tool.examples:
        lines += ["", "Examples:", *(f"  {e}" for e in tool.examples)]
    lines += ["", "A bad key or value stops the tool with one line naming it, exit code 2."]
    return "\n".join(lines)


def parse(tool: Tool, argv: list[str]):
    """The command line's settings (``compose_settings``); ``--help`` prints ``help_text`` and exits
    0; a rejected setting prints ``error: <one line>`` on stderr and exits 2."""
    if any(a in HELP for a in argv):
        print(help_text(tool))
        raise SystemExit(0)
    try:
        return compose_settings(tool, argv)
    except SettingError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
