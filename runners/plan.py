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
# speed": SmolLM2-135M, 32 x 2048 tokens, 30 blocks, 70%, one run on the idle machine of
# 2026-12-03): the token-dependent FLOPs of each pruner's model below divided by its measured
# seconds less its token-independent seconds (fixed_seconds). `calibrate_cpu()` recomputes them from these seconds.
BENCH_SECONDS = {"pass": 134.2, "magnitude": 1.8, "wanda": 235.5, "sparsegpt": 300.1, "sparsellm": 1265.4,
                 "ria": 246.2, "alps": 446.1, "wanda+dsnot": 360.8}
BENCH_TOKENS = (32, 2048)
# Seconds per weight of a block's mask selection (magnitude's threshold over each matrix, Wanda's
# and RIA's row sorts), independent of the token count: the fitted fixed part c0 of the OPT-13B,
# OPT-66B and LLaMA-2-70B blocks of `make bench-scale` (README "Paper-scale shapes", idle machine;
# magnitude 37-41 ns, Wanda 48-51 ns; the smaller LLaMA-2-7B matrices run faster, 22 and 36 ns).
SELECT_SECONDS = {"magnitude": 38e-9, "wanda": 49e-9, "ria": 49e-9}
# SparseGPT's token-independent work (sparsegpt_linear_flops of every Linear): 116 and 131 GFLOP/s,
# the fitted fixed part c0 of t = c0 + c1 T of the LLaMA-2-7B and OPT-13B blocks of `make
# bench-scale` (256 and 512 tokens, idle machine).
GPT_FLOPS = 123e9
# float64 Cholesky factors and triangular solves (SparseLLM's refits): 79-112 GFLOP/s measured
# with torch 2.13 on this CPU at 6000-8192 wide matrices (float32 products: 210-215 GFLOP/s).
FP64_FLOPS = 90e9
# DSnoT: its swaps per weight of the block, the mean of 103, 260 and 214 ns on the LLaMA-2-7B,
# OPT-13B and LLaMA-2-70B blocks of `make bench-scale` (wanda+dsnot less wanda at 256 tokens; the
# cost is per swap cycle of the rows still live, so it varies with the weights); and its float32
# temporaries per weight of the largest Linear (the rows' growing and pruning scores, the copies).
DSNOT_SECONDS = 190e-9
DSNOT_BYTES = 40
# ALPS: ADMM iterations per Linear (it stops once the support settles): 36 on average, 30-45,
# over the 210 Linears of SmolLM2 at 8 x 2048 C4 tokens and 70% (one run, 2026-12-04); assumed
# the same at every scale. Its weight-sized float32 iterates and temporaries per weight.
ALPS_ITERATIONS = 36
ALPS_BYTES = 40
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


def alps_linear_flops(d_in: int, d_out: int, iterations: int, pcg_iter: int = 10) -> float:
    """One ALPS call: the eigendecomposition of H (about 9 d_in^3), per ADMM iteration the two
    products with the eigenvectors (2 x 2 d_out d_in^2), and the conjugate-gradient steps."""
    return 9.0 * float(d_in) ** 3 + (4.0 * iterations + 2.0 * (pcg_iter + 1)) * d_out * float(d_in) ** 2


def split_method(method: str) -> tuple[str, str | None]:
    """``wanda+dsnot`` -> ``("wanda", "dsnot")``; ``wanda`` -> ``("wanda", None)`` (``make bench``'s names)."""
    pruner, _, refine = method.partition("+")
    return pruner, (refine or None)


SPARSELLM = ("sparsellm", "sparsellm_released")


def prune_flops(shape: Shape, pruner: str, tokens: int, seqlen: int, iterations: int = 4) -> float:
    """FLOPs of pruning one block that grow with the calibration tokens, run at the pruner's
    calibrated throughput: the two passes, the Hessians, SparseLLM's per-token products. The
    token-independent work is ``fixed_seconds``. ``iterations``: SparseLLM's."""
    if pruner == "magnitude":
        return 0.0
    passes = 2 * pass_flops(shape, tokens, seqlen)
    if pruner not in ("sparsegpt", "alps") + SPARSELLM:
        return passes  # wanda, ria; dense or a plugin: two passes as a floor
    hessians = sum(2.0 * tokens * d * d for d in shape.groups())
    if pruner in SPARSELLM:
        mlp_products = 2.0 * tokens * sum(i * o for _, i, o in shape.mlp_linears())
        # per iteration: the Gram matrices of the refits and of the pruned inputs (2 T f^2
        # each) and about six MLP products per token (README)
        return passes + hessians + iterations * (2 * 2.0 * tokens * shape.ffn ** 2 + 6 * mlp_products)
    return passes + hessians


def sparsellm_fp64_flops(shape: Shape, iterations: int) -> float:
    """SparseLLM's float64 linear algebra per block: the Cholesky factor of X^T X once; per
    iteration the p step's SPD inverse (W W^T or W^T W: a product, a factor, a solve against the
    identity); per refit (every iteration after the first) the factor of the f x f Gram of p,
    the solve for the down projection and one solve per input Linear against X^T X's factor."""
    h, f = shape.hidden, shape.ffn
    small, large = min(h, f), max(h, f)
    ins = 1 if shape.family == "opt" else 2
    p_step = 2.0 * small ** 2 * large + small ** 3 / 3 + 2.0 * small ** 3
    refit = f ** 3 / 3 + 2.0 * f ** 2 * h + ins * 2.0 * h ** 2 * f
    return h ** 3 / 3 + iterations * p_step + (iterations - 1) * refit


def alps_fixed_flops(shape: Shape) -> float:
    """ALPS's token-independent FLOPs of one block at ALPS_ITERATIONS iterations per Linear."""
    return sum(alps_linear_flops(i, o, ALPS_ITERATIONS) for _, i, o in shape.linears())


def fixed_seconds(shape: Shape, pruner: str, iterations: int = 4) -> float:
    """Token-independent seconds of pruning one block: the mask selection per weight (magnitude,
    Wanda, RIA); SparseGPT's per-Linear factorizations and lazy updates at GPT_FLOPS (SparseLLM:
    once for the block and again on each MLP Linear per iteration, plus its float64 algebra at
    FP64_FLOPS); ALPS's eigendecompositions and iterations at the rate calibrate_cpu finds."""
    gpt = lambda linears: sum(sparsegpt_linear_flops(i, o) for _, i, o in linears)  # noqa: E731
    if pruner in SELECT_SECONDS:
        return SELECT_SECONDS[pruner] * shape.block_params
    if pruner == "sparsegpt":
        return gpt(shape.linears()) / GPT_FLOPS
    if pruner in SPARSELLM:
        return ((gpt(shape.linears()) + iterations * gpt(shape.mlp_linears())) / GPT_FLOPS
                + sparsellm_fp64_flops(shape, iterations) / FP64_FLOPS)
    if pruner == "alps":
        return alps_fixed_flops(shape) / THROUGHPUT["alps_fixed"]
    return 0.0


def prune_seconds(shape: Shape, method: str, tokens: int, seqlen: int, iterations: int = 4) -> float:
    """CPU seconds of pruning one block with ``method`` (``pruner`` or ``pruner+refine``): its
    token-dependent FLOPs at its calibrated throughput plus its fixed seconds, and for DSnoT one
    more dense pass (its statistics) at its own throughput plus its swaps per weight."""
    rate = THROUGHPUT.get
    pruner, refine = split_method(method)
    flops = prune_flops(shape, pruner, tokens, seqlen, iterations)
    seconds = (flops / rate(pruner, rate("pass")) if flops else 0.0) + fixed_seconds(shape, pruner, iterations)
    if refine == "dsnot":
        seconds += pass_flops(shape, tokens, seqlen) / rate("dsnot", rate("pass")) + DSNOT_SECONDS * shape.block_params
    return seconds


SMOLLM2 = Shape("llama", 576, 1536, 30, 9, 3, 64, 49152, 8192, True)


def calibrate_cpu() -> dict[str, float]:
    """Effective FLOP/s per pruner (and ``pass``, ``dsnot``) of the token-dependent work, from the
    measured ``make bench`` seconds less the pruner's ``fixed_seconds``."""
    n, s = BENCH_TOKENS
    tokens, blocks, weights = n * s, SMOLLM2.blocks, SMOLLM2.blocks * SMOLLM2.block_params
    rates = {"pass": blocks * pass_flops(SMOLLM2, tokens, s) / BENCH_SECONDS["pass"]}
    for name in ("wanda", "ria", "sparsegpt", "sparsellm"):
        own = BENCH_SECONDS[name] - blocks * fixed_seconds(SMOLLM2, name)
        rates[name] = blocks * prune_flops(SMOLLM2, name, tokens, s) / own
    # ALPS: its passes and Hessians are SparseGPT's (same rate); the rest of its seconds are its
    # eigendecompositions and iterations
    rates["alps"] = rates["sparsegpt"]
    own = BENCH_SECONDS["alps"] - blocks * prune_flops(SMOLLM2, "alps", tokens, s) / rates["alps"]
    rates["alps_fixed"] = blocks * alps_fixed_flops(SMOLLM2) / own
    extra = BENCH_SECONDS["wanda+dsnot"] - BENCH_SECONDS["wanda"] - DSNOT_SECONDS * weights
    rates["dsnot"] = blocks * pass_flops(SMOLLM2, tokens, s) / extra
    rates["sparsellm_released"] = rates["sparsellm"]
    return rates


THROUGHPUT = calibrate_cpu()


# ---- memory -----------------------------------------------------------------------------


def pruner_working_bytes(shape: Shape, pruner: str, tokens: int, storage_bytes: int = 4) -> float:
    """Memory a pruner holds for one block beyond the block and its hidden states (float32)."""
    largest = max(i * o for _, i, o in shape.linears())
    if pruner in ("magnitude", "wanda", "ria"):
        # the largest Linear's float32 scores, the selection's temporaries (a copy for kthvalue,
        # an int64 row order for the row sorts), the mask and the pruned copy
        return largest * SELECT_BYTES
    held = sum(STAT_BYTES * d * d for d in shape.groups())  # every group's Hessian
    d_max = max(shape.groups())
    widest = max(i * o for _, i, o in shape.linears() if i == d_max)
    if pruner == "alps":
        # one call on the widest input: H's unit-diagonal copy, its eigenvectors and eigh's
        # workspace (3 d^2), and the ADMM's weight-sized float32 iterates and temporaries
        return held + 3 * STAT_BYTES * d_max ** 2 + ALPS_BYTES * max(largest, widest)
    # one call: the damped flipped copy, its Cholesky factor, the inverse built by halves (the
    # result, the two half inverses and a product: 1.5 d^2) and its flipped copy, 4.5 d_in^2 in
    # all (3 d^2 predicted the LLaMA-2-7B block 15% low), plus a float32 transposed weight and the
    # pruned output weight
    call = 4.5 * STAT_BYTES * d_max ** 2 + 2 * STAT_BYTES * widest
    if pruner == "sparsegpt":
        return held + call
    if pruner in ("sparsellm", "sparsellm_released"):
        h, f = shape.hidden, shape.ffn
        k = 2 if shape.family == "opt" else 3
        aux = tokens * (k * f * storage_bytes + 2 * h * STAT_BYTES)  # z,(s),p; X, Y
        # the MLP phase: H of X and its float64 factor, the Gram of p; weight-sized float32
        # copies (per input Linear: the refit, the pruned and the best iterate, the cross term;
        # the refit and pruned down projection, the best one and p^T U: 4 k' + 3); and the
        # larger of the refit's float64 Gram copy and factor (16 f^2) and SparseGPT on the down
        # projection (the scaled Gram of p, one call)
        ins = k - 1
        held_mlp = 12 * h * h + STAT_BYTES * f * f + (4 * ins + 3) * STAT_BYTES * h * f
        phase = max(16.0 * f * f, STAT_BYTES * f * f + 4.5 * STAT_BYTES * f * f + 2 * STAT_BYTES * h * f)
        return aux + max(held + call, held_mlp + phase)
    return 0.0


def method_working_bytes(shape: Shape, method: str, tokens: int, weight_bytes: int, storage_bytes: int = 4) -> float:
    """``pruner_working_bytes`` of ``pruner`` or ``pruner+refine``: DSnoT holds the block's dense
    weights (model dtype) throughout, and its swaps' float32 temporaries replace the pruner's."""
    pruner, refine = split_method(method)
    own = pruner_working_bytes(shape, pruner, tokens, storage_bytes)
    if refine != "dsnot":
        return own
    largest = max(i * o for _, i, o in shape.linears())
    return shape.block_params * weight_bytes + max(own, DSNOT_BYTES * largest)


def prune_bytes(shape: Shape, pruner: str, tokens: int, seqlen: int, batch: int, weight_bytes: int,
                diagnostics: bool, storage_bytes: int = 4) -> float:
    """Working set of the pruning stage for one block: hidden states of the calibration set
    (inputs, outputs, and the dense outputs for diagnostics), one batch's activations, and the
    pruner's own memory (``pruner`` may be ``pruner+refine``)."""
    calibrated = pruner != "magnitude" or diagnostics
    states = (3 if diagnostics else 2) * tokens * shape.hidden * weight_bytes if calibrated else 0
    acts = batch * seqlen * (3 * shape.ffn + shape.heads * seqlen) * weight_bytes if calibrated else 0
    return states + acts + method_working_bytes(shape, pruner, tokens, weight_bytes, storage_bytes)


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
    refine = str(OmegaConf.select(cfg, "refine.name", default="none") or "none")
    method = pruner if dense or refine == "none" else f"{pruner}+{refine}"
    tokens, seqlen = int(cfg.calib.nsamples) * int(cfg.calib.seqlen), int(cfg.calib.seqlen)
    batch, diag = int(cfg.prune.batch_size), bool(cfg.prune.diagnostics)
    storage = 2 if str(OmegaConf.select(cfg, "pruner.storage_dtype", default="float32")) == "bfloat16" else 4
    iterations = int(OmegaConf.select(cfg, "pruner.iterations", default=4) or 4)
    s_eval, b_eval = int(cfg.eval.seqlen), int(cfg.eval.batch_size)

    def peaks(weight_bytes: int):
        prune = 0.0 if dense else prune_bytes(shape, method, tokens, seqlen, batch, weight_bytes, diag, storage)
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
        """Start-up, then evaluation and pruning at the CPU throughputs divided by ``speedup``."""
        flops_eval = eval_tok * (2.0 * (shape.blocks * shape.block_params + shape.vocab * shape.hidden)
                                 + 4.0 * s_eval * shape.heads * shape.head_dim * shape.blocks)
        work = flops_eval / THROUGHPUT["pass"]
        if not dense:
            # blocks before the last pruned one that are not pruned still carry the states
            work += n_layers * prune_seconds(shape, method, tokens, seqlen, iterations)
        return STARTUP_SECONDS + work / speedup

    rate_scale = SMOLLM2.params / shape.params
    cpu_s = seconds(1.0) + requests / (ZEROSHOT_RATE * rate_scale)
    # one GPU: everything at GPU_FLOPS over the CPU's pass throughput (an assumption, see GPU_FLOPS)
    gpu_speedup = GPU_FLOPS / THROUGHPUT["pass"]
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

    from runners.cli import CONF
    from runners.execution import store
    from core.layers import resolve_layers
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
