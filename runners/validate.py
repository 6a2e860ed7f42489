"""One validation pass over every run of an invocation, before any model or data loads.

``validate(argv)`` expands the command line exactly as Hydra's basic sweeper will (the
experiment preset's ``hydra.sweeper.params`` first, then the command line's comma sweeps),
composes each sweep point, and checks every key a user can set:

* composition itself (unknown keys, typos, unknown group options): Hydra's error in one line;
* types and ranges of the top-level, ``calib``, ``eval``, ``prune``, ``data`` and ``model`` keys
  (``CHECKS``), and each pruner's own settings against its builder's signature (names and
  annotated types) and the builder's own checks;
* cross-field checks against the model's shapes, read from its ``config.json`` only (shipped
  for the presets in ``conf/shapes/``, the folder's own for a local model, the tiny spec):
  sequence lengths within the model's positions, N:M against the input width of every Linear,
  ``prune.layers`` against the block count;
* names (``check_names``): each setting that names a thing names one that exists and is of the
  right kind, by the rule of the module that owns the concept: ``data.local_dir`` a folder laid
  out like shared/data (``check_local_dir`` of eval/datasets.py), ``eval.zeroshot.tasks``
  accuracy-scored lm-eval tasks (``check_task_names`` of eval/zeroshot.py), ``model.family`` a
  declared family (core/families.py), a hub model's ``model.name_or_path`` a model folder or a hub
  id (``check_model_path`` here); ``eval.datasets`` and ``calib.dataset`` are checked by the
  run's own resolution (eval/datasets.py, eval/calibration.py);
* files: the test files ``data.local_dir`` has are readable text; the results, cache and (with
  ``save.model=true``) save folders are folders this user can write, not files.

The first problem is returned as one line naming the key, the value and what is accepted.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import sys
import typing
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from eval.blockwise import check_setting as check_blockwise
from eval.datasets import CORPORA, check_local_dir
from eval.perplexity import check_bos
from eval.speed.timing import check_batches, check_kernel_list
from eval.zeroshot import check_task_names
from pruners.allocation import allocates
from pruners.dense import is_dense
from pruners.pattern import SparsityPattern

from runners.cli import CONF, first_point, sweep_points
from runners.execution.identity import check_seed
from runners.registry import PRESENTATION, settings
from core.families import ADAPTERS, declared, family_named
from core.structure import refusal
from core.layers import resolve_layers

SHAPES = CONF / "shapes"


def _int(low: int | None = None, nullable: bool = False):
    accepted = ("null or " if nullable else "") + (f"a whole number >= {low}" if low is not None else "a whole number")

    def check(value):
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            return accepted
        return None
    return check


def _bool(value):
    return None if isinstance(value, bool) else "true or false"


def _str_or_null(value):
    return None if value is None or isinstance(value, str) else "a text or null"


def _owned(rule):
    """A check from the rule of the module that owns the setting (it raises a one-line
    ``key=value is not valid: accepted ...`` ValueError): the accepted values, or None."""
    def check(value):
        try:
            rule(value)
        except ValueError as err:
            return str(err).partition("accepted ")[2] or str(err)
        return None
    return check


def _names(value):
    if not isinstance(value, (list, ListConfig)) or not value:
        return "a non-empty list such as [wikitext2,ptb]"
    items = list(value)
    if any(not isinstance(v, str) or not v for v in items):
        return "a list of names"
    if len(set(items)) != len(items):
        return "a list without duplicates"
    return None


def _tasks(value):
    if value is None or (isinstance(value, (list, ListConfig)) and not value):
        return None
    return _names(value)


def _limit(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return "null, a whole number of examples >= 1, or a fraction in (0, 1]"
    if isinstance(value, float) and value > 1:
        return "null, a whole number of examples >= 1, or a fraction in (0, 1]"
    return None


# key -> check(value) returning None when valid, else the accepted values (for the message).
CHECKS = {
    "seed": _owned(check_seed),
    "retry_failed": _bool,
    "plan": _bool,
    "calib.nsamples": _int(1),
    "calib.seqlen": _int(2),
    "eval.seqlen": _int(2),
    "eval.max_windows": _int(1, nullable=True),
    "eval.batch_size": _int(1),
    "eval.blockwise": _owned(check_blockwise),
    "eval.bos": _owned(check_bos),
    "eval.datasets": _names,
    "eval.zeroshot.tasks": _tasks,
    "eval.zeroshot.limit": _limit,
    "prune.diagnostics": _bool,
    "prune.batch_size": _int(1),
    "data.local_dir": _str_or_null,
    "save.model": _bool,
    "save.dir": _str_or_null,
    "measure.speed": _bool,
    "measure.kernels": _owned(check_kernel_list),
    "measure.prefill_tokens": _int(1),
    "measure.decode_tokens": _int(1),
    "measure.decode_batches": _owned(check_batches),
    "measure.warmup": _int(0),
    "measure.repeats": _int(1),
    "model.name_or_path": _str_or_null,
    "model.bos": _bool,
}


class Invalid(ValueError):
    """A rejected setting (one line)."""


def _select(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def check_keys(cfg: DictConfig) -> None:
    """Types and ranges of the plain keys (``CHECKS``)."""
    for key, check in CHECKS.items():
        if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            continue
        value = _select(cfg, key)
        accepted = check(value)
        if accepted:
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise Invalid(f"{key}={shown!r} is not valid: accepted {accepted}")


def _annotation_ok(value, annotation) -> bool:
    """Does ``value`` fit a builder's annotation (int, float, bool, str, Optional, Mapping)?"""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation.split(" |")[0], object)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_annotation_ok(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    return True


def check_pruner(cfg: DictConfig) -> None:
    """Each pruner setting is a parameter of its builder, of the annotated type."""
    pruner = settings(cfg.pruner)  # the report's order and colour are not builder settings
    target = pruner.get("_target_", "")
    module_name, _, func_name = target.rpartition(".")
    try:
        builder = getattr(__import__(module_name, fromlist=[func_name]), func_name)
    except (ImportError, AttributeError, ValueError):
        raise Invalid(f"pruner._target_={target!r} cannot be imported: accepted module.function of a pruner builder")
    hints = typing.get_type_hints(builder)
    params = inspect.signature(builder).parameters
    for key, value in pruner.items():
        if key == "_target_":
            continue
        if key not in params:
            accepted = ", ".join(p for p in params if p != "name") or "no settings"
            raise Invalid(f"pruner.{key}={value!r} is not a setting of pruner {pruner.get('name')!r}: accepted {accepted}")
        hint = hints.get(key)
        if hint is not None and not _annotation_ok(value, hint):
            shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise Invalid(f"pruner.{key}={value!r} is not valid for pruner {pruner.get('name')!r}: accepted {shown}")


def model_shape(cfg: DictConfig) -> dict | None:
    """The model's config.json fields that validation needs, without loading it (None: unknown)."""
    m = cfg.model
    if m.source == "tiny":
        family = family_named(m.family, "model.family (tiny model)")
        return family.tiny_config(dict(m.tiny or {})).to_dict()
    shipped = SHAPES / f"{m.name}.json"
    if shipped.is_file():
        return json.loads(shipped.read_text())
    path = Path(str(m.name_or_path or ""))
    if (path / "config.json").is_file():
        raw = json.loads((path / "config.json").read_text())
        return raw.get("text_config", raw)
    return None


def linear_input_widths(shape: dict) -> dict[str, int]:
    """Input width of each kind of Linear in a decoder block (N:M tiles these)."""
    hidden = shape["hidden_size"]
    heads = shape.get("num_attention_heads", 1)
    attn = heads * shape.get("head_dim", hidden // heads)
    ffn = shape.get("intermediate_size", shape.get("ffn_dim"))
    return {"q/k/v and MLP input": hidden, "attention output": attn, "MLP output": ffn}


def check_shapes(cfg: DictConfig, run) -> None:
    """Sequence lengths, N:M and prune.layers against the model's config.json."""
    shape = model_shape(cfg)
    if shape is None:
        return
    problem = refusal(shape)
    if problem:
        raise Invalid(f"model={cfg.model.name}: {problem}")
    positions = shape.get("max_position_embeddings")
    for key in ("calib.seqlen", "eval.seqlen"):
        # With eval.bos every window is read after the BOS: one position more.
        extra = 1 if key == "eval.seqlen" and run.bos else 0
        if positions and _select(cfg, key) + extra > positions:
            after = " after the BOS (eval.bos)" if extra else ""
            raise Invalid(f"{key}={_select(cfg, key)}{after} is longer than {cfg.model.name}'s {positions} positions: "
                          f"accepted 2..{positions - extra}")
    if not run.is_dense and run.pattern.is_nm:
        for what, width in linear_input_widths(shape).items():
            if width and width % run.pattern.m:
                raise Invalid(f"sparsity={run.pattern.label} needs every Linear's input width to be a multiple of "
                              f"{run.pattern.m}, but {cfg.model.name}'s {what} is {width}: accepted N:M with M "
                              f"dividing {width}, or a fraction")
    blocks = shape.get("num_hidden_layers")
    if blocks and not run.is_dense:
        try:
            resolve_layers(run.layers, blocks)
        except ValueError as err:
            raise Invalid(str(err)) from None


def _writable(key: str, folder: str) -> None:
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise Invalid(f"{key}={folder!r} is a file, not a folder: accepted a folder this user can write "
                      "(created when missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise Invalid(f"{key}={folder!r} is not writable ({err.strerror or type(err).__name__}): "
                      "accepted a folder this user can write") from None


def check_files(cfg: DictConfig) -> None:
    """The data folder's test files are readable text; results and cache folders are writable."""
    local = cfg.data.local_dir
    if local:
        for name in cfg.eval.datasets:
            data = CORPORA.get(name)
            path = data.local_file(local, "test") if data else None
            if path is None or data.splits["test"].shard:
                continue  # missing: reported `unavailable` by the run, which goes on; shards: JSON, read by the run
            file = path.relative_to(local)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise Invalid(f"data.local_dir={local!r}: {file} is not readable UTF-8 text ({type(err).__name__}): "
                              "accepted a folder laid out like shared/data") from None
            if not text.strip() or "\x00" in text:
                raise Invalid(f"data.local_dir={local!r}: {file} is empty or binary: accepted a folder laid out "
                              "like shared/data")
    _writable("results.dir", str(cfg.results.dir))
    _writable("cache_dir", str(cfg.cache_dir))
    save_dir = _select(cfg, "save.dir")
    if save_dir:
        if _select(cfg, "save.model") is True:
            _writable("save.dir", str(save_dir))
        elif Path(str(save_dir)).expanduser().exists() and not Path(str(save_dir)).expanduser().is_dir():
            raise Invalid(f"save.dir={save_dir!r} is a file, not a folder: accepted a folder this user can "
                          "write, or null for <run folder>/model")


# A Hugging Face hub id: ``name`` or ``namespace/name`` (letters, digits, ``_ . -``; no ``--``/``..``).
HUB_ID = re.compile(r"(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")
MODEL_FOLDER = "a folder with config.json and *.safetensors or *.bin weights, or a hub id such as facebook/opt-125m"


def check_model_path(value) -> str | None:
    """``model.name_or_path`` of a hub model: an existing path must be a model folder (config.json,
    a JSON object, and weights, as ``folder_fingerprint`` and ``from_pretrained`` read it); a path
    that does not exist must be a hub id. Returns the problem (what follows the value), or None."""
    text = str(value)
    path = Path(text)  # as load_model reads it: no ~ expansion, relative to the working folder
    if path.is_file():
        return "is a file, not a model folder"
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            return "is a folder without config.json"
        try:
            raw = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            return f"has a config.json that is not readable JSON ({type(err).__name__})"
        if not isinstance(raw, dict):
            return "has a config.json that is not a JSON object"
        if not (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
            return "is a folder with config.json but no *.safetensors or *.bin weights"
        return None
    if HUB_ID.fullmatch(text) and not text.endswith(".git"):
        return None
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        return "does not exist (a local path)"
    return "is neither an existing folder nor a hub id"


def check_names(cfg: DictConfig) -> None:
    """Every setting that names a thing names one that exists and is of the right kind: the data
    folder, the zero-shot tasks, the model family and a hub model's folder or id."""
    try:
        check_local_dir(_select(cfg, "data.local_dir"))
        tasks = _select(cfg, "eval.zeroshot.tasks")
        if tasks:
            check_task_names(list(tasks), cache_dir=str(Path(str(cfg.cache_dir)).expanduser() / "zeroshot"))
        family = _select(cfg, "model.family")
        if family is not None:
            family_named(family, "model.family")
    except ValueError as err:
        raise Invalid(str(err)) from None
    if _select(cfg, "model.source") == "hub" and _select(cfg, "model.name_or_path"):
        value = _select(cfg, "model.name_or_path")
        problem = check_model_path(value)
        if problem:
            raise Invalid(f"model.name_or_path={str(value)!r} {problem}: accepted {MODEL_FOLDER}")


def check_allocation(cfg: DictConfig) -> None:
    """The allocation's own check of the sparsity (a layer-wise allocation spreads unstructured
    sparsity only, and its spread must fit): pruners/allocation.py."""
    name = _select(cfg, "allocation.name")
    if name is None or is_dense(_select(cfg, "pruner.name")):
        return
    from hydra.utils import instantiate

    try:
        allocation = instantiate(cfg.allocation)
    except Exception:  # a bad allocation setting: resolve() reports it in one line
        return
    if not allocates(allocation):
        return
    try:
        allocation.check(SparsityPattern.parse(cfg.sparsity))
    except ValueError as err:
        raise Invalid(str(err)) from None


def check_config(cfg: DictConfig) -> None:
    """Every check of one composed run (raises a one-line ValueError)."""
    from runners.execution.job import resolve

    check_keys(cfg)
    check_names(cfg)
    check_pruner(cfg)
    check_allocation(cfg)
    run, pruner, _key = resolve(cfg)
    check_shapes(cfg, run)
    check_family(cfg, pruner)
    check_files(cfg)


def check_family(cfg: DictConfig, pruner) -> None:
    """A pruner that optimizes a declared MLP layout (SparseLLM) against the model's family: a
    model found by structure, or one of another layout, is refused before it loads."""
    kinds = pruner.mlp_kinds
    if kinds is None:
        return
    shape = model_shape(cfg) or {}
    family = declared(cfg.model.family) or declared(shape.get("model_type"))
    if family is None and not shape:
        return  # a hub id not seen yet: its family is known once it loads
    if family is None or family.mlp is None or family.mlp.kind not in kinds:
        what = f"the {family.family} family's {family.mlp.kind} MLP" if family and family.mlp else \
            f"model_type={shape.get('model_type')!r} (found by structure, no declared MLP layout)"
        raise Invalid(f"pruner={pruner.label} optimizes a declared MLP layout and model={cfg.model.name} has "
                      f"{what}: accepted models of the families "
                      f"{', '.join(f'{a.family} ({a.mlp.kind})' for a in ADAPTERS if a.mlp and a.mlp.kind in kinds)}")


def _one_line(err: BaseException, point: list[str] | None = None) -> str:
    """Hydra's or OmegaConf's error as one line; an unknown key names the keys its parent accepts."""
    text = str(err).strip() or type(err).__name__
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown and point is not None:
        key = unknown.group(1)
        value = next((o.split("=", 1)[1] for o in point if o.split("=", 1)[0].lstrip("+~") == key), "?")
        parent, _, _ = key.rpartition(".")
        node = _base_config([o for o in point if o.split("=", 1)[0].lstrip("+~") != key
                             and not o.lstrip("+~").startswith("hydra")])
        node = OmegaConf.select(node, parent) if parent else node
        known = ", ".join(sorted(str(k) for k in node if k not in ("_target_", "name", *PRESENTATION))) \
            if isinstance(node, DictConfig) else "none"
        return (f"{key}={value!r} is not a known setting: accepted {known}"
                + (" (or +pruner.<key>= for a setting its builder takes)" if parent == "pruner" else ""))
    return " ".join(text.split("\n")[0].split())


def _base_config(overrides: list[str]) -> DictConfig:
    """The configuration without the offending override (for listing the keys a node accepts)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def validate(argv: list[str]) -> str | None:
    """The first problem with any run of ``argv`` as one line, or None when every run is valid."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    point = None
    try:
        points = sweep_points(argv)
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            for point in points:
                job = [o for o in point if not o.lstrip("+~").startswith("hydra")]
                check_config(compose(config_name="config", overrides=job))
    except OverrideParseException as err:
        return f"the command line could not be parsed ({_one_line(err)}): accepted key=value, key=a,b,c with -m"
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        if point is None:
            try:
                point = first_point([a for a in argv if not a.startswith("-")])
            except HydraException:
                point = []
        return _one_line(err, point)
    return None


def check_command_line(argv: list[str]) -> str | None:
    """What run.py checks before Hydra starts: group names and sweep syntax first (cheap), then
    every composed run. Returns the one-line problem, or None."""
    from runners.cli import check_overrides
    from runners.launchers import check_launcher

    return check_overrides(argv) or check_launcher(argv) or validate(argv)


if __name__ == "__main__":  # python -m runners.validate key=value ... (what run.py checks first)
    problem = check_command_line(sys.argv[1:])
    print(problem or "ok")
    sys.exit(2 if problem else 0)
