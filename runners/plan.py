"""Plan a sweep before running it: ``python run.py -m ... plan=true``.

Loads nothing but each model's ``config.json`` shapes (``runners.validate.model_shape``: the
shipped ``conf/shapes/<model>.json`` for the presets) and, for every run of the sweep plus each
model's dense baseline, prints its run id, whether the store already has it, and the predicted
peak CPU memory, peak GPU memory and time, from the shapes and the protocol. The formulas are
written out in the README ("Plan a sweep"); the constants below say where they were measured.

Memory (bytes; ``a`` = bytes per weight of the run's dtype, ``T`` = calibration tokens,
``s`` = calibration sequence length, ``h`` hidden, ``f`` MLP width, ``d_g`` the input width of
input group g):

* CPU run: ``BASE + weights + max(prune working set, evaluation working set)``;
* GPU run: GPU peak ``max(block weights + prune working set, evaluation on the device)``,
  CPU peak ``BASE + weights`` (the model stays in CPU memory, one block on the device).

Time: FLOPs divided by a throughput calibrated per pruner from ``make bench`` on SmolLM2
(``THROUGHPUT``), plus evaluation FLOPs at the pass throughput, plus zero-shot requests at the
measured request rate scaled by parameter count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

GB = 1e9
# Resident memory of a run process before any model loads (torch, transformers, lm-eval, hydra
# imported): 440-482 MB measured on this 2-core machine (torch 2.13); the larger is used.
BASE_BYTES = 482 * 2**20
# Bytes per weight of the largest Linear that magnitude and Wanda hold while selecting: 20-21
# measured on the LLaMA-2-7B block of `make bench-scale` (peak RSS minus BASE, the block and its
# hidden states, over the 45M weights of gate/up); the itemized count (4 + 4 + 1 + 4 for
# magnitude, 4 + 8 + 1 + 4 plus the sort's own buffers for Wanda) is 13-21.
SELECT_BYTES = 21
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
STAT_BYTES = 4  # statistics, Hessians and SparseLLM auxiliaries are float32 whatever the dtype

# Effective FLOP/s on the 2-core AMD EPYC CPU, calibrated from `make bench` (README "Memory and
# speed": SmolLM2-135M, 32 x 2048 tokens, 30 blocks, 70%): FLOPs of each pruner's model below
# divided by its measured seconds (T_pass 175.7 s; magnitude 2.7 s, Wanda 320.7 s,
# SparseGPT 399.2 s, SparseLLM 1627.6 s). `calibrate_cpu()` recomputes them from those seconds.
BENCH_SECONDS = {"pass": 175.7, "magnitude": 2.7, "wanda": 320.7, "sparsegpt": 399.2, "sparsellm": 1627.6}
BENCH_TOKENS = (32, 2048)
# GPU: no GPU has been lent to this project yet, so this is an assumption, not a measurement:
# an effective 100 TFLOP/s for float16 matrix products (about a third of an A100/H100 peak).
GPU_FLOPS = 100e12
GPU_MEMORY = 80 * 2**30  # eval.blockwise=auto goes block by block when the model does not fit 80 GB
# Start-up of one run process (imports, Hydra, loading SmolLM2 from its cache): a whole smoke
# run takes 9-10 s on this CPU (README "Time per protocol"), nearly all of it this.
STARTUP_SECONDS = 10.0
# Zero-shot: 3.3 loglikelihood requests/s measured for dense SmolLM2 on this CPU (README
# "Zero-shot accuracy"); scaled by parameter count for other models.
ZEROSHOT_RATE = 3.3
# Characters per token of the SmolLM2 tokenizer on the local WikiText-2 test file (1,288,556
# characters -> 304,986 tokens, README "Data"); used for every model's windows count.
CHARS_PER_TOKEN = 1288556 / 304986
# Public zero-shot sets that have no local copy (hub only): documents x choices.
HUB_ONLY_REQUESTS = {"hellaswag": 10042 * 4, "winogrande": 1267 * 2}
CHOICES = {"boolq": 2, "rte": 2, "piqa": 2}


@dataclass(frozen=True)
class Shape:
    """A decoder's shapes, from its config.json fields."""
    family: str
    hidden: int
    ffn: int
    blocks: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    positions: int
    tied: bool

    @classmethod
    def from_config(cls, raw: dict, family: str) -> "Shape":
        """From config.json fields (llama: intermediate_size; opt: ffn_dim)."""
        hidden, heads = int(raw["hidden_size"]), int(raw.get("num_attention_heads", 1))
        return cls(family=family, hidden=hidden, ffn=int(raw.get("intermediate_size") or raw.get("ffn_dim")),
                   blocks=int(raw["num_hidden_layers"]), heads=heads,
                   kv_heads=int(raw.get("num_key_value_heads") or heads),
                   head_dim=int(raw.get("head_dim") or hidden // heads), vocab=int(raw.get("vocab_size", 50272)),
                   positions=int(raw.get("max_position_embeddings", 2048)),
                   tied=bool(raw.get("tie_word_embeddings", family == "opt")))

    def linears(self) -> list[tuple[str, int, int]]:
        """``(name, in, out)`` of every Linear of one block."""
        h, f, attn, kv = self.hidden, self.ffn, self.heads * self.head_dim, self.kv_heads * self.head_dim
        if self.family == "opt":
            return [("q", h, h), ("k", h, h), ("v", h, h), ("o", h, h), ("fc1", h, f), ("fc2", f, h)]
        return [("q", h, attn), ("k", h, kv), ("v", h, kv), ("o", attn, h),
                ("gate", h, f), ("up", h, f), ("down", f, h)]

    def groups(self) -> list[int]:
        """Input width of each group of Linears sharing one input (one Hessian each)."""
        attn = self.hidden if self.family == "opt" else self.heads * self.head_dim
        return [self.hidden, attn, self.hidden, self.ffn]

    def mlp_linears(self) -> list[tuple[str, int, int]]:
        return [x for x in self.linears() if x[0] in ("fc1", "fc2", "gate", "up", "down")]

    @property
    def block_params(self) -> int:
        return sum(i * o for _, i, o in self.linears())

    @property
    def params(self) -> int:
        """All weights: blocks, embeddings (positions for OPT), the head unless tied."""
        embed = self.vocab * self.hidden + (self.positions + 2) * self.hidden * (self.family == "opt")
        return self.blocks * self.block_params + embed + (0 if self.tied else self.vocab * self.hidden)


# ---- FLOPs ------------------------------------------------------------------------------


def pass_flops(shape: Shape, tokens: int, seqlen: int) -> float:
    """One forward of ``tokens`` through one block: 2 x weights per token, plus the attention
    scores and their weighted sum (2 x seqlen x heads x head_dim each, full square as computed)."""
    return 2.0 * shape.block_params * tokens + 4.0 * tokens * seqlen * shape.heads * shape.head_dim


def sparsegpt_linear_flops(d_in: int, d_out: int) -> float:
    """One SparseGPT call: Cholesky, inverse and Cholesky of the inverse (about d_in^3 together)
    plus the lazy column-block updates of the weights (about d_out x d_in^2)."""
    return float(d_in) ** 3 + float(d_out) * d_in ** 2


def prune_flops(shape: Shape, pruner: str, tokens: int, seqlen: int, iterations: int = 4) -> float:
    """FLOPs of pruning one block (the two passes included for calibrated methods)."""
    passes = 2 * pass_flops(shape, tokens, seqlen)
    if pruner == "magnitude":
        return float(shape.block_params)  # selection only; the throughput constant is per weight
    if pruner == "wanda":
        return passes
    hessians = sum(2.0 * tokens * d * d for d in shape.groups())
    gpt = sum(sparsegpt_linear_flops(i, o) for _, i, o in shape.linears())
    if pruner == "sparsegpt":
        return passes + hessians + gpt
    if pruner in ("sparsellm", "sparsellm_released"):
        mlp = shape.mlp_linears()
        mlp_gpt = sum(sparsegpt_linear_flops(i, o) for _, i, o in mlp)
        mlp_products = 2.0 * tokens * sum(i * o for _, i, o in mlp)
        # per iteration: SparseGPT on each MLP matrix, the Gram matrices of the refits and of
        # the pruned inputs (2 T f^2 each), and about six MLP products per token (README)
        per_iter = mlp_gpt + 2 * 2.0 * tokens * shape.ffn ** 2 + 6 * mlp_products
        return passes + hessians + gpt + iterations * per_iter
    return passes  # dense or a plugin: two passes as a floor


SMOLLM2 = Shape("llama", 576, 1536, 30, 9, 3, 64, 49152, 8192, True)


def calibrate_cpu() -> dict[str, float]:
    """Effective FLOP/s per pruner (and ``pass``), from the measured ``make bench`` seconds."""
    n, s = BENCH_TOKENS
    tokens = n * s
    rates = {"pass": SMOLLM2.blocks * pass_flops(SMOLLM2, tokens, s) / BENCH_SECONDS["pass"]}
    for name in ("magnitude", "wanda", "sparsegpt", "sparsellm"):
        rates[name] = SMOLLM2.blocks * prune_flops(SMOLLM2, name, tokens, s) / BENCH_SECONDS[name]
    return rates


THROUGHPUT = calibrate_cpu()


# ---- memory -----------------------------------------------------------------------------


def pruner_working_bytes(shape: Shape, pruner: str, tokens: int, storage_bytes: int = 4) -> float:
    """Memory a pruner holds for one block beyond the block and its hidden states (float32)."""
    largest = max(i * o for _, i, o in shape.linears())
    if pruner in ("magnitude", "wanda"):
        # the largest Linear's float32 scores, the selection's temporaries (a copy for kthvalue,
        # an int64 row order for wanda's sort), the mask and the pruned copy
        return largest * SELECT_BYTES
    held = sum(STAT_BYTES * d * d for d in shape.groups())  # every group's Hessian
    d_max = max(shape.groups())
    # one call: the damped flipped copy, its Cholesky factor, the inverse built by halves (the
    # result, the two half inverses and a product: 1.5 d^2) and its flipped copy, 4.5 d_in^2 in
    # all (3 d^2 predicted the LLaMA-2-7B block 15% low), plus a float32 transposed weight and the
    # pruned output weight
    call = 4.5 * STAT_BYTES * d_max ** 2 + 2 * STAT_BYTES * max(i * o for _, i, o in shape.linears() if i == d_max)
    if pruner == "sparsegpt":
        return held + call
    if pruner in ("sparsellm", "sparsellm_released"):
        k = 2 if shape.family == "opt" else 3
        aux = tokens * (k * shape.ffn * storage_bytes + 2 * shape.hidden * STAT_BYTES)  # z,(s),p; X, Y
        refit = 2 * STAT_BYTES * shape.ffn ** 2  # Gram of p and its Cholesky factor
        return held + call + aux + refit
    return 0.0


def prune_bytes(shape: Shape, pruner: str, tokens: int, seqlen: int, batch: int, weight_bytes: int,
                diagnostics: bool, storage_bytes: int = 4) -> float:
    """Working set of the pruning stage for one block: hidden states of the calibration set
    (inputs, outputs, and the dense outputs for diagnostics), one batch's activations, and the
    pruner's own memory."""
    calibrated = pruner != "magnitude" or diagnostics
    states = (3 if diagnostics else 2) * tokens * shape.hidden * weight_bytes if calibrated else 0
    acts = batch * seqlen * (3 * shape.ffn + shape.heads * seqlen) * weight_bytes if calibrated else 0
    return states + acts + pruner_working_bytes(shape, pruner, tokens, storage_bytes)


def eval_bytes(shape: Shape, seqlen: int, batch: int, weight_bytes: int) -> float:
    """Working set of perplexity: float32 logits and their log-softmax, one window's activations."""
    return batch * seqlen * (2 * shape.vocab * STAT_BYTES + (3 * shape.ffn + shape.heads * seqlen) * weight_bytes)


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


def estimate(shape: Shape, cfg: DictConfig, pruner: str, n_layers: int, eval_tok: int, requests: int,
             dtype_cpu: str, dtype_gpu: str = "float16") -> Estimate:
    """Predicted peak memory and time of one run on the CPU and on one GPU."""
    dense = pruner == "dense"
    tokens, seqlen = int(cfg.calib.nsamples) * int(cfg.calib.seqlen), int(cfg.calib.seqlen)
    batch, diag = int(cfg.prune.batch_size), bool(cfg.prune.diagnostics)
    storage = 2 if str(OmegaConf.select(cfg, "pruner.storage_dtype", default="float32")) == "bfloat16" else 4
    iterations = int(OmegaConf.select(cfg, "pruner.iterations", default=4) or 4)
    s_eval, b_eval = int(cfg.eval.seqlen), int(cfg.eval.batch_size)

    def peaks(weight_bytes: int):
        prune = 0.0 if dense else prune_bytes(shape, pruner, tokens, seqlen, batch, weight_bytes, diag, storage)
        return prune, eval_bytes(shape, s_eval, b_eval, weight_bytes)

    a_cpu, a_gpu = DTYPE_BYTES[dtype_cpu], DTYPE_BYTES[dtype_gpu]
    prune_c, eval_c = peaks(a_cpu)
    cpu_ram = BASE_BYTES + shape.params * a_cpu + max(prune_c, eval_c)
    prune_g, eval_g = peaks(a_gpu)
    weights_g = shape.params * a_gpu
    whole = weights_g + eval_g
    eval_gpu = whole if whole <= GPU_MEMORY else shape.block_params * a_gpu + eval_g
    gpu_mem = max(shape.block_params * a_gpu + prune_g, eval_gpu)

    def seconds(rate_of) -> float:
        flops_eval = eval_tok * (2.0 * (shape.blocks * shape.block_params + shape.vocab * shape.hidden)
                                 + 4.0 * s_eval * shape.heads * shape.head_dim * shape.blocks)
        total = STARTUP_SECONDS + flops_eval / rate_of("pass")
        if not dense:
            # blocks before the last pruned one that are not pruned still carry the states
            total += n_layers * prune_flops(shape, pruner, tokens, seqlen, iterations) / rate_of(pruner)
        return total

    cpu_rate = lambda name: THROUGHPUT.get(name, THROUGHPUT["pass"])  # noqa: E731
    rate_scale = SMOLLM2.params / shape.params
    cpu_s = seconds(cpu_rate) + requests / (ZEROSHOT_RATE * rate_scale)
    gpu_s = seconds(lambda name: GPU_FLOPS * THROUGHPUT.get(name, THROUGHPUT["pass"]) / THROUGHPUT["pass"])
    gpu_s += requests / (ZEROSHOT_RATE * rate_scale * GPU_FLOPS / THROUGHPUT["pass"])
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

    from runners.cli import CONF
    from runners.execution import store
    from runners.execution.engine import resolve_layers
    from runners.execution.identity import run_id
    from runners.execution.job import resolve
    from runners.validate import sweep_points

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
            for this, this_key, name in ((dense_run, dense_key, "dense"), (run, key, cfg.pruner.name)):
                rid = run_id(this_key)
                if rid in seen:
                    continue
                seen.add(rid)
                row = {"run_id": rid, "model": cfg.model.name, "pruner": name,
                       "sparsity": "0" if name == "dense" else run.pattern.label,
                       "stored": store.is_done(store.run_dir(cfg.results.dir, rid), bool(cfg.retry_failed)),
                       "zeroshot_requests": requests, "eval_tokens": eval_tok}
                if shape is None:
                    row["estimate"] = None
                else:
                    layers = [] if name == "dense" else resolve_layers(run.layers, shape.blocks)
                    row["estimate"] = estimate(shape, cfg, str(name), len(layers), eval_tok, requests,
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
            lines.append(f"{r['run_id']:58} {'yes' if r['stored'] else 'no':6} (no config.json shapes: not estimated)")
            continue
        if not r["stored"]:
            todo_cpu, todo_gpu = todo_cpu + e.cpu_seconds, todo_gpu + e.gpu_seconds
        lines.append(f"{r['run_id']:58} {'yes' if r['stored'] else 'no':6} {_gb(e.cpu_ram):>12} "
                     f"{_human_time(e.cpu_seconds):>7}   {_gb(e.gpu_mem):>19} {_gb(e.gpu_ram):>8} "
                     f"{_human_time(e.gpu_seconds):>7}")
    n_todo = sum(not r["stored"] for r in rows)
    lines.append(f"{len(rows)} runs ({n_todo} to compute): {_human_time(todo_cpu)} on this CPU, "
                 f"{_human_time(todo_gpu)} on one GPU* one after the other")
    req = sorted({r["zeroshot_requests"] for r in rows})
    if any(req):
        lines.append(f"zero-shot: {', '.join(f'{x:,}' for x in req)} loglikelihood requests per run "
                     f"(counted from the local task files); {ZEROSHOT_RATE} requests/s measured for SmolLM2 "
                     "on this CPU, scaled by parameter count, is in the times")
    lines.append("* GPU times assume an effective 100 TFLOP/s (no GPU measured yet); CPU constants are "
                 "calibrated from `make bench` on SmolLM2 (README \"Plan a sweep\")")
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
