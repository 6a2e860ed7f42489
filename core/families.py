"""Model families: where a causal LM keeps its decoder blocks, what is inside them, and how
a tiny random model of a declared family is built for tests.

Two families are declared, because a method needs to know more than structure shows
(SparseLLM's MLP layout) and because the tests build tiny random models of them:

* ``opt``: OPT (``model.decoder.layers``; MLP ``fc1 -> ReLU -> fc2`` with biases);
* ``llama``: LLaMA-2/3, SmolLM2, Mistral, Qwen2/3 (``model.layers``; MLP
  ``down(silu(gate(x)) * up(x))``).

Every other decoder-only causal LM of transformers is taken apart by structure
(``core/structure.py``): its block list, each block's Linears and which of them read the same
input (watched in one short forward), fused projections split into their parts. The walk
(``core/walk.py``) calls each block with the arguments the model itself passes it, and turns
final hidden states into logits with the model's own head, so nothing here lists norms, rotary
tables or soft-caps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn
from transformers import LlamaConfig, OPTConfig, PretrainedConfig

from . import experts



@dataclass
class LinearGroup:
    """Linears of a block that read the same input (e.g. q, k, v), so share statistics.

    ``role`` is one of ``attn_in``, ``attn_out``, ``mlp_in``, ``mlp_out``.
    """

    role: str
    names: list[str]


@dataclass
class MlpSpec:
    """What a block-level MLP optimizer must know about the block's MLP.

    ``kind`` is ``"relu"`` (OPT: ``out(relu(inp(x)))``) or ``"gated_silu"``
    (LLaMA: ``down(silu(gate(x)) * up(x))``). Names are keys of ``BlockContext.linears``.
    """

    kind: str
    up: str
    down: str
    gate: str | None = None


@dataclass(frozen=True)
class FamilyAdapter:
    """Describes one model family. All names are relative to a decoder block."""

    family: str
    model_types: tuple[str, ...]
    blocks_path: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    mlp: MlpSpec | None                           # None: no declared MLP layout (SparseLLM refuses)
    ffn_key: str | None = None                    # config.json field of the MLP width
    tiny_config: Callable[[dict], PretrainedConfig] | None = None  # model.tiny settings -> a tiny model's config
    tiny_tokenizer: str | None = None             # "smollm2" (the embedded one) or "gpt2"
    # Fused Linears split into the matrices they stand for: name -> ((part, rows), ...), in row order.
    parts: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    # Rows of a learned position table beyond max_position_embeddings (OPT: 2); None: rotary, no table.
    position_offset: int | None = None

    @property
    def tiny_vocab(self) -> int:
        """A tiny model's vocabulary when model.tiny gives none (the report needs it without a model)."""
        return self.tiny_config({}).vocab_size

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks, in order."""
        return model.get_submodule(self.blocks_path)

    def outside_blocks(self, model: nn.Module) -> list[nn.Module]:
        """Every module of the model that is not inside the block list (embeddings, rotary
        tables, final norm, head): what must sit on the accelerator while the model's own
        forward captures block inputs or applies its head."""
        outside, node = [], model
        for name in self.blocks_path.split("."):
            outside += [child for child_name, child in node.named_children() if child_name != name]
            node = getattr(node, name)
        return outside

    def row_parts(self, name: str) -> list[tuple[str, slice]] | None:
        """The row slices of a fused Linear (``qkv_proj``: q, k, v), or None for a plain one."""
        for fused, layout in self.parts:
            if fused == name:
                at, out = 0, []
                for part, rows in layout:
                    out.append((part, slice(at, at + rows)))
                    at += rows
                return out
        return None

    def linear_groups(self, block: nn.Module) -> list[LinearGroup]:
        """Groups of prunable Linears that read the same input, in forward order; the experts of a
        mixture-of-experts block, split for pruning (core/experts.py), last: two groups per expert."""
        return [LinearGroup(role, [n for n in names if _optional(block, n) is not None])
                for role, names in self.groups] + [LinearGroup(role, names) for role, names in experts.groups(block)]

    def linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        """Every prunable Linear of a block by its name inside the block, in forward order."""
        found = {n: block.get_submodule(n) for g in self.linear_groups(block) for n in g.names}
        missing = [n for n, m in found.items() if not isinstance(m, nn.Linear)]
        if missing:
            raise TypeError(f"{self.family} adapter: {missing} are not nn.Linear in {type(block).__name__}")
        return found


def _optional(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _tiny_opt(t: dict) -> PretrainedConfig:
    hidden = t.get("hidden_size", 64)
    return OPTConfig(vocab_size=t.get("vocab_size", 50272), hidden_size=hidden, num_hidden_layers=t.get("num_layers", 3),
                     ffn_dim=t.get("ffn_dim", 256), num_attention_heads=t.get("heads", 4), word_embed_proj_dim=hidden,
                     max_position_embeddings=t.get("max_positions", 2048))


def _tiny_llama(t: dict) -> PretrainedConfig:
    heads = t.get("heads", 4)
    return LlamaConfig(vocab_size=t.get("vocab_size", 49152), hidden_size=t.get("hidden_size", 64),
                       num_hidden_layers=t.get("num_layers", 3), intermediate_size=t.get("ffn_dim", 256),
                       num_attention_heads=heads, num_key_value_heads=t.get("kv_heads", heads // 2),
                       max_position_embeddings=t.get("max_positions", 2048), tie_word_embeddings=True)


OPT = FamilyAdapter(
    family="opt",
    model_types=("opt",),
    blocks_path="model.decoder.layers",
    groups=(
        ("attn_in", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("attn_out", ("self_attn.out_proj",)),
        ("mlp_in", ("fc1",)),
        ("mlp_out", ("fc2",)),
    ),
    mlp=MlpSpec(kind="relu", up="fc1", down="fc2"),
    ffn_key="ffn_dim",
    position_offset=2,
    tiny_config=_tiny_opt,
    tiny_tokenizer="gpt2",
)

LLAMA = FamilyAdapter(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    blocks_path="model.layers",
    groups=(
        ("attn_in", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("attn_out", ("self_attn.o_proj",)),
        ("mlp_in", ("mlp.gate_proj", "mlp.up_proj")),
        ("mlp_out", ("mlp.down_proj",)),
    ),
    mlp=MlpSpec(kind="gated_silu", up="mlp.up_proj", down="mlp.down_proj", gate="mlp.gate_proj"),
    ffn_key="intermediate_size",
    tiny_config=_tiny_llama,
    tiny_tokenizer="smollm2",
)

FAMILIES = {f.family: f for f in (OPT, LLAMA)}
ADAPTERS = tuple(FAMILIES.values())


def family_named(name: str | None, setting: str = "model.family") -> FamilyAdapter:
    """The declared family ``name``; anything else is a one-line error naming the accepted ones."""
    if name not in FAMILIES:
        raise ValueError(f"{setting}={name!r} is not valid: accepted {', '.join(FAMILIES)}")
    return FAMILIES[name]


def declared(name: str | None) -> FamilyAdapter | None:
    """The declared family named ``name`` or whose ``model_types`` include it; None: none is."""
    if name in FAMILIES:
        return FAMILIES[name]
    return next((a for a in ADAPTERS if name in a.model_types), None)


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter for a loaded Hugging Face causal LM: the declared family of its
    ``config.model_type``, else one found from its structure (kept on the model, found once)."""
    known = declared(getattr(model.config, "model_type", None))
    if known is not None:
        return known
    found = getattr(model, "_llm_prune_family", None)
    if found is None:
        from .structure import discover

        found = FamilyAdapter(**discover(model))
        model._llm_prune_family = found
    return found
