"""One run of a sweep: validate, skip if done, load, calibrate, prune, evaluate, write.

``run_job(cfg)`` is what ``run.py`` calls for every Hydra job. Bad settings raise
``ValueError`` before any model is loaded. Failures after that (NaN perplexity, out of
memory, any exception) become the run's recorded status, so the sweep goes on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from eval.datasets import DatasetUnavailable, calibration_tokens, check_dataset_names, eval_tokens
from eval.perplexity import perplexity
from pruners.pattern import SparsityPattern

from . import provenance, store
from .adapters import adapter_for
from .engine import prune_model, resolve_layers
from .models import ModelSpec, load_model

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["run_id", "model", "pruner", "sparsity", "layers", "protocol", "calib_dataset", "calib_nsamples",
                  "calib_seqlen", "eval_seqlen", "eval_max_windows", "seed", "dataset", "metric", "value", "status",
                  "message"]
LAYER_COLUMNS = ["block", "name", "shape", "zeros", "numel", "sparsity", "seconds"]
BLOCK_COLUMNS = ["block", "metric", "step", "value"]


@dataclass
class Run:
    """Everything about one run that is fixed before the model loads."""

    cfg: DictConfig
    model: ModelSpec
    pruner_cfg: dict
    pattern: SparsityPattern
    layers: object
    device: str

    @property
    def is_dense(self) -> bool:
        return self.pruner_cfg["name"] == "dense"

    def key(self, needs_calibration: bool) -> dict:
        """Everything that changes this run's numbers (hashed into the run id)."""
        c = self.cfg
        return {
            "model": {"name": self.model.name, "source": self.model.source, "path": self.model.name_or_path,
                      "dtype": self.model.dtype},
            "pruner": self.pruner_cfg,
            "sparsity": "0" if self.is_dense else self.pattern.label,
            "layers": "none" if self.is_dense else str(self.layers),
            "calib": OmegaConf.to_container(c.calib) if needs_calibration and not self.is_dense else None,
            "eval": OmegaConf.to_container(c.eval),
            "seed": int(c.seed),
        }

    def dense(self) -> "Run":
        """The dense baseline run of the same model and evaluation protocol."""
        return Run(self.cfg, self.model, {"name": "dense", "_target_": "pruners.dense.build"},
                   SparsityPattern(0.0), "none", self.device)


def run_id(key: dict) -> str:
    """Readable, unique folder name: ``<model>__<pruner>__<sparsity>__<hash>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    label = f"{key['model']['name']}__{key['pruner']['name']}__{key['sparsity']}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label) + f"__{digest}"


def prepare(cfg: DictConfig) -> Run:
    """Validate every setting (raises ValueError naming the bad value) without loading anything."""
    pruner_cfg = OmegaConf.to_container(cfg.pruner, resolve=True)
    pattern = SparsityPattern.parse(cfg.sparsity)
    layers = resolve_layers(OmegaConf.to_container(cfg.prune.layers) if OmegaConf.is_config(cfg.prune.layers)
                            else cfg.prune.layers)
    check_dataset_names(cfg.eval.datasets)
    model = ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))
    device = str(cfg.device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is available: use device=cpu or device=auto")
    elif device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device={device!r} is not valid: accepted auto, cpu, cuda, cuda:N")
    return Run(cfg, model, pruner_cfg, pattern, layers, device)


def _rows(run: Run, rid: str, results: list[dict], layers_label: str) -> list[dict]:
    c = run.cfg
    base = {"run_id": rid, "model": run.model.name, "pruner": run.pruner_cfg["name"],
            "sparsity": "0" if run.is_dense else run.pattern.label, "layers": layers_label,
            "protocol": c.get("protocol_name", "custom"), "calib_dataset": c.calib.dataset,
            "calib_nsamples": c.calib.nsamples, "calib_seqlen": c.calib.seqlen, "eval_seqlen": c.eval.seqlen,
            "eval_max_windows": c.eval.max_windows, "seed": c.seed}
    return [{**base, **r} for r in results]


def evaluate(model, tokenizer, run: Run) -> list[dict]:
    """Perplexity per dataset (plus zero-shot tasks when asked); unavailable data is a row, not a crash."""
    c, rows = run.cfg, []
    model.to(run.device)
    for name in c.eval.datasets:
        try:
            ids = eval_tokens(name, tokenizer, c.data.local_dir, c.eval.seqlen, c.cache_dir)
        except DatasetUnavailable as err:
            log.warning("%s", err)
            rows.append({"dataset": name, "metric": "ppl", "value": float("nan"), "status": "unavailable",
                         "message": str(err)})
            continue
        ppl = perplexity(model, ids, c.eval.seqlen, run.device, c.eval.max_windows, c.eval.batch_size, f"{name} perplexity")
        status = "ok" if math.isfinite(ppl) else "nan"
        log.info("%s perplexity %.4g", name, ppl)
        rows.append({"dataset": name, "metric": "ppl", "value": ppl, "status": status, "message": ""})
    tasks = list(c.eval.zeroshot.tasks or [])
    if tasks:
        from eval.zeroshot import evaluate_zeroshot

        rows += evaluate_zeroshot(model, tokenizer, tasks, c.eval.zeroshot.limit, c.data.local_dir, run.device,
                                  cache_dir=str(Path(c.cache_dir).expanduser() / "zeroshot"))
    return rows


def _status(rows: list[dict]) -> str:
    return "nan" if any(r["status"] == "nan" for r in rows) else "ok"


def _manifest(run: Run, key: dict, status: str, times: dict, memory: dict, extra: dict) -> dict:
    return {"status": status, "run_key": key, "config": OmegaConf.to_container(run.cfg, resolve=True),
            "versions": provenance.versions(), "git": provenance.git_revision(),
            "hardware": provenance.hardware(run.device), "seed": int(run.cfg.seed), "seconds": times,
            "memory": memory, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def _failure(err: BaseException) -> str:
    oom = isinstance(err, MemoryError) or (hasattr(torch, "OutOfMemoryError") and isinstance(err, torch.OutOfMemoryError))
    return "oom" if oom or "out of memory" in str(err).lower() else "error"


def _write_dense(run: Run, model, tokenizer) -> None:
    """Evaluate and store the dense baseline unless it is already in the store."""
    key = run.key(needs_calibration=False)
    folder = store.run_dir(run.cfg.results.dir, run_id(key))
    if store.is_complete(folder):
        return
    log.info("dense baseline %s", folder.name)
    start = time.perf_counter()
    with provenance.PeakMemory(run.device) as mem:
        rows = _rows(run, folder.name, evaluate(model, tokenizer, run), "none")
    store.write_csv(folder / "metrics.csv", rows, METRIC_COLUMNS)
    store.write_json(folder / "manifest.json", _manifest(run, key, _status(rows),
                                                         {"eval": time.perf_counter() - start}, mem.summary(), {}))


def run_job(cfg: DictConfig) -> str:
    """Run (or skip) one configured run; return its status."""
    run = prepare(cfg)
    pruner = instantiate(cfg.pruner)
    key = run.key(pruner.needs_calibration)
    rid = run_id(key)
    folder = store.run_dir(cfg.results.dir, rid)
    if store.is_complete(folder):
        log.info("skip %s: already in %s", rid, folder)
        return store.read_manifest(folder)["status"]
    times, memory, extra, rows, layers_label = {}, {}, {}, [], str(run.layers)
    torch.manual_seed(int(cfg.seed))
    try:
        start = time.perf_counter()
        model, tokenizer = load_model(run.model, device=run.device, cache_dir=cfg.cache_dir,
                                      local_dir=cfg.data.local_dir, seed=int(cfg.seed))
        times["load"] = time.perf_counter() - start
        adapter = adapter_for(model)
        if run.is_dense:
            _write_dense(run, model, tokenizer)
            return store.read_manifest(folder)["status"]
        _write_dense(run.dense(), model, tokenizer)
        model.to("cpu")
        n_blocks = len(adapter.blocks(model))
        layers = resolve_layers(run.layers, n_blocks)
        layers_label = run.layers if isinstance(run.layers, str) else f"{min(layers)}-{max(layers)}"
        calib = None
        if pruner.needs_calibration or cfg.prune.diagnostics:
            start = time.perf_counter()
            calib = calibration_tokens(tokenizer, cfg.data.local_dir, cfg.calib.nsamples, cfg.calib.seqlen,
                                       int(cfg.seed), cfg.cache_dir)
            times["calibration_data"] = time.perf_counter() - start
        start = time.perf_counter()
        with provenance.PeakMemory(run.device) as mem:
            report = prune_model(model, adapter, pruner, run.pattern, calib, layers, run.device,
                                 cfg.prune.batch_size, bool(cfg.prune.diagnostics))
        times["prune"], memory["prune"] = time.perf_counter() - start, mem.summary()
        store.write_csv(folder / "layers.csv", report.layers, LAYER_COLUMNS)
        store.write_csv(folder / "blocks.csv", report.blocks, BLOCK_COLUMNS)
        zeros, numel = sum(r["zeros"] for r in report.layers), sum(r["numel"] for r in report.layers)
        extra["measured_sparsity"] = zeros / numel if numel else None
        start = time.perf_counter()
        with provenance.PeakMemory(run.device) as mem:
            rows = evaluate(model, tokenizer, run)
        times["eval"], memory["eval"] = time.perf_counter() - start, mem.summary()
        status = _status(rows)
    except Exception as err:  # recorded as this run's status; the sweep goes on
        status = _failure(err)
        log.error("run %s failed (%s): %s", rid, status, err)
        extra["error"] = "".join(traceback.format_exception_only(type(err), err)).strip()
        extra["traceback"] = traceback.format_exc()
        rows = [{"dataset": "all", "metric": "ppl", "value": float("nan"), "status": status,
                 "message": extra["error"].splitlines()[0][:300]}]
    store.write_csv(folder / "metrics.csv", _rows(run, rid, rows, layers_label), METRIC_COLUMNS)
    store.write_json(folder / "manifest.json", _manifest(run, key, status, times, memory, extra))
    log.info("run %s: %s", rid, status)
    return status
