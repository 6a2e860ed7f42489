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

from .base import BlockContext, check_setting
from .sparsegpt import Hessian, sparsegpt_prune
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


@dataclass
class SparseLLMSettings:
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
