"""What a run is: its validated settings and the run id that hashes everything that changes its numbers.

``prepare(cfg)`` checks the settings and resolves them (device kind, model dtype, layers, the
data each dataset will be read from) without loading a model. ``Run.key(pruner)`` is the
run's identity: model source and resolved dtype, device kind, the pruner's settings and label,
the exact sparsity, the pruned blocks, the calibration (dataset, pool fingerprint, size,
seqlen, seed) and the evaluation settings with a content fingerprint of every data file read.
Two runs that can give different numbers never share a run id, so one is never skipped as the
other's "done".
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from eval.blockwise import check_setting as check_blockwise
from eval.calibration import calibration_source
from eval.datasets import check_dataset_names, eval_source
from pruners.allocation import allocates
from pruners.base import needs_calibration
from pruners.dense import DENSE, is_dense
from eval.perplexity import check_bos, resolve_bos
from pruners.pattern import SparsityPattern
from pruners.refine import refines

from core.layers import resolve_layers
from runners.execution.models import ModelSpec, folder_fingerprint, resolve_dtype
from runners.registry import CONF, pruner_configs, settings

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
DENSE_PRUNER = Path(__file__).resolve().parents[2] / "conf" / "pruner" / "dense.yaml"


def layers_label(spec) -> str:
    """Text of ``prune.layers`` as given: ``all``, ``first_half``, ``0-5``, or ``0,3,5`` for a list."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, int):
        return str(spec)
    return ",".join(str(i) for i in spec)


def _content(source: dict) -> dict:
    """A data source descriptor without its absolute path: identity is the content, not the place."""
    return {k: v for k, v in source.items() if k != "path"}


@dataclass
class Run:
    """Everything about one run that is fixed before the model loads."""

    cfg: DictConfig
    model: ModelSpec
    pruner_cfg: dict
    pattern: SparsityPattern
    layers: object
    device: str
    dtype: str
    eval_sources: dict
    allocation: object = None  # pruners/allocation.py object; None: uniform
    refine: object = None      # pruners/refine.py object; None: none

    @property
    def allocates(self) -> bool:
        """True when blocks get their own sparsities (any allocation but uniform)."""
        return allocates(self.allocation) and not self.is_dense

    @property
    def refines(self) -> bool:
        """True when a refinement runs after the pruner (any but ``none``; never for dense: a no-op)."""
        return refines(self.refine) and not self.is_dense

    def needs_calibration(self, pruner) -> bool:
        """The pruner, the allocation's dense pass, or the refinement reads calibration data."""
        return needs_calibration(pruner, self.allocation if self.allocates else None,
                                 self.refine if self.refines else None)

    @property
    def is_dense(self) -> bool:
        return is_dense(self.pruner_cfg)

    @property
    def bos(self) -> bool:
        """Whether perplexity windows are read after the BOS token: ``eval.bos``, or with ``auto``
        the model preset's ``model.bos`` (eval/perplexity.py)."""
        return resolve_bos(self.cfg.eval.get("bos", "auto"), self.model.bos)

    @property
    def device_kind(self) -> str:
        """``cpu`` or ``cuda`` (the index does not change a number)."""
        return self.device.split(":")[0]

    @property
    def seed(self) -> int | None:
        """The seed that can change this run's numbers: none for the dense baseline of a real
        model (nothing random happens); a tiny random model's weights come from the seed."""
        if self.is_dense and self.model.source != "tiny":
            return None
        return int(self.cfg.seed)

    def calib_nsamples(self, pruner) -> int:
        """Calibration size: the pruner's own per-family default when it declares one (the
        released SparseLLM: 64 OPT, 32 LLaMA), else ``calib.nsamples``."""
        own = pruner.calib_nsamples or {}
        return int(own.get(self.model.family, self.cfg.calib.nsamples))

    def calibration(self, pruner) -> dict | None:
        """The calibration part of the identity (None when the pruner reads no calibration data)."""
        if self.is_dense or not self.needs_calibration(pruner):
            return None
        c = self.cfg.calib
        return {"dataset": str(c.dataset), "nsamples": self.calib_nsamples(pruner), "seqlen": int(c.seqlen),
                "seed": int(self.cfg.seed), "source": _content(calibration_source(c.dataset, self.cfg.data.local_dir))}

    def label(self, pruner) -> str:
        """Pruner label of tables and run ids (e.g. ``sparsellm+keep_best``)."""
        if self.is_dense:
            return DENSE.label
        label = str(pruner.label)
        label = f"{label}+{self.allocation.name}" if self.allocates else label
        return f"{label}+{self.refine.name}" if self.refines else label

    def changed_settings(self, label: str = "") -> str:
        """The settings of this run's pruner, allocation and refinement that differ from their config
        files (``pruner.percdamp=0.05 allocation.epsilon=0.1``: pruner, allocation, refinement, each
        by key; empty at the defaults).
        Tables keep configurations apart by it, since the label names only the method: a sweep over
        ``allocation.epsilon`` must not average its values into one cell. A setting the run's label
        (``label(pruner)``) already shows as a part (``keep_best`` in ``sparsellm+keep_best``) is left out."""
        if self.is_dense:
            return ""
        parts = {"pruner": (self.pruner_cfg, pruner_configs().get(str(self.pruner_cfg.get("name", ""))))}
        for group, on in (("allocation", self.allocates), ("refine", self.refines)):
            if on:
                node = OmegaConf.to_container(self.cfg[group], resolve=True)
                parts[group] = (node, CONF / group / f"{node.get('name', '')}.yaml")
        changed = []
        for group, (node, path) in parts.items():
            if path is None or not Path(path).exists():
                continue  # nothing to compare with (a plugin pruner given inline)
            probe = copy.deepcopy(self.cfg)  # the file read in the run's config, so ${seed} and the like resolve
            with open_dict(probe):
                probe[group] = OmegaConf.load(path)
            default = settings(probe[group])
            for k, v in sorted(settings(node).items()):
                if k != "name" and default.get(k) != v and k not in label.split("+"):
                    changed.append(f"{group}.{k}={v}")
        return " ".join(changed)

    def key(self, pruner) -> dict:
        """Everything that changes this run's numbers (hashed into the run id)."""
        c = self.cfg
        ev = OmegaConf.to_container(c.eval, resolve=True)
        # Block-by-block perplexity equals the whole-model forward to 1e-5 relative (tested), so
        # it is a way of computing, not a setting of the number: runs stay shared across it.
        ev.pop("blockwise", None)
        # The BOS convention enters only when it is on: without it the windows are the original
        # protocol's, so every run id stored before eval.bos existed stays the same.
        ev.pop("bos", None)
        if self.bos:
            ev["bos"] = True
        ev["sources"] = {name: _content(src) for name, src in self.eval_sources.items()}
        model = {"name": self.model.name, "source": self.model.source, "path": self.model.name_or_path,
                 "family": self.model.family, "dtype": self.dtype, "tiny": self.model.tiny}
        folder = Path(str(self.model.name_or_path))
        if self.model.source == "hub" and folder.is_dir() and (folder / "config.json").exists():
            # A local folder is identified by its content (config + weights), so moving or
            # copying it keeps its runs, and overwriting it with other weights does not. A folder
            # that is not a model keeps its path: loading it fails and that run records the error.
            try:
                model["path"], model["content"] = None, folder_fingerprint(folder)
            except FileNotFoundError:
                pass
            if model["name"] == self.model.name_or_path:  # the default name (the path): its last part
                model["name"] = Path(str(self.model.name_or_path)).name
        key = {"model": model, "device": self.device_kind, "eval": ev, "seed": self.seed}
        if self.is_dense:
            return {**key, "pruner": {"name": "dense"}, "label": "dense", "sparsity": "0", "layers": "none",
                    "calib": None}
        key = {**key, "pruner": self.pruner_cfg, "label": self.label(pruner), "sparsity": self.pattern.label,
               "ratio": self.pattern.ratio, "layers": layers_label(self.layers), "calib": self.calibration(pruner),
               "prune_batch_size": int(c.prune.batch_size)}
        if self.allocates:  # uniform adds nothing, so the run ids of earlier stores stay valid
            key["allocation"] = OmegaConf.to_container(c.allocation, resolve=True)
        if self.refines:  # as allocation: none adds nothing
            key["refine"] = OmegaConf.to_container(c.refine, resolve=True)
        return key

    def dense(self) -> "Run":
        """The dense baseline run of the same model and evaluation protocol, with a configuration
        of its own (``dense_config``). Its key, hence its run id, is what it always was: the
        model, device kind, evaluation settings and sources, and the seed only for a tiny random
        model; nothing of the pruned run that asked for it."""
        cfg = dense_config(self.cfg)
        return Run(cfg, self.model, OmegaConf.to_container(cfg.pruner, resolve=True), SparsityPattern(0.0), "none",
                   self.device, self.dtype, self.eval_sources)


def dense_config(cfg: DictConfig) -> DictConfig:
    """The configuration of the dense baseline of the run configured by ``cfg``: pruner ``dense``
    (``conf/pruner/dense.yaml``), sparsity 0, no allocation and no refinement; the model, device,
    seed, data, calibration and evaluation settings as in ``cfg`` (``cfg`` itself is unchanged)."""
    dense = copy.deepcopy(cfg)
    with open_dict(dense):
        dense.pruner = OmegaConf.load(DENSE_PRUNER)
        dense.sparsity = 0
        dense.pop("allocation", None)
        dense.pop("refine", None)
    return dense


def check_seed(seed) -> int:
    """``seed`` (the calibration sampling seed) as a whole number >= 0; else a one-line error."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is not valid: accepted a whole number >= 0 such as 0")
    return seed


def run_id(key: dict) -> str:
    """Readable, unique folder name: ``<model>__<label>__<sparsity>__<hash>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    label = f"{key['model']['name']}__{key['label']}__{key['sparsity']}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", label) + f"__{digest}"


def data_source_label(run: Run) -> str:
    """Short text for the metrics rows: ``hub``, or ``local:<hash of the local files' hashes>``."""
    sources = list(run.eval_sources.values())
    if all(s["source"] == "hub" for s in sources):
        return "hub"
    digest = hashlib.sha256(json.dumps([_content(s) for s in sources], sort_keys=True).encode()).hexdigest()[:8]
    return f"local:{digest}"


def _device(value: str) -> str:
    device = str(value)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is available: use device=cpu or device=auto")
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ValueError(f"device={device!r} is not valid: accepted auto, cpu, cuda, cuda:N")
    return device


def prepare(cfg: DictConfig) -> Run:
    """Validate and resolve every setting (ValueError naming the bad value) without loading anything."""
    seed = check_seed(cfg.seed)
    pruner_cfg = settings(cfg.pruner)  # builder settings: the report's order and colour are not identity
    pattern = SparsityPattern.parse(cfg.sparsity)
    layers = OmegaConf.to_container(cfg.prune.layers) if OmegaConf.is_config(cfg.prune.layers) else cfg.prune.layers
    resolve_layers(layers)  # syntax now; against the block count once the model's config is known
    names = check_dataset_names(cfg.eval.datasets)
    check_blockwise(cfg.eval.get("blockwise", "auto"))
    check_bos(cfg.eval.get("bos", "auto"))
    model = ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))
    device = _device(cfg.device)
    local_dir = cfg.data.local_dir
    if local_dir and not Path(local_dir).is_dir():
        raise ValueError(f"data.local_dir={str(local_dir)!r} is not a folder: accepted a folder laid out like "
                         "shared/data, or null for the hub")
    calibration_source(cfg.calib.dataset, local_dir)  # stops here, before any load, when the pool is missing
    sources = {name: eval_source(name, local_dir) for name in names}
    dtype = DTYPE_NAMES[resolve_dtype(model.dtype, device)]
    allocation = None
    if cfg.get("allocation") is not None:
        from hydra.utils import instantiate

        allocation = instantiate(cfg.allocation)
        if not is_dense(pruner_cfg):
            allocation.check(pattern)
    refine = None
    if cfg.get("refine") is not None:
        from hydra.utils import instantiate

        refine = instantiate(cfg.refine)
    return Run(cfg, model, pruner_cfg, pattern, layers, device, dtype, sources, allocation, refine)
