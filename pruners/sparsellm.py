"""SparseLLM: prune the MLP jointly against the dense block's MLP output.

Sample config (``conf/pruner/sparsellm.yaml``)::

    _target_: pruners.sparsellm.build
    name: sparsellm
    alpha: null          # null: family default (OPT/ReLU 0.1, LLaMA/gated SiLU 5.0)
    beta: null
    gamma: null
    iterations: 4
    refit: lstsq         # or none: keep the dense down/fc2 and only re-prune it
    refresh_mlp_inputs: false
    storage_dtype: float32   # or bfloat16 for z/s/p storage
    keep_best: false     # false: the last iterate, as published; true: the iterate of lowest
                         # in-sample MLP error, labelled sparsellm+keep_best in every table

Per block, one pass over the still-dense block (``block.capture``) gives the MLP input ``X``
(input of up/fc1), the dense MLP output ``Y`` (output of down/fc2), the dense activations that
initialize the auxiliaries, and the attention inputs whose Hessians serve SparseGPT on the
attention Linears (all statistics from the dense block, as published). With
``refresh_mlp_inputs`` ``X`` is captured again after attention is pruned (``Y`` stays the
dense target). Then optimize the MLP with the alternating
updates of ``pruners.sparsellm_math`` and write its pruned weights back in place. Per
iteration k the block records ``objective`` (the full weighted objective) and
``mlp_rel_error`` (``||MLP(X) - Y|| / ||Y||`` with that iteration's pruned weights), plus
``best_iteration``. The MLP Linears' recorded time is the joint optimization time, split
evenly among them.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .base import BlockContext, PrunerDefaults, check_setting
from .cost import STAT_BYTES, Cost, Shape, pass_flops
from .sparsegpt import GPT_FLOPS, Hessian, call_bytes, hessian_bytes, hessian_flops, linears_flops, sparsegpt_prune
from .sparsellm_math import optimize_mlp_gated, optimize_mlp_relu

# Official values per MLP kind: OPT code alpha = beta = gamma = 0.1, LLaMA code 5.0.
FAMILY_DEFAULTS = {
    "relu": {"alpha": 0.1, "beta": 0.1, "gamma": 0.1},
    "gated_silu": {"alpha": 5.0, "beta": 5.0, "gamma": 5.0},
}
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _copy(families: Mapping) -> dict:
    return {str(kind): dict(values) for kind, values in families.items()}


def attention_names(block: BlockContext, mlp_names: list[str]) -> list[str]:
    """The block's attention Linears (pruned by plain SparseGPT in both SparseLLM pruners)."""
    return [n for g in block.groups if g.role in ("attn_in", "attn_out") for n in g.names if n not in mlp_names]


def prune_attention(block: BlockContext, hessians: Mapping, blocksize: int, percdamp: float) -> None:
    """SparseGPT on each attention Linear from its dense-block Hessian (dampening on a copy)."""
    for lin_name, hessian in hessians.items():
        linear, start = block.linears[lin_name], time.perf_counter()
        pruned = sparsegpt_prune(linear.weight.data, hessian, block.pattern, blocksize, percdamp)
        linear.weight.data.copy_(pruned.to(linear.weight.dtype))
        block.record_linear(lin_name, time.perf_counter() - start)


def record_history(block: BlockContext, history: Mapping) -> None:
    """Per-iteration ``objective`` and ``mlp_rel_error`` into the block's diagnostics."""
    for k, (obj, rel) in enumerate(zip(history["objective"], history["mlp_rel_error"]), 1):
        block.record("objective", obj, step=k)
        block.record("mlp_rel_error", rel, step=k)


# ---- cost model (pruners/cost.py) -----------------------------------------------------------

# float64 Cholesky factors and triangular solves (the refits): 79-112 GFLOP/s measured with torch
# 2.13 on this CPU at 6000-8192 wide matrices (float32 products: 210-215 GFLOP/s).
FP64_FLOPS = 90e9


def sparsellm_fp64_flops(shape: Shape, iterations: int) -> float:
    """The float64 linear algebra per block: the Cholesky factor of X^T X once; per iteration the
    p step's SPD inverse (W W^T or W^T W: a product, a factor, a solve against the identity); per
    refit (every iteration after the first) the factor of the f x f Gram of p, the solve for the
    down projection and one solve per MLP input Linear against X^T X's factor."""
    h, f = shape.hidden, shape.ffn
    small, large = min(h, f), max(h, f)
    p_step = 2.0 * small ** 2 * large + small ** 3 / 3 + 2.0 * small ** 3
    refit = f ** 3 / 3 + 2.0 * f ** 2 * h + shape.mlp_inputs * 2.0 * h ** 2 * f
    return h ** 3 / 3 + iterations * p_step + (iterations - 1) * refit


@dataclass(frozen=True)
class SparseLLMCost(Cost):
    """SparseGPT's work on the block, plus per iteration the Gram matrices of the refits and of the
    pruned inputs (2 T f^2 each), about six MLP products per token, SparseGPT on each MLP Linear
    and the float64 algebra; held: the auxiliaries z, (s), p (one per MLP input Linear, and p) at
    ``storage_bytes``, the MLP's input and target, and the larger of SparseGPT's memory and the MLP
    phase's. `make bench` 1265.4 s on SmolLM2 at 4 iterations, float32 storage (``reference``)."""

    iterations: int = 4
    storage_bytes: int = 4
    bench_seconds: float | None = 1265.4
    bench_target: float | None = 10.0

    def reference(self) -> "SparseLLMCost":
        return SparseLLMCost()

    def flops(self, shape: Shape, tokens: int, seqlen: int) -> float:
        passes = 2 * pass_flops(shape, tokens, seqlen)
        mlp_products = 2.0 * tokens * sum(i * o for _, i, o in shape.mlp_linears())
        return passes + hessian_flops(shape, tokens) + self.iterations * (
            2 * 2.0 * tokens * shape.ffn ** 2 + 6 * mlp_products)

    def fixed_seconds(self, shape: Shape) -> float:
        gpt = linears_flops(shape.linears()) + self.iterations * linears_flops(shape.mlp_linears())
        return gpt / GPT_FLOPS + sparsellm_fp64_flops(shape, self.iterations) / FP64_FLOPS

    def working_bytes(self, shape: Shape, tokens: int) -> float:
        h, f, ins = shape.hidden, shape.ffn, shape.mlp_inputs
        aux = tokens * ((ins + 1) * f * self.storage_bytes + 2 * h * STAT_BYTES)  # z, (s), p; X, Y
        # the MLP phase: H of X and its float64 factor, the Gram of p; weight-sized float32 copies
        # (per input Linear: the refit, the pruned and the best iterate, the cross term; the refit
        # and pruned down projection, the best one and p^T U: 4 k' + 3); and the larger of the
        # refit's float64 Gram copy and factor (16 f^2) and SparseGPT on the down projection (the
        # scaled Gram of p, one call)
        held_mlp = 12 * h * h + STAT_BYTES * f * f + (4 * ins + 3) * STAT_BYTES * h * f
        phase = max(16.0 * f * f, STAT_BYTES * f * f + 4.5 * STAT_BYTES * f * f + 2 * STAT_BYTES * h * f)
        return aux + max(hessian_bytes(shape) + call_bytes(shape), held_mlp + phase)


@dataclass
class SparseLLMSettings(PrunerDefaults):
    """What both SparseLLM schedules share (ours here, the released one in sparsellm_released.py):
    the penalties, the iteration count, SparseGPT's settings for the attention Linears and the
    initial MLP masks."""

    name: str = "sparsellm"
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    iterations: int = 4
    blocksize: int = 128
    percdamp: float = 0.01
    family_defaults: dict = field(default_factory=lambda: _copy(FAMILY_DEFAULTS))
    needs_calibration: bool = True

    @property
    def mlp_kinds(self) -> tuple[str, ...]:
        """The MLP layouts it optimizes: those it has penalties for (relu, gated_silu)."""
        return tuple(self.family_defaults)

    def hyperparameters(self, kind: str) -> dict[str, float]:
        """alpha, beta, gamma for an MLP kind: explicit values win over the family's defaults."""
        if kind not in self.family_defaults:
            raise ValueError(f"pruner {self.name} optimizes a declared MLP layout, and this model has "
                             f"{'none (its family is found by structure, core/structure.py)' if kind is None else kind!r}: "
                             f"accepted the MLPs of the declared families (opt: relu, llama: gated_silu, "
                             f"core/families.py); prune this model with another pruner")
        defaults = self.family_defaults[kind]
        given = {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma}
        return {k: float(defaults[k] if v is None else v) for k, v in given.items()}


@dataclass
class SparseLLMPruner(SparseLLMSettings):
    """Block pruner: SparseGPT on attention, SparseLLM's joint optimization on the MLP."""

    refit: str = "lstsq"
    refresh_mlp_inputs: bool = False
    storage_dtype: str = "float32"
    keep_best: bool = False
    ridge: float = 1e-4
    s_steps: int = 1
    chunk_tokens: int | None = None

    @property
    def cost(self) -> SparseLLMCost:
        """The cost model at this run's iterations and storage dtype."""
        return SparseLLMCost(self.iterations, 2 if self.storage_dtype == "bfloat16" else 4)

    @property
    def label(self) -> str:
        """Name in tables and run ids. The best-iterate option changes the method (iteration 1 is
        SparseGPT, so it can never lose to SparseGPT in sample): it gets its own label."""
        return f"{self.name}+keep_best" if self.keep_best else self.name

    def prune_block(self, block: BlockContext) -> None:
        """Prune ``block.linears`` in place to ``block.pattern``."""
        pattern, spec = block.pattern, block.mlp
        for lin_name, linear in block.linears.items():
            pattern.check_columns(linear.in_features, lin_name)
        if not pattern.is_nm and pattern.ratio == 0:
            return
        hyper = self.hyperparameters(spec.kind if spec is not None else None)
        mlp_names = [spec.up, spec.down] + ([spec.gate] if spec.gate else [])
        # One pass over the dense block gives everything, as in the published code: the MLP's
        # X and Y, the dense up/gate outputs and down input (they initialize z, s, p), and the
        # Hessians of the attention Linears' inputs (one per input group). With bfloat16
        # storage z, s, p are instead recomputed from X chunk by chunk straight into bfloat16,
        # so no float32 copy of them is ever held (the point of that setting).
        attn = attention_names(block, mlp_names)
        storage = STORAGE_DTYPES[self.storage_dtype]
        keep_aux = storage == torch.float32
        captured = block.capture(inputs=[spec.up, spec.down] if keep_aux else [spec.up],
                                 outputs=mlp_names if keep_aux else [spec.down],
                                 make_stat=Hessian, stat_names=attn)
        X, Y = captured.inputs[spec.up], captured.outputs[spec.down]
        init = None
        if keep_aux:
            init = {"z": captured.outputs[spec.up], "p": captured.inputs[spec.down]}
            if spec.gate:
                init["s"] = captured.outputs[spec.gate]
        hessians = captured.stats
        del captured

        prune_attention(block, hessians, self.blocksize, self.percdamp)
        del hessians
        if self.refresh_mlp_inputs:
            X, init = block.capture(inputs=[spec.up]).inputs[spec.up], None  # z, s, p from the new X

        start = time.perf_counter()
        options = dict(iterations=self.iterations, refit=self.refit, blocksize=self.blocksize,
                       percdamp=self.percdamp, storage_dtype=storage,
                       keep_best=self.keep_best, ridge=self.ridge, s_steps=self.s_steps,
                       chunk=self.chunk_tokens, init=init, **hyper)
        lin = block.linears
        bias = {n: (lin[n].bias.data if lin[n].bias is not None else None) for n in mlp_names}
        if spec.kind == "relu":
            w_up, w_down, history = optimize_mlp_relu(
                X, Y, lin[spec.up].weight.data, bias[spec.up], lin[spec.down].weight.data,
                bias[spec.down], pattern, **options)
            new = {spec.up: w_up, spec.down: w_down}
        elif spec.kind == "gated_silu":
            w_gate, w_up, w_down, history = optimize_mlp_gated(
                X, Y, lin[spec.gate].weight.data, lin[spec.up].weight.data,
                lin[spec.down].weight.data, pattern, bg=bias[spec.gate], bu=bias[spec.up],
                bd=bias[spec.down], **options)
            new = {spec.gate: w_gate, spec.up: w_up, spec.down: w_down}
        else:
            raise ValueError(f"SparseLLM: unsupported MLP kind {spec.kind!r}")
        del X, Y, init
        for lin_name, weight in new.items():
            lin[lin_name].weight.data.copy_(weight.to(lin[lin_name].weight.dtype))
        seconds = time.perf_counter() - start
        for lin_name in new:
            block.record_linear(lin_name, seconds / len(new))
        record_history(block, history)
        block.record("best_iteration", float(history["best_iteration"]))


def build(
    name: str = "sparsellm",
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    iterations: int = 4,
    refit: str = "lstsq",
    blocksize: int = 128,
    percdamp: float = 0.01,
    refresh_mlp_inputs: bool = False,
    storage_dtype: str = "float32",
    family_defaults: Mapping | None = None,
    keep_best: bool = False,
    ridge: float = 1e-4,
    s_steps: int = 1,
    chunk_tokens: int | None = None,
) -> SparseLLMPruner:
    """Builder used by Hydra's ``_target_``.

    ``alpha``/``beta``/``gamma`` left None take the MLP family's default (``FAMILY_DEFAULTS``,
    keyed by ``MlpSpec.kind``; ``family_defaults`` overrides entries of it).
    """
    families = _copy(FAMILY_DEFAULTS)
    for kind, values in (family_defaults or {}).items():
        families.setdefault(str(kind), {}).update({str(k): float(v) for k, v in values.items()})
    for kind, values in families.items():
        missing = {"alpha", "beta", "gamma"} - set(values)
        if missing:
            raise ValueError(f"family_defaults[{kind!r}] lacks {sorted(missing)}")
    for label, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        check_setting(value is None or value > 0, label, value, "a number > 0, or null for the family default")
    check_setting(iterations >= 1, "iterations", iterations, "a whole number >= 1 (published: 4)")
    check_setting(refit in ("lstsq", "none"), "refit", refit, "lstsq or none")
    check_setting(storage_dtype in STORAGE_DTYPES, "storage_dtype", storage_dtype, " or ".join(STORAGE_DTYPES))
    check_setting(blocksize >= 1, "blocksize", blocksize, "a whole number >= 1")
    check_setting(chunk_tokens is None or chunk_tokens >= 1, "chunk_tokens", chunk_tokens, "null or a whole number >= 1")
    check_setting(percdamp >= 0, "percdamp", percdamp, "a number >= 0")
    check_setting(ridge > 0, "ridge", ridge, "a number > 0")
    check_setting(s_steps >= 0, "s_steps", s_steps, "a whole number >= 0")
    return SparseLLMPruner(
        name=name, alpha=alpha, beta=beta, gamma=gamma, iterations=iterations, refit=refit,
        blocksize=blocksize, percdamp=percdamp, refresh_mlp_inputs=refresh_mlp_inputs,
        storage_dtype=storage_dtype, keep_best=keep_best, ridge=ridge, s_steps=s_steps,
        chunk_tokens=chunk_tokens, family_defaults=families,
    )
