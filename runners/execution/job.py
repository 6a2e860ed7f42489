"""One run of a sweep: validate, skip if done (or claimed by a concurrent job), claim, load,
calibrate, prune, evaluate, write.

``run_job(cfg)`` is what ``run.py`` calls for every Hydra job. Bad settings raise
``ValueError`` before any model is loaded. Failures after that (NaN perplexity, out of
memory, any exception) become the run's recorded status, so the sweep goes on.
"""
from __future__ import annotations

import logging
import math
import time
import traceback
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from eval.calibration import calibration_tokens
from eval.datasets import DatasetUnavailable, eval_tokens
from eval.blockwise import blockwise_perplexity, use_blockwise
from eval.metrics import PPL, WHOLE_RUN
from eval.perplexity import perplexity

from runners.execution import claims, provenance, store
from core.families import adapter_for
from core.layers import resolve_layers
from runners.execution.engine import prune_model
from runners.execution.identity import Run, data_source_label, prepare, run_id
from runners.execution.models import load_model, load_tokenizer
from runners.execution.save import is_saved, model_folder, save_model, wants_model
from runners.registry import build

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["run_id", "model", "pruner", "sparsity", "layers", "protocol", "calib_dataset", "calib_nsamples",
                  "calib_seqlen", "eval_seqlen", "eval_max_windows", "eval_bos", "seed", "dtype", "device", "data_source",
                  "settings", "dataset", "metric", "value", "status", "message"]
LAYER_COLUMNS = ["block", "name", "shape", "zeros", "numel", "sparsity", "seconds"]
BLOCK_COLUMNS = ["block", "metric", "step", "value"]
SPEED_FILE = store.SPEED  # eval/speed/timing.py's rows; settings, threads and hardware in the manifest


def wants_speed(cfg: DictConfig) -> bool:
    """``measure.speed`` (validated as a bool before any run)."""
    return bool(OmegaConf.select(cfg, "measure.speed", default=False))


def measure_speed(model, run: Run, folder: Path) -> dict:
    """Time ``model`` under each kernel of ``measure.kernels`` on the run's device and write its size
    on disk (eval/speed/); write ``speed.csv`` into the run's folder. Returns the manifest's
    ``speed`` entry (settings, threads, hardware, the file's sha256). The model is left on the CPU
    as it was found; the kernels time copies of it."""
    import tempfile

    from eval.speed.timing import COLUMNS, disk, from_config, measure

    settings, kernels = from_config(run.cfg.measure)
    blocks_of = lambda m: adapter_for(m).blocks(m)  # noqa: E731  (each kernel's copy)
    with tempfile.TemporaryDirectory() as scratch:
        rows = disk(model, blocks_of(model), scratch)
    rows += measure(model, blocks_of, kernels, settings, run.device)
    model.to("cpu")
    sha = store.write_csv(folder / SPEED_FILE, rows, COLUMNS)
    return {"kernels": [k.name for k in kernels], "settings": OmegaConf.to_container(run.cfg.measure, resolve=True),
            "threads": torch.get_num_threads(), "hardware": provenance.hardware(run.device), "sha256": sha}


def _rows(run: Run, key: dict, rid: str, results: list[dict]) -> list[dict]:
    """Metric rows: the run's identity columns, then dataset, metric, value, status, message."""
    c, calib = run.cfg, key["calib"] or {}
    base = {"run_id": rid, "model": run.model.name, "pruner": key["label"], "sparsity": key["sparsity"],
            "layers": key["layers"], "protocol": c.get("protocol_name", "custom"),
            "calib_dataset": calib.get("dataset", c.calib.dataset),
            "calib_nsamples": calib.get("nsamples", c.calib.nsamples), "calib_seqlen": c.calib.seqlen,
            "eval_seqlen": c.eval.seqlen, "eval_max_windows": c.eval.max_windows, "eval_bos": run.bos,
            "seed": key["seed"],
            "dtype": run.dtype, "device": run.device_kind, "data_source": data_source_label(run),
            "settings": run.changed_settings(key["label"])}
    return [{**base, **r} for r in results]


def evaluate(model, tokenizer, run: Run) -> list[dict]:
    """Perplexity per dataset (plus zero-shot tasks when asked); unavailable data is a row, not a crash."""
    c, rows = run.cfg, []
    blockwise = use_blockwise(c.eval.get("blockwise", "auto"), model, run.device)
    if blockwise:
        log.info("perplexity block by block (eval.blockwise=%s): the weights stay in CPU memory", c.eval.get("blockwise"))
    else:
        model.to(run.device)
    bos = None
    if run.bos:  # eval.bos: every perplexity window read after the BOS (eval/perplexity.py)
        bos = tokenizer.bos_token_id
        if bos is None:
            raise ValueError(f"eval.bos=true but the tokenizer of {run.model.name} has no BOS token: "
                             "accepted eval.bos=false for this model")
    for name in c.eval.datasets:
        try:
            ids = eval_tokens(name, tokenizer, c.data.local_dir, c.eval.seqlen, c.cache_dir)
        except DatasetUnavailable as err:
            log.warning("%s", err)
            rows.append({"dataset": name, "metric": PPL.name, "value": float("nan"), "status": "unavailable",
                         "message": str(err)})
            continue
        if blockwise:
            ppl = blockwise_perplexity(model, ids, c.eval.seqlen, run.device, c.eval.max_windows, c.eval.batch_size,
                                       bos=bos)
        else:
            ppl = perplexity(model, ids, c.eval.seqlen, run.device, c.eval.max_windows, c.eval.batch_size,
                             f"{name} perplexity", bos=bos)
        status = "ok" if math.isfinite(ppl) else "nan"
        log.info("%s perplexity %.4g", name, ppl)
        rows.append({"dataset": name, "metric": PPL.name, "value": ppl, "status": status, "message": ""})
    tasks = list(c.eval.zeroshot.tasks or [])
    if tasks:
        from eval.zeroshot import evaluate_zeroshot

        if blockwise and run.device != "cpu":  # larger than the device: accelerate's offload under lm-eval
            from eval.blockwise import dispatch_for_zeroshot

            model = dispatch_for_zeroshot(model, run.device)
        rows += evaluate_zeroshot(model, tokenizer, tasks, c.eval.zeroshot.limit, c.data.local_dir, run.device,
                                  cache_dir=str(Path(c.cache_dir).expanduser() / "zeroshot"))
    return rows


def _status(rows: list[dict]) -> str:
    """``nan`` if any metric is not finite; ``unavailable`` when no metric could be computed at all
    (never ``ok`` without a number: such a run is retried on the next sweep); else ``ok``."""
    if any(r["status"] == "nan" for r in rows):
        return "nan"
    return "ok" if any(r["status"] == "ok" for r in rows) else "unavailable"


def _manifest(run: Run, key: dict, status: str, times: dict, memory: dict, extra: dict) -> dict:
    return {"status": status, "run_key": key, "config": OmegaConf.to_container(run.cfg, resolve=True),
            "versions": provenance.versions(), "constraints": provenance.constraints(),
            "git": provenance.git_revision(),
            "hardware": provenance.hardware(run.device), "seed": run.seed, "seconds": times,
            "memory": memory, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def _failure(err: BaseException) -> str:
    if isinstance(err, DatasetUnavailable):
        return "unavailable"
    oom = isinstance(err, MemoryError) or (hasattr(torch, "OutOfMemoryError") and isinstance(err, torch.OutOfMemoryError))
    return "oom" if oom or "out of memory" in str(err).lower() else "error"


def _retry_failed(cfg: DictConfig) -> bool:
    return bool(cfg.get("retry_failed", False))


def _done(folder: Path, cfg: DictConfig, want_model: bool) -> bool:
    """Stored and complete; with ``save.model=true`` an ok run without its saved model is not done
    (it is computed again so that the model exists: the numbers it stores are the same); with
    ``measure.speed=true`` likewise an ok run without its speed.csv."""
    if not store.is_done(folder, _retry_failed(cfg)):
        return False
    if wants_speed(cfg):
        manifest = store.read_manifest(folder) or {}
        if manifest.get("status") == "ok" and "speed" not in manifest:
            log.info("run %s is stored without its speed (measure.speed=true): computing it again", folder.name)
            return False
    if want_model:
        manifest = store.read_manifest(folder) or {}
        saved = manifest.get("saved_model")
        if manifest.get("status") == "ok" and not (saved and is_saved(Path(saved))):
            log.info("run %s is stored without its model (save.model=true): computing it again", folder.name)
            return False
    return True


def _claim(folder: Path, cfg: DictConfig, quiet: bool = False, want_model: bool = False) -> claims.Claim | None:
    """Claim a run that is not done; None (after one log line) when it is done or another job holds it.
    A damaged run is logged in one line and its old files are removed: it is computed again.
    ``quiet``: no line for a run that is simply done (the dense baseline, checked by every job)."""
    state, reason = store.check_run(folder)
    if state == store.DAMAGED:
        store.warn_damaged(folder, reason, "computing it again")
    elif _done(folder, cfg, want_model):
        (log.debug if quiet else log.info)("skip %s: already in %s", folder.name, folder.parent)
        claims.remove_if_stale(folder)
        return None
    claim = claims.acquire(folder)
    if claim is None:
        log.info("skip %s: claimed by another job (%s)", folder.name,
                 claims.describe(claims.read_claim(folder) or {}))
        return None
    if _done(folder, cfg, want_model):  # finished by another job between our check and the claim
        claim.release()
        log.info("skip %s: finished by another job", folder.name)
        return None
    store.clear_run(folder)
    return claim


def _failed(err: BaseException) -> tuple[str, list[dict], dict]:
    """``(status, rows, manifest entries)`` of a run that raised ``err``."""
    status = _failure(err)
    error = "".join(traceback.format_exception_only(type(err), err)).strip()
    rows = [{"dataset": WHOLE_RUN, "metric": PPL.name, "value": float("nan"), "status": status,
             "message": error.splitlines()[0][:300]}]
    return status, rows, {"error": error, "traceback": traceback.format_exc()}


def _write_dense(run: Run, model, tokenizer, claimed: bool = False) -> str:
    """Evaluate and store the dense baseline ``run`` (``Run.dense()``: its own configuration)
    unless it is in the store or another job computes it (``claimed``: this job already holds its
    claim). Return its status as ``run_job`` does: the status computed here, else
    ``skipped:<stored status>`` or ``skipped:claimed``. A failure of its evaluation is its own
    status, recorded in its own manifest: it never raises, so the pruned run that asked for it goes
    on (only a failure to write the store propagates)."""
    key = run.key(None)
    folder = store.run_dir(run.cfg.results.dir, run_id(key))
    claim = None if claimed else _claim(folder, run.cfg, quiet=True)
    if claim is None and not claimed:
        manifest = store.read_manifest(folder)
        return f"skipped:{manifest['status'] if manifest else 'claimed'}"
    try:
        log.info("dense baseline %s", folder.name)
        extra, start = {}, time.perf_counter()
        mem = provenance.PeakMemory(run.device)
        try:
            with mem:
                rows = evaluate(model, tokenizer, run)
            status = _status(rows)
            if wants_speed(run.cfg) and status == "ok":
                extra["speed"] = measure_speed(model, run, folder)
                extra["sha256"] = {SPEED_FILE: extra["speed"].pop("sha256")}
        except Exception as err:  # the dense run's own status; the run that asked for it goes on
            status, rows, extra = _failed(err)
            log.error("dense baseline %s failed (%s): %s", folder.name, status, err)
        store.finish_run(folder, _rows(run, key, folder.name, rows), METRIC_COLUMNS,
                         _manifest(run, key, status, {"eval": time.perf_counter() - start}, mem.summary(), extra))
        return status
    finally:
        if claim is not None:
            claim.release()


class SettingsError(ValueError):
    """A rejected setting; the message is one line naming the key, the value and what is accepted."""


def resolve(cfg: DictConfig):
    """``(run, pruner, key)`` of a configured run, loading nothing; bad settings raise SettingsError."""
    try:
        run = prepare(cfg)
        pruner = build(cfg.pruner)
        return run, pruner, run.key(pruner)
    except (ValueError, InstantiationException) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        raise SettingsError(str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)) from err


def run_job(cfg: DictConfig, outcome: dict | None = None) -> str:
    """Run (or skip) one configured run; return its status, ``skipped:<stored status>`` when the
    store has it (``retry_failed=true`` recomputes error/oom/nan runs), ``skipped:claimed`` when
    another live job holds its claim. A damaged run is computed again.

    A pruned run first has its dense baseline evaluated and stored, as a run of its own, when the
    store lacks it; ``outcome`` (a dict, when given) then gets ``{"dense": {"run_id": ...,
    "status": ...}}`` with the baseline's status in the same form (``run.py`` writes it into the
    job's status.json, and a failed baseline makes the sweep exit 1)."""
    run, pruner, key = resolve(cfg)
    if run.is_dense:  # pruner=dense: the baseline's own configuration, whatever else the job set
        run = run.dense()
    rid = run_id(key)
    folder = store.run_dir(cfg.results.dir, rid)
    store.remove_temp_files(cfg.results.dir)  # leftovers of killed writers (a live writer's are kept)
    claim = _claim(folder, cfg, want_model=wants_model(cfg) and not run.is_dense)
    if claim is None:
        manifest = store.read_manifest(folder)
        return f"skipped:{manifest['status'] if manifest else 'claimed'}"
    try:
        return _compute(run.cfg, run, pruner, key, rid, folder, {} if outcome is None else outcome)
    finally:
        claim.release()


def _compute(cfg: DictConfig, run: Run, pruner, key: dict, rid: str, folder: Path, outcome: dict) -> str:
    """Load, calibrate, prune, evaluate and write one claimed run; failures become its status
    (the dense baseline's, evaluated here first, become the baseline's own: ``outcome["dense"]``)."""
    times, memory, extra, rows = {}, {}, {}, []
    torch.manual_seed(int(cfg.seed))
    try:
        calib = None
        tokenizer = load_tokenizer(run.model, cfg.cache_dir, cfg.data.local_dir)
        if not run.is_dense and (run.needs_calibration(pruner) or cfg.prune.diagnostics):
            # Before the model loads: calibration data that cannot be had fails in seconds.
            start = time.perf_counter()
            got = calibration_tokens(tokenizer, cfg.calib.dataset, cfg.data.local_dir, run.calib_nsamples(pruner),
                                     cfg.calib.seqlen, int(cfg.seed), cfg.cache_dir)
            calib, extra["calibration"] = got.tokens, got.pool
            times["calibration_data"] = time.perf_counter() - start
        start = time.perf_counter()
        model, tokenizer = load_model(run.model, device=run.device, cache_dir=cfg.cache_dir,
                                      local_dir=cfg.data.local_dir, seed=int(cfg.seed), tokenizer=tokenizer)
        times["load"] = time.perf_counter() - start
        if run.is_dense:  # evaluation only: needs no family adapter
            return _write_dense(run, model, tokenizer, claimed=True)
        dense = run.dense()
        outcome["dense"] = {"run_id": run_id(dense.key(None)), "status": _write_dense(dense, model, tokenizer)}
        model.to("cpu")
        adapter = adapter_for(model)
        layers = resolve_layers(run.layers, len(adapter.blocks(model)))
        start = time.perf_counter()
        with provenance.PeakMemory(run.device) as mem:
            report = prune_model(model, adapter, pruner, run.pattern, calib, layers, run.device,
                                 cfg.prune.batch_size, bool(cfg.prune.diagnostics),
                                 run.allocation if run.allocates else None, run.refine if run.refines else None)
        times["prune"], memory["prune"] = time.perf_counter() - start, mem.summary()
        extra["fallbacks"] = {"total": sum(report.fallbacks.values()), "by_kind": report.fallbacks}
        if report.fallbacks:
            log.warning("run %s: numerical fallbacks %s (per block in blocks.csv)", rid, report.fallbacks)
        # checksums of the bytes written, recorded in the manifest (store.check_run)
        extra["sha256"] = {"layers.csv": store.write_csv(folder / "layers.csv", report.layers, LAYER_COLUMNS),
                           "blocks.csv": store.write_csv(folder / "blocks.csv", report.blocks, BLOCK_COLUMNS)}
        zeros, numel = sum(r["zeros"] for r in report.layers), sum(r["numel"] for r in report.layers)
        extra["measured_sparsity"] = zeros / numel if numel else None
        start = time.perf_counter()
        with provenance.PeakMemory(run.device) as mem:
            rows = evaluate(model, tokenizer, run)
        times["eval"], memory["eval"] = time.perf_counter() - start, mem.summary()
        status = _status(rows)
        if wants_speed(cfg) and status == "ok":
            start = time.perf_counter()
            extra["speed"] = measure_speed(model, run, folder)
            extra["sha256"][SPEED_FILE] = extra["speed"].pop("sha256")
            times["speed"] = time.perf_counter() - start
        if wants_model(cfg):
            start = time.perf_counter()
            extra["saved_model"] = str(save_model(model, tokenizer, model_folder(cfg, folder, rid)).resolve())
            times["save"] = time.perf_counter() - start
            log.info("run %s: pruned model saved in %s", rid, extra["saved_model"])
    except Exception as err:  # recorded as this run's status; the sweep goes on
        status, rows, failure = _failed(err)
        log.error("run %s failed (%s): %s", rid, status, err)
        extra.update(failure)
    store.finish_run(folder, _rows(run, key, rid, rows), METRIC_COLUMNS, _manifest(run, key, status, times, memory,
                                                                                  extra))
    log.info("run %s: %s", rid, status)
    return status
