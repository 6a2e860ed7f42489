"""Plan a sweep before running it: ``python run.py -m ... plan=true``.

Loads nothing but each model's ``config.json`` shapes (``runners.validate.model_shape``: the
shipped ``conf/shapes/<model>.json`` for the presets) and, for every run of the sweep plus each
model's dense baseline, prints its run id, whether the store already has it, and the predicted
peak CPU memory, peak GPU memory and time, from the shapes and the protocol. The formulas are
written out in docs/cost-model.md; the constants below say where they were measured.

What a pruner costs is its own: each pruner carries its cost model (``BlockPruner.cost``, written
in the pruner's module; pruners/cost.py), and a refinement its own (``Refinement.cost``). This
module adds the engine's part (the calibration hidden states, one batch's activations),
evaluation, start-up and zero-shot, and knows no pruner by name. A run whose pruner (or
refinement) declares no cost model is printed "not estimated".

Memory (bytes; ``a`` = bytes per weight of the run's dtype, ``T`` = calibration tokens,
``s`` = calibration sequence length, ``h`` hidden, ``f`` MLP width):

* CPU run: ``BASE + weights + max(prune working set, evaluation working set)``;
* GPU run: GPU peak ``max(block weights + prune working set, evaluation on the device)``,
  CPU peak ``BASE + weights`` (the model stays in CPU memory, one block on the device).

Time: each pruned block's cost-model seconds (token-dependent FLOPs at the rate calibrated from
``make bench`` on SmolLM2, plus its token-independent seconds), plus evaluation FLOPs at the pass
rate, plus zero-shot requests at the measured request rate scaled by parameter count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from omegaconf import DictConfig

from pruners.base import needs_calibration
from pruners.cost import BENCH_TOKENS, PASS_RATE, SMOLLM2, STAT_BYTES, Cost, RefineCost, Shape, pass_flops  # noqa: F401
from pruners.allocation import AllocationCost, allocates
from pruners.refine import refines

GB = 1e9
# Resident memory of a run process before any model loads (torch, transformers, lm-eval, hydra
# imported): 440-482 MB measured on this 2-core machine (torch 2.13); the larger is used.
BASE_BYTES = 482 * 2**20
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# GPU: no GPU has been lent to this project yet, so this is an assumption, not a measurement:
# an effective 100 TFLOP/s for float16 matrix products (about a third of an A100/H100 peak).
GPU_FLOPS = 100e12
GPU_MEMORY = 80 * 2**30  # eval.blockwise=auto goes block by block when the model does not fit 80 GB
# Start-up of one run process (imports, Hydra, loading SmolLM2 from its cache): a whole smoke
# run takes 9-10 s on this CPU (docs/data.md "Time per protocol"), nearly all of it this.
STARTUP_SECONDS = 10.0
# Zero-shot: 3.3 loglikelihood requests/s measured for dense SmolLM2 on this CPU (docs/store-and-report.md
# "Zero-shot accuracy"); scaled by parameter count for other models.
ZEROSHOT_RATE = 3.3
# Characters per token of the SmolLM2 tokenizer on the local WikiText-2 test file (1,288,556
# characters -> 304,986 tokens, docs/data.md); used for every model's windows count.
CHARS_PER_TOKEN = 1288556 / 304986
# Public zero-shot sets that have no local copy (hub only): documents x choices.
HUB_ONLY_REQUESTS = {"hellaswag": 10042 * 4, "winogrande": 1267 * 2}
CHOICES = {"boolq": 2, "rte": 2, "piqa": 2}


# ---- what one pruned block costs ---------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """What the plan prices for one pruned block: the pruner's cost model and whether pruning
    reads calibration data (the pruner or the refinement), and the refinement's cost (None: no
    refinement). ``cost`` None, or a refinement without one: not estimated."""

    name: str
    cost: Cost | None
    calibrated: bool
    refine: RefineCost | None = None
    refine_name: str | None = None
    allocation: AllocationCost | None = None  # a layer-wise allocation's passes and measure (None: uniform)

    @classmethod
    def of(cls, pruner, refine=None, allocation=None) -> "Method":
        """From the run's pruner, refinement and allocation objects (an inactive refinement, or a
        uniform allocation, counts as none)."""
        refine = refine if refines(refine) else None
        allocation = allocation if allocates(allocation) else None
        return cls(pruner.name, pruner.cost, needs_calibration(pruner, allocation, refine),
                   refine.cost if refine is not None else None, refine.name if refine is not None else None,
                   allocation.cost if allocation is not None else None)

    @property
    def label(self) -> str:
        return self.name if self.refine_name is None else f"{self.name}+{self.refine_name}"

    @property
    def not_estimated(self) -> str | None:
        """Why the plan cannot price it (None: it can)."""
        if self.cost is None:
            return f"pruner {self.name} declares no cost model"
        if self.refine_name is not None and self.refine is None:
            return f"refinement {self.refine_name} declares no cost model"
        return None


@lru_cache(maxsize=None)
def method(spec) -> Method:
    """A ``Method`` from ``pruner`` or ``pruner+refinement`` (``make bench``'s names, built from their
    configs: runners/registry.py); a ``Method`` as it is."""
    if isinstance(spec, Method):
        return spec
    from runners.registry import build_method

    return Method.of(*build_method(spec))


def prune_flops(shape: Shape, spec, tokens: int, seqlen: int) -> float:
    """FLOPs of pruning one block that grow with the calibration tokens (the pruner's: its passes,
    statistics, per-token products), run at the pruner's calibrated rate."""
    return method(spec).cost.flops(shape, tokens, seqlen)


def prune_seconds(shape: Shape, spec, tokens: int, seqlen: int) -> float:
    """CPU seconds of pruning one block: the pruner's cost-model seconds (its token-dependent FLOPs
    at its calibrated rate plus its fixed seconds) plus the refinement's."""
    m = method(spec)
    seconds = m.cost.seconds(shape, tokens, seqlen)
    if m.refine is not None:
        seconds += m.refine.seconds(shape, tokens, seqlen)
    if m.allocation is not None:  # its dense passes (OWL, DLP) and its measure (AlphaPruning's SVDs)
        seconds += m.allocation.passes * pass_flops(shape, tokens, seqlen) / PASS_RATE + m.allocation.seconds(shape)
    return seconds


# ---- memory -----------------------------------------------------------------------------


def pruner_working_bytes(shape: Shape, spec, tokens: int) -> float:
    """Memory a pruner holds for one block beyond the block and its hidden states."""
    return method(spec).cost.working_bytes(shape, tokens)


def method_working_bytes(shape: Shape, spec, tokens: int, weight_bytes: int) -> float:
    """``pruner_working_bytes`` with the refinement's memory (DSnoT: the block's dense weights, and
    its swaps' temporaries when larger than the pruner's own)."""
    m = method(spec)
    own = m.cost.working_bytes(shape, tokens)
    return own if m.refine is None else m.refine.working_bytes(shape, tokens, weight_bytes, own)


def prune_bytes(shape: Shape, spec, tokens: int, seqlen: int, batch: int, weight_bytes: int,
                diagnostics: bool) -> float:
    """Working set of the pruning stage for one block: hidden states of the calibration set
    (inputs, outputs, and the dense outputs for diagnostics), one batch's activations (both only
    when pruning reads calibration data or diagnostics are on), and the method's own memory."""
    calibrated = method(spec).calibrated or diagnostics
    states = (3 if diagnostics else 2) * tokens * shape.hidden * weight_bytes if calibrated else 0
    acts = batch * seqlen * (3 * shape.active_ffn + shape.heads * seqlen) * weight_bytes if calibrated else 0
    return states + acts + method_working_bytes(shape, spec, tokens, weight_bytes)


def eval_bytes(shape: Shape, seqlen: int, batch: int, weight_bytes: int) -> float:
    """Working set of perplexity: float32 logits and their log-softmax, one window's activations."""
    return batch * seqlen * (2 * shape.vocab * STAT_BYTES + (3 * shape.active_ffn + shape.heads * seqlen) * weight_bytes)


# ---- the protocol's token counts ----------------------------------------------------------


def eval_tokens(cfg: DictConfig) -> tuple[int, list[str]]:
    """Evaluation tokens of the protocol (windows x seqlen per dataset) and notes on datasets
    that are not counted. Window counts come from the local test files' sizes."""
    from eval.datasets import CORPORA

    seqlen, cap, local = int(cfg.eval.seqlen), cfg.eval.max_windows, cfg.data.local_dir
    total, notes = 0, []
    for name in cfg.eval.datasets:
        data = CORPORA.get(name)
        # Plain-text test files only: a shard's size (JSON, often gzipped) says little about its tokens.
        file = data.local_file(local, "test") if local and data and not data.splits["test"].shard else None
        if file is None:
            notes.append(f"{name}: no local test file, not counted")
            continue
        windows = int(file.stat().st_size / CHARS_PER_TOKEN) // seqlen
        total += (windows if cap is None else min(int(cap), windows)) * seqlen
    return total, notes


def zeroshot_requests(cfg: DictConfig) -> tuple[int, list[str]]:
    """Loglikelihood requests of the protocol's zero-shot tasks (one per document and choice),
    counted from the local task files (eval/zeroshot.py), and notes on tasks not counted."""
    tasks = list(cfg.eval.zeroshot.tasks or [])
    if not tasks:
        return 0, []
    from eval.zeroshot import LOCAL_TASKS, convert_local

    limit, local = cfg.eval.zeroshot.limit, cfg.data.local_dir
    total, notes = 0, []
    for task in tasks:
        if local and task in LOCAL_TASKS:
            try:
                docs = convert_local(task, local)
            except (OSError, ValueError, KeyError) as err:
                notes.append(f"{task}: local copy unreadable ({type(err).__name__}), not counted")
                continue
            counts = [CHOICES.get(task) or len(d["choices"]["text"]) for d in docs]
        elif not local and task in HUB_ONLY_REQUESTS:
            total += HUB_ONLY_REQUESTS[task]
            continue
        else:
            notes.append(f"{task}: {'no local copy (unavailable offline)' if local else 'size unknown'}, not counted")
            continue
        if limit is not None:
            keep = int(limit) if limit >= 1 else int(math.ceil(limit * len(counts)))
            counts = counts[:keep]
        total += sum(counts)
    return total, notes


# ---- one run ----------------------------------------------------------------------------


@dataclass
class Estimate:
    """Predicted peaks (bytes) and seconds of one run."""
    cpu_ram: float
    cpu_seconds: float
    gpu_mem: float
    gpu_ram: float
    gpu_seconds: float


def estimate(shape: Shape, cfg: DictConfig, spec, n_layers: int, eval_tok: int, requests: int,
             dtype_cpu: str, dtype_gpu: str = "float16") -> Estimate:
    """Predicted peak memory and time of one run on the CPU and on one GPU; ``spec`` is its
    ``Method`` (or ``pruner+refinement`` by name), ``n_layers`` its pruned blocks (0: the dense
    baseline, which prunes nothing)."""
    m = method(spec)
    tokens, seqlen = int(cfg.calib.nsamples) * int(cfg.calib.seqlen), int(cfg.calib.seqlen)
    batch, diag = int(cfg.prune.batch_size), bool(cfg.prune.diagnostics)
    s_eval, b_eval = int(cfg.eval.seqlen), int(cfg.eval.batch_size)

    def peaks(weight_bytes: int):
        prune = prune_bytes(shape, m, tokens, seqlen, batch, weight_bytes, diag) if n_layers else 0.0
        return prune, eval_bytes(shape, s_eval, b_eval, weight_bytes)

    a_cpu, a_gpu = DTYPE_BYTES[dtype_cpu], DTYPE_BYTES[dtype_gpu]
    prune_c, eval_c = peaks(a_cpu)
    cpu_ram = BASE_BYTES + shape.params * a_cpu + max(prune_c, eval_c)
    prune_g, eval_g = peaks(a_gpu)
    weights_g = shape.params * a_gpu
    whole = weights_g + eval_g
    eval_gpu = whole if whole <= GPU_MEMORY else shape.block_params * a_gpu + eval_g
    gpu_mem = max(shape.block_params * a_gpu + prune_g, eval_gpu)

    def seconds(speedup: float) -> float:
        """Start-up, then evaluation and pruning at the CPU rates divided by ``speedup``."""
        flops_eval = eval_tok * (2.0 * (shape.blocks * shape.active_params + shape.vocab * shape.hidden)
                                 + 4.0 * s_eval * shape.heads * shape.head_dim * shape.blocks)
        work = flops_eval / PASS_RATE
        if n_layers:
            # blocks before the last pruned one that are not pruned still carry the states
            work += n_layers * prune_seconds(shape, m, tokens, seqlen)
        return STARTUP_SECONDS + work / speedup

    rate_scale = SMOLLM2.params / shape.params
    cpu_s = seconds(1.0) + requests / (ZEROSHOT_RATE * rate_scale)
    # one GPU: everything at GPU_FLOPS over the CPU's pass rate (an assumption, see GPU_FLOPS)
    gpu_speedup = GPU_FLOPS / PASS_RATE
    gpu_s = seconds(gpu_speedup) + requests / (ZEROSHOT_RATE * rate_scale * gpu_speedup)
    return Estimate(cpu_ram, cpu_s, gpu_mem, BASE_BYTES + weights_g, gpu_s)


def shape_of(cfg: DictConfig) -> Shape | None:
    """The model's shapes from its config.json only (None: unknown)."""
    from runners.validate import model_shape

    raw = model_shape(cfg)
    if raw is None:
        return None
    if cfg.model.source == "tiny":
        raw = {**raw, "vocab_size": (cfg.model.tiny or {}).get("vocab_size", 50272)}
    return Shape.from_config(raw, str(cfg.model.family))


def _human_time(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _gb(value: float) -> str:
    return f"{value / GB:.2f} GB" if value < 10 * GB else f"{value / GB:.1f} GB"


def plan_rows(argv: list[str]) -> tuple[list[dict], list[str]]:
    """One row per run of the sweep (and per dense baseline), and the notes to print."""
    from hydra import compose, initialize_config_dir

    from core.layers import resolve_layers
    from pruners.dense import DENSE
    from runners.cli import CONF
    from runners.execution import store
    from runners.execution.identity import run_id
    from runners.execution.job import resolve
    from runners.cli import sweep_points

    rows, notes, seen = [], [], set()
    points = sweep_points(argv)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for point in points:
            cfg = compose(config_name="config", overrides=[o for o in point if not o.lstrip("+~").startswith("hydra")])
            run, pruner, key = resolve(cfg)
            shape = shape_of(cfg)
            eval_tok, eval_notes = eval_tokens(cfg)
            requests, zs_notes = zeroshot_requests(cfg)
            for note in eval_notes + zs_notes:
                if note not in notes:
                    notes.append(note)
            dense_run = run.dense()
            dense_key = dense_run.key(None)
            pruned = Method.of(pruner, run.refine if run.refines else None, run.allocation if run.allocates else None)
            for this, this_key, spec in ((dense_run, dense_key, Method.of(DENSE)), (run, key, pruned)):
                rid = run_id(this_key)
                if rid in seen:
                    continue
                seen.add(rid)
                dense = this is dense_run
                row = {"run_id": rid, "model": cfg.model.name, "pruner": spec.name,
                       "sparsity": "0" if dense else run.pattern.label,
                       "stored": store.is_done(store.run_dir(cfg.results.dir, rid), bool(cfg.retry_failed)),
                       "zeroshot_requests": requests, "eval_tokens": eval_tok, "estimate": None}
                if shape is None:
                    row["not_estimated"] = "no config.json shapes"
                elif spec.not_estimated:
                    row["not_estimated"], row["no_cost_model"] = spec.not_estimated, True
                else:
                    layers = [] if dense else resolve_layers(run.layers, shape.blocks)
                    row["estimate"] = estimate(shape, cfg, spec, len(layers), eval_tok, requests,
                                               run.dtype if run.device_kind == "cpu" else "float32")
                rows.append(row)
    return rows, notes


def format_plan(rows: list[dict], notes: list[str]) -> str:
    """The plan as a table (one line per run) with the totals and the notes."""
    head = (f"{'run id':58} {'stored':6} {'CPU run: RAM':>12} {'time':>7}   "
            f"{'GPU run (fp16): GPU':>19} {'RAM':>8} {'time*':>7}")
    lines = [head, "-" * len(head)]
    todo_cpu = todo_gpu = 0.0
    for r in rows:
        e = r["estimate"]
        if e is None:
            lines.append(f"{r['run_id']:58} {'yes' if r['stored'] else 'no':6} ({r['not_estimated']}: not estimated)")
            continue
        if not r["stored"]:
            todo_cpu, todo_gpu = todo_cpu + e.cpu_seconds, todo_gpu + e.gpu_seconds
        lines.append(f"{r['run_id']:58} {'yes' if r['stored'] else 'no':6} {_gb(e.cpu_ram):>12} "
                     f"{_human_time(e.cpu_seconds):>7}   {_gb(e.gpu_mem):>19} {_gb(e.gpu_ram):>8} "
                     f"{_human_time(e.gpu_seconds):>7}")
    n_todo = sum(not r["stored"] for r in rows)
    unpriced = sum(bool(r.get("no_cost_model")) and not r["stored"] for r in rows)
    lines.append(f"{len(rows)} runs ({n_todo} to compute): {_human_time(todo_cpu)} on this CPU, "
                 f"{_human_time(todo_gpu)} on one GPU* one after the other"
                 + (f", without the {unpriced} not estimated" if unpriced else ""))
    req = sorted({r["zeroshot_requests"] for r in rows})
    if any(req):
        lines.append(f"zero-shot: {', '.join(f'{x:,}' for x in req)} loglikelihood requests per run "
                     f"(counted from the local task files); {ZEROSHOT_RATE} requests/s measured for SmolLM2 "
                     "on this CPU, scaled by parameter count, is in the times")
    lines.append("* GPU times assume an effective 100 TFLOP/s (no GPU measured yet); CPU constants are "
                 "calibrated from `make bench` on SmolLM2 (docs/cost-model.md)")
    lines.extend(f"note: {n}" for n in notes)
    return "\n".join(lines)


def plan_requested(argv: list[str]) -> bool:
    """Does the command line ask for ``plan=true``? (validated by runners/validate.py first)."""
    # a swept plan=true,false plans too: no job is launched half-planned
    return any(a.split("=", 1)[0] == "plan" and "true" in a.split("=", 1)[1].strip().lower().split(",")
               for a in argv if "=" in a)


def main(argv: list[str]) -> int:
    """Print the plan of ``argv``'s sweep; nothing is loaded or run."""
    rows, notes = plan_rows(argv)
    print(format_plan(rows, notes), flush=True)
    return 0
