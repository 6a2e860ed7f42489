"""Model-family adapters: where a causal LM keeps its decoder blocks and what is inside them.

The engine and the pruners know models only through this seam, so no pruner hard-codes
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

from torch import nn

from pruners.base import LinearGroup, MlpSpec


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
)

ADAPTERS = (OPT, LLAMA)


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter for a loaded Hugging Face causal LM, chosen by ``config.model_type``."""
    model_type = getattr(model.config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    accepted = sorted(t for a in ADAPTERS for t in a.model_types)
    raise ValueError(f"model_type={model_type!r} is not supported: accepted model types are {accepted}")
