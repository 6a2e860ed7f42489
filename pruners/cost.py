"""Cost models: what ``plan=true`` (runners/plan.py) and ``make bench-scale`` predict a pruner
needs to prune one decoder block, from the block's shapes alone (no weights).

A pruner carries its own cost model (``BlockPruner.cost``, see pruners/base.py), written in its
own module beside the method; a pruner whose ``cost`` is None is "not estimated" by the plan.
A cost model has three terms per block:

* ``flops(shape, tokens, seqlen)``: the work that grows with the calibration tokens (its passes,
  statistics, per-token products), run at ``rate`` FLOP/s;
* ``fixed_seconds(shape)``: the token-independent seconds (mask selection, factorizations);
* ``working_bytes(shape, tokens)``: the memory it holds beyond the block's weights and the hidden
  states of the calibration set (the engine's part, priced by the plan).

``rate`` is calibrated from ``make bench`` (runners/bench.py: SmolLM2-135M, 32 x 2048 tokens, 30
blocks, 70%, one run on the idle 2-core AMD EPYC CPU of 2026-12-03): ``bench_seconds``, the
measured seconds of the whole pruning stage at the cost model's reference settings
(``reference()``), less its fixed seconds, over its FLOPs. docs/cost-model.md writes every formula
out. The shapes (``Shape``) read the block's layout from its model family (core/families.py),
never from the family's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from core.families import FAMILIES, FamilyAdapter, declared
from core.structure import MOE_KEYS, TOP_K_KEYS

STAT_BYTES = 4  # statistics, Hessians and SparseLLM auxiliaries are float32 whatever the dtype
# Bytes per weight of the largest Linear that a scoring method without weight update (magnitude,
# Wanda, RIA) holds while selecting: 20-21 measured on the LLaMA-2-7B block of `make bench-scale`
# (peak RSS minus BASE, the block and its hidden states, over the 45M weights of gate/up); the
# itemized count (4 + 4 + 1 + 4 for magnitude, 4 + 8 + 1 + 4 plus the sort's own buffers for
# Wanda) is 13-21.
SELECT_BYTES = 21
# make bench's setting (runners/bench.py), at which every rate below is calibrated, and its unit
# T_pass: one pass of those tokens through SmolLM2's 30 blocks, 134.2 s on 2026-12-03.
BENCH_TOKENS = (32, 2048)
PASS_SECONDS = 134.2


@dataclass(frozen=True)
class Shape:
    """A decoder's shapes, from its config.json fields; the block's layout is its family's.

    A mixture-of-experts block (``experts`` > 0) has the family's attention and, instead of one
    MLP, ``experts`` gated experts of width ``ffn`` of which each token reaches
    ``experts_per_token``; its router (``experts x hidden``) is counted in the weights, never
    pruned. Every expert is pruned; the calibration tokens are shared among them."""
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
    experts: int = 0
    experts_per_token: int = 0

    @classmethod
    def from_config(cls, raw: dict, family: str) -> "Shape":
        """From config.json fields: the MLP width is the family's ``ffn_key`` field (an expert's,
        ``moe_intermediate_size``, when given), and a field the file leaves out takes the family's
        config class default (``tie_word_embeddings``). ``family`` is a family name or a
        ``model_type`` of one."""
        adapter = family_of(family if family in FAMILIES else raw.get("model_type"))
        defaults = type(adapter.tiny_config({}))()
        hidden, heads = int(raw["hidden_size"]), int(raw.get("num_attention_heads", 1))
        experts = int(next((raw[k] for k in MOE_KEYS if raw.get(k)), 0))
        per_token = int(next((raw[k] for k in TOP_K_KEYS if raw.get(k)), 0)) if experts else 0
        ffn = raw.get("moe_intermediate_size") if experts and raw.get("moe_intermediate_size") else raw[adapter.ffn_key]
        return cls(family=adapter.family, hidden=hidden, ffn=int(ffn),
                   blocks=int(raw["num_hidden_layers"]), heads=heads,
                   kv_heads=int(raw.get("num_key_value_heads") or heads),
                   head_dim=int(raw.get("head_dim") or hidden // heads), vocab=int(raw.get("vocab_size", 50272)),
                   positions=int(raw.get("max_position_embeddings", 2048)),
                   tied=bool(raw.get("tie_word_embeddings", defaults.tie_word_embeddings)),
                   experts=experts, experts_per_token=per_token)

    @property
    def adapter(self) -> FamilyAdapter:
        return FAMILIES[self.family]

    def input_groups(self) -> list[tuple[list[tuple[str, int, int]], float]]:
        """Every group of Linears sharing one input, in the family's forward order, as
        ``([(name, in, out), ...], share)``: ``share`` is the fraction of the tokens the group reads
        (1; an expert's, ``experts_per_token / experts``). The first attention input Linear (q)
        has every head, the others (k, v) the key/value heads."""
        h, f, attn, kv = self.hidden, self.ffn, self.heads * self.head_dim, self.kv_heads * self.head_dim
        widths = {"attn_out": (attn, h), "mlp_in": (h, f), "mlp_out": (f, h)}
        out = []
        for role, names in self.adapter.groups:
            if self.experts and role.startswith("mlp"):
                continue
            out.append(([(name, *((h, attn if i == 0 else kv) if role == "attn_in" else widths[role]))
                         for i, name in enumerate(names)], 1.0))
        share = self.experts_per_token / self.experts if self.experts else 1.0
        for e in range(self.experts):
            at = f"mlp.experts.{e}."
            out += [([(at + "gate_proj", h, f), (at + "up_proj", h, f)], share), ([(at + "down_proj", f, h)], share)]
        return out

    def linears(self) -> list[tuple[str, int, int]]:
        """``(name, in, out)`` of every prunable Linear of one block (each expert's), in forward order."""
        return [x for group, _share in self.input_groups() for x in group]

    def groups(self) -> list[int]:
        """Input width of each group of Linears sharing one input (one Hessian each)."""
        return [group[0][1] for group, _share in self.input_groups()]

    def mlp_linears(self) -> list[tuple[str, int, int]]:
        """The MLP's Linears (its input Linears, then the down projection)."""
        mlp = {n for role, names in self.adapter.groups if role.startswith("mlp") for n in names}
        return [x for x in self.linears() if x[0] in mlp]

    @property
    def mlp_inputs(self) -> int:
        """Linears that read the MLP's input: 1 for an ``up -> act -> down`` MLP, 2 with a gate."""
        return 1 + (self.adapter.mlp.gate is not None)

    @property
    def block_params(self) -> int:
        """Prunable weights of one block (every expert's)."""
        return sum(i * o for _, i, o in self.linears())

    @property
    def router_params(self) -> int:
        """The router of a mixture-of-experts block (experts x hidden; 0 without experts)."""
        return self.experts * self.hidden

    @property
    def active_params(self) -> int:
        """Weights one token multiplies in a block: all of a dense block; attention, the router
        and ``experts_per_token`` experts of a mixture-of-experts one."""
        if not self.experts:
            return self.block_params
        expert = 3 * self.hidden * self.ffn
        return self.block_params - self.experts * expert + self.experts_per_token * expert + self.router_params

    @property
    def active_ffn(self) -> int:
        """MLP activations per token: the MLP's width, or the widths of the experts it reaches."""
        return self.ffn * max(1, self.experts_per_token)

    @property
    def position_rows(self) -> int:
        """Rows of a learned position table: the family's pre-block modules hold one
        (OPT's ``embed_positions``: ``max_position_embeddings`` plus its offset of 2) or none
        (rotary embeddings)."""
        offset = self.adapter.position_offset
        return 0 if offset is None else self.positions + offset

    @property
    def params(self) -> int:
        """All weights: blocks (routers included), embeddings (and learned positions), the head unless tied."""
        embed = self.vocab * self.hidden + self.position_rows * self.hidden
        return (self.blocks * (self.block_params + self.router_params) + embed
                + (0 if self.tied else self.vocab * self.hidden))


def family_of(name: str | None) -> FamilyAdapter:
    """The declared family named ``name`` or whose ``model_types`` include it. Any other model
    (found by structure, core/structure.py) is priced with the LLaMA block layout: q/k/v, o,
    gate/up, down have the shapes of Gemma's and Phi-3's matrices (Phi-3's fused ones are their
    parts stacked)."""
    return declared(name) or FAMILIES["llama"]


# The model make bench times (SmolLM2-135M), where every rate is calibrated.
SMOLLM2 = Shape("llama", 576, 1536, 30, 9, 3, 64, 49152, 8192, True)


def pass_flops(shape: Shape, tokens: int, seqlen: int) -> float:
    """One forward of ``tokens`` through one block: 2 x the weights each token multiplies, plus the
    attention scores and their weighted sum (2 x seqlen x heads x head_dim each, full square as computed)."""
    return 2.0 * shape.active_params * tokens + 4.0 * tokens * seqlen * shape.heads * shape.head_dim


def _bench_pass_rate() -> float:
    n, s = BENCH_TOKENS
    return SMOLLM2.blocks * pass_flops(SMOLLM2, n * s, s) / PASS_SECONDS


# FLOP/s of a plain pass of the calibration tokens through a block (evaluation runs at it too).
PASS_RATE = _bench_pass_rate()


class Cost:
    """A cost model that costs nothing; pruners' cost models override its terms (see module doc).

    The dense baseline's is this one. Subclasses are frozen dataclasses whose fields are the
    pruner's settings that change its cost (SparseLLM's iterations, its storage dtype)."""

    bench_seconds: float | None = None  # make bench seconds at reference(): calibrates ``rate``
    bench_target: float | None = None   # make bench's ceiling on its seconds / T_pass (None: none)

    def flops(self, shape: Shape, tokens: int, seqlen: int) -> float:
        """Token-dependent FLOPs of pruning one block."""
        return 0.0

    def fixed_seconds(self, shape: Shape) -> float:
        """Token-independent seconds of pruning one block."""
        return 0.0

    def working_bytes(self, shape: Shape, tokens: int) -> float:
        """Memory held for one block beyond the block and its calibration hidden states."""
        return 0.0

    def reference(self) -> "Cost":
        """This cost model at the settings make bench measured (its ``rate`` is calibrated there)."""
        return self

    @property
    def rate(self) -> float:
        """FLOP/s of ``flops`` on the reference CPU."""
        return calibrated_rate(self.reference())

    def seconds(self, shape: Shape, tokens: int, seqlen: int) -> float:
        """CPU seconds of pruning one block: ``flops`` at ``rate`` plus the fixed seconds."""
        flops = self.flops(shape, tokens, seqlen)
        return (flops / self.rate if flops else 0.0) + self.fixed_seconds(shape)


@lru_cache(maxsize=None)
def calibrated_rate(cost: Cost) -> float:
    """FLOP/s of ``cost``'s token-dependent work: its FLOPs on make bench's run (SmolLM2, 32 x 2048,
    30 blocks) over the measured ``bench_seconds`` less its fixed seconds there (a cost model
    without a measurement runs at the pass rate)."""
    if cost.bench_seconds is None:
        return PASS_RATE
    n, s = BENCH_TOKENS
    blocks = SMOLLM2.blocks
    own = cost.bench_seconds - blocks * cost.fixed_seconds(SMOLLM2)
    return blocks * cost.flops(SMOLLM2, n * s, s) / own


NO_COST = Cost()


class RefineCost:
    """What a refinement (pruners/refine.py) adds to its pruner's cost per block; this one adds
    nothing (``refine=none``)."""

    bench_pruner: str | None = None    # the pruner make bench measured it after (None: not measured)
    bench_target: float | None = None  # make bench's ceiling on <bench_pruner>+<it>'s seconds / T_pass

    def seconds(self, shape: Shape, tokens: int, seqlen: int) -> float:
        """Seconds added to pruning one block."""
        return 0.0

    def working_bytes(self, shape: Shape, tokens: int, weight_bytes: int, pruner_bytes: float) -> float:
        """Memory of pruner and refinement together for one block, given the pruner's own."""
        return pruner_bytes


@dataclass(frozen=True)
class SelectionCost(Cost):
    """A scoring method without weight update (magnitude, Wanda, RIA): ``passes`` passes of the
    calibration tokens per block (dense with statistics, then pruned), and the mask selection:
    ``seconds_per_weight`` (the fitted fixed part of `make bench-scale`) and ``SELECT_BYTES`` per
    weight of the largest Linear (its float32 scores, the selection's temporaries, the mask, the
    pruned copy)."""

    seconds_per_weight: float
    passes: int = 2
    bench_seconds: float | None = None
    bench_target: float | None = None

    def flops(self, shape: Shape, tokens: int, seqlen: int) -> float:
        return self.passes * pass_flops(shape, tokens, seqlen) if self.passes else 0.0

    def fixed_seconds(self, shape: Shape) -> float:
        return self.seconds_per_weight * shape.block_params

    def working_bytes(self, shape: Shape, tokens: int) -> float:
        return max(i * o for _, i, o in shape.linears()) * SELECT_BYTES


__all__ = ["BENCH_TOKENS", "Cost", "NO_COST", "PASS_RATE", "PASS_SECONDS", "RefineCost", "SELECT_BYTES", "SMOLLM2", "STAT_BYTES",
           "SelectionCost", "Shape", "calibrated_rate", "family_of", "pass_flops"]
