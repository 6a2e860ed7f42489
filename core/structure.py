"""Taking a decoder-only causal LM apart by its structure, for families nobody declared.

* The blocks: the ``nn.ModuleList`` of ``config.num_hidden_layers`` modules that the base
  model iterates (found by path, the shortest such list).
* The prunable matrices of a block: its ``nn.Linear`` modules, and the experts of a
  mixture-of-experts block once split into Linears (core/experts.py; the router stays dense).
* Which of them read the same input: watched in one short forward of the model (two tokens, up
  to the end of block 0): Linears handed the very same input tensor share their statistics
  (q, k, v; gate, up). Groups are kept in the order the forward reaches them; a group whose
  names contain ``attn``/``attention`` is an attention group, any other an MLP group, and
  within each the first is ``*_in`` and the last ``*_out``.
* Fused projections (Phi-3's ``qkv_proj`` and ``gate_up_proj``) are recorded with the rows
  of each part, so per-matrix and per-block selections treat q, k, v (gate, up) as the
  separate matrices they are.

``refusal`` reads only ``config.json`` fields, so validation can refuse a model before a weight
loads, with one line naming its ``model_type`` and what is missing.
"""
from __future__ import annotations

import torch
from torch import nn

from . import experts

# config.json fields that count a mixture-of-experts model's routed experts, and the number each token reaches.
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "top_k")
# Mixture-of-experts families of transformers 5 whose fused experts have another layout than
# the one core/experts.py splits (the flags of their ``use_experts_implementation``).
OTHER_EXPERT_LAYOUTS = {
    "aria_text": "transposed", "aria": "transposed", "ergo": "transposed and without a gate",
    "gpt_oss": "transposed, gate and up interleaved, with biases", "muse_spark_text": "with a norm after each expert",
    "nemotron_h": "without a gate", "openai_privacy_filter": "transposed, with biases",
}


def refusal(config: dict) -> str | None:
    """Why a model with these ``config.json`` fields cannot be taken apart (None: it can)."""
    config = config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config
    model_type = config.get("model_type")
    what = f"model_type={model_type!r}"
    if config.get("is_encoder_decoder"):
        return f"{what} is an encoder-decoder model: accepted decoder-only causal LMs"
    layout = OTHER_EXPERT_LAYOUTS.get(model_type)
    if layout:
        return (f"{what} stores its experts {layout}: accepted mixture-of-experts models whose fused experts "
                f"are gated, gate and up concatenated, not transposed, without biases (core/experts.py)")
    if not config.get("num_hidden_layers"):
        return f"{what} has no num_hidden_layers in its config.json: the decoder blocks cannot be found"
    return None


def find_blocks(model: nn.Module) -> str:
    """Path of the decoder block list: the shortest-path ``ModuleList`` of ``num_hidden_layers`` modules."""
    n = getattr(model.config, "num_hidden_layers", None)
    found = [name for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == n and n]
    if not found:
        raise ValueError(f"model_type={model.config.model_type!r}: no list of {n} decoder blocks found in "
                         f"{type(model).__name__}: accepted decoder-only causal LMs with a block list")
    return min(found, key=lambda p: (p.count("."), p))


class _Stop(Exception):
    pass


@torch.no_grad()
def watch_inputs(model: nn.Module, blocks_path: str) -> list[list[str]]:
    """Names (relative to block 0) of block 0's Linears grouped by the input tensor they are
    handed, in the order the forward reaches them: one forward of two tokens, stopped after block 0."""
    blocks = model.get_submodule(blocks_path)
    block = blocks[0]
    groups: list[tuple[torch.Tensor, list[str]]] = []
    handles = []
    routed = experts.expert_paths(block)  # split experts: grouped per expert, not by watching
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear) and not experts.inside(name, routed):
            def hook(_m, args, name=name):
                for x, names in groups:
                    if args[0] is x:
                        names.append(name)
                        return
                groups.append((args[0], [name]))
            handles.append(module.register_forward_pre_hook(hook))

    def stop(*_a, **_k):
        raise _Stop

    handles.append(block.register_forward_hook(stop))
    device = next(model.parameters()).device
    try:
        model(input_ids=torch.tensor([[1, 2]], device=device), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return [names for _x, names in groups]


def _roles(groups: list[list[str]]) -> list[str]:
    """``attn_in``/``attn_out``/``mlp_in``/``mlp_out`` (``attn_2``... for middle groups) by name and order."""
    kinds = ["attn" if any(k in n.lower() for n in names for k in ("attn", "attention")) else "mlp" for names in groups]
    roles = []
    for i, kind in enumerate(kinds):
        same = [j for j, k in enumerate(kinds) if k == kind]
        at = same.index(i)
        roles.append(f"{kind}_in" if at == 0 else f"{kind}_out" if at == len(same) - 1 else f"{kind}_{at}")
    return roles


def fused_parts(config, linears: dict[str, nn.Linear]) -> tuple:
    """The row layout of fused projections: ``qkv_proj`` (q, k, v) and ``gate_up_proj`` (gate, up),
    checked against the Linear's output width."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    ffn = getattr(config, "intermediate_size", None)
    layouts = {"qkv_proj": (("q", heads * head_dim), ("k", kv * head_dim), ("v", kv * head_dim)),
               "gate_up_proj": (("gate", ffn), ("up", ffn))}
    out = []
    for name, linear in linears.items():
        layout = layouts.get(name.rpartition(".")[2])
        if layout is None:
            continue
        if None in (r for _p, r in layout) or sum(r for _p, r in layout) != linear.out_features:
            raise ValueError(f"model_type={config.model_type!r}: fused {name} has {linear.out_features} rows, "
                             f"not the {' + '.join(str(r) for _p, r in layout)} of its parts")
        out.append((name, layout))
    return tuple(out)


def discover(model: nn.Module) -> dict:
    """The fields of a ``FamilyAdapter`` (core/families.py) for a model of no declared family,
    from its structure."""
    config = model.config
    problem = refusal(config.to_dict())
    if problem:
        raise ValueError(problem)
    path = find_blocks(model)
    groups = watch_inputs(model, path)
    block = model.get_submodule(path)[0]
    routed = experts.expert_paths(block)
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear) and not experts.inside(n, routed)}
    unseen = [n for n in linears if not any(n in g for g in groups)]
    if unseen:
        raise ValueError(f"model_type={config.model_type!r}: Linears {unseen} of block 0 are not reached by a "
                         f"forward pass: accepted blocks whose every Linear runs on every token")
    return dict(family=config.model_type, model_types=(config.model_type,), blocks_path=path,
                groups=tuple((role, tuple(names)) for role, names in zip(_roles(groups), groups)),
                mlp=None, parts=fused_parts(config, linears))
