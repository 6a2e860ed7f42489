"""Model families, declared once: where a causal LM keeps its decoder blocks, what is inside
them, and how a tiny random model of the family is built for tests.

The engine, the pruners, model loading (tiny models and their tokenizers), validation (the
config.json fields of a block) and the report (a tiny model's vocabulary) read a family only
from ``FAMILIES`` here, so adding a family is one entry in this module and no pruner hard-codes
``fc1`` or ``down_proj``. Two families cover the models the literature prunes:

* ``opt``: OPT (``model.model.decoder.layers``; MLP ``fc1 -> ReLU -> fc2`` with biases);
* ``llama``: LLaMA-2/3, TinyLlama, SmolLM2, Mistral, Qwen2-style blocks
  (``model.model.layers``; MLP ``down(silu(gate(x)) * up(x))``; rotary position embeddings
  passed to every block as ``position_embeddings`` in current transformers).

Blocks are called with the exact positional and keyword arguments the model passed to
block 0, captured by a hook, so position ids, masks and rotary embeddings are never rebuilt
by hand (rebuilding them is what breaks other tools on transformers upgrades).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn
from transformers import LlamaConfig, OPTConfig, PretrainedConfig



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
    pre_block_paths: tuple[str, ...]
    head_paths: tuple[str, ...]
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    mlp: MlpSpec
    ffn_key: str                                  # config.json field of the MLP width
    tiny_config: Callable[[dict], PretrainedConfig]  # model.tiny settings -> a tiny random model's config
    tiny_tokenizer: str                           # "smollm2" (the embedded one) or "gpt2"

    @property
    def tiny_vocab(self) -> int:
        """A tiny model's vocabulary when model.tiny gives none (the report needs it without a model)."""
        return self.tiny_config({}).vocab_size

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks, in order."""
        return model.get_submodule(self.blocks_path)

    def pre_block_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules that run before block 0 (embeddings, rotary tables): needed on the
        accelerator while block-0 inputs are captured."""
        return [m for p in self.pre_block_paths if (m := _optional(model, p)) is not None]

    def head(self, model: nn.Module) -> list[nn.Module]:
        """Modules applied after the last block, in order, to turn hidden states into logits."""
        return [m for p in self.head_paths if (m := _optional(model, p)) is not None]

    @staticmethod
    def finish_logits(model: nn.Module, logits):
        """The model's own logit post-processing after ``lm_head``: the soft-cap
        ``cap * tanh(logits / cap)`` where the config sets ``final_logit_softcapping`` (Gemma-2)."""
        cap = getattr(model.config, "final_logit_softcapping", None)
        return logits if not cap else cap * (logits / cap).tanh()

    def linear_groups(self, block: nn.Module) -> list[LinearGroup]:
        """Groups of prunable Linears that read the same input, in forward order."""
        return [LinearGroup(role, [n for n in names if _optional(block, n) is not None])
                for role, names in self.groups]

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
    pre_block_paths=("model.decoder.embed_tokens", "model.decoder.embed_positions", "model.decoder.project_in"),
    head_paths=("model.decoder.final_layer_norm", "model.decoder.project_out", "lm_head"),
    groups=(
        ("attn_in", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("attn_out", ("self_attn.out_proj",)),
        ("mlp_in", ("fc1",)),
        ("mlp_out", ("fc2",)),
    ),
    mlp=MlpSpec(kind="relu", up="fc1", down="fc2"),
    ffn_key="ffn_dim",
    tiny_config=_tiny_opt,
    tiny_tokenizer="gpt2",
)

LLAMA = FamilyAdapter(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    blocks_path="model.layers",
    pre_block_paths=("model.embed_tokens", "model.rotary_emb"),
    head_paths=("model.norm", "lm_head"),
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


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter for a loaded Hugging Face causal LM, chosen by ``config.model_type``."""
    model_type = getattr(model.config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    accepted = sorted(t for a in ADAPTERS for t in a.model_types)
    raise ValueError(f"model_type={model_type!r} is not supported: accepted model types are {accepted}")
