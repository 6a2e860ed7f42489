"""Mixture-of-experts blocks: experts stored as fused 3-D parameters, split into Linears to prune.

transformers 5 keeps the experts of Mixtral, Qwen2/3-MoE and most other MoE families in one
module with two parameters, ``gate_up_proj`` [experts, 2 x ffn, hidden] (gate rows, then up
rows) and ``down_proj`` [experts, hidden, ffn], and routes each token to its top-k experts.
For pruning, ``split`` swaps every such module for a ``SplitExperts``: a list of one small MLP
per expert (``gate_proj``, ``up_proj``, ``down_proj``, all ``nn.Linear``) with the same routed
forward, so

* a hook on expert e's ``gate_proj`` sees exactly the tokens routed to e: every pruner's
  statistics of an expert are those of its own tokens, with nothing expert-specific in the
  pruners;
* gate and up are separate matrices, so no per-row or per-matrix selection mixes them;
* block names read ``mlp.experts.<e>.gate_proj``, as in ``layers.csv``.

The Linears' weights are views into the fused parameters (no copy: the experts are held once);
``join`` writes back any weight that is no longer a view (moved, or replaced) and restores the
original module, so evaluation and ``save_pretrained`` see the model exactly as transformers built it.
The router (``mlp.gate``: a parameter, not a Linear) is never pruned: it decides which expert
a token reaches, and is a tiny part of the block. A shared expert (Qwen2-MoE) is a plain MLP of
Linears that every token reaches; it is pruned like any MLP, its sigmoid gate included.

Only the common layout is split (gated, gate and up concatenated, not transposed, no bias, no
norm after the experts); any other raises one line naming the module and its layout.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

# The expert-layout flags transformers' ``use_experts_implementation`` sets on a fused experts
# module, at the values ``SplitExperts`` reproduces.
LAYOUT = {"has_gate": True, "is_concatenated": True, "is_transposed": False, "has_bias": False,
          "has_post_expert_norm": False}


def is_fused(module: nn.Module) -> bool:
    """A fused experts module: 3-D ``gate_up_proj`` and ``down_proj`` parameters."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter) and gate_up.dim() == 3


class ExpertMLP(nn.Module):
    """One expert: ``down(act(gate(x)) * up(x))`` as three Linears."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
        super().__init__()
        self.gate_proj = _linear(gate)
        self.up_proj = _linear(up)
        self.down_proj = _linear(down)


def _linear(weight: torch.Tensor) -> nn.Linear:
    """A Linear whose weight is ``weight`` itself (a view into the fused parameter: no copy)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta", dtype=weight.dtype)
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return linear


class SplitExperts(nn.ModuleList):
    """A fused experts module as one ``ExpertMLP`` per expert, with the same routed forward
    (``forward(hidden_states, top_k_index, top_k_weights)``).

    No weight is copied: each Linear's weight is a view into the fused parameters, so pruning in
    place prunes them. When the block moves to an accelerator and back (the walk), the Linears
    come back as new tensors; ``_apply`` then writes them into the fused parameters and makes them
    views again, so the experts are never held twice on the CPU. The fused module is kept (not a
    submodule: it stays where it is) for ``join``."""

    def __init__(self, fused: nn.Module, path: str = "experts"):
        wrong = {k: getattr(fused, k, v) for k, v in LAYOUT.items() if getattr(fused, k, v) != v}
        if wrong:
            raise ValueError(f"{path} ({type(fused).__name__}): expert layout {wrong} is not supported: accepted "
                             f"fused experts with {LAYOUT}")
        gate_up, down = fused.gate_up_proj.data, fused.down_proj.data
        super().__init__(ExpertMLP(*self._slices(gate_up, down, e)) for e in range(gate_up.shape[0]))
        # Neither is a list item nor a submodule: the list holds the experts only, and the fused
        # module must not move with the block.
        object.__setattr__(self, "act_fn", fused.act_fn)
        object.__setattr__(self, "_fused", fused)

    @staticmethod
    def _slices(gate_up: torch.Tensor, down: torch.Tensor, e: int) -> tuple[torch.Tensor, ...]:
        """Expert ``e``'s gate, up and down matrices as views of the fused tensors."""
        ffn = gate_up.shape[1] // 2
        return gate_up[e, :ffn], gate_up[e, ffn:], down[e]

    def _sync(self) -> None:
        """Every Linear weight that is not its view of the fused parameters (moved, or replaced by a
        pruner) is written into them and becomes that view again."""
        fused = self._fused
        for e, expert in enumerate(self):
            for linear, home in zip((expert.gate_proj, expert.up_proj, expert.down_proj),
                                    self._slices(fused.gate_up_proj.data, fused.down_proj.data, e)):
                if linear.weight.data_ptr() != home.data_ptr():
                    home.copy_(linear.weight.data)
                    linear.weight.data = home

    def _apply(self, fn, *args, **kwargs):
        """Move the Linears (``.to(device)``); back on the fused parameters' device, they are views again."""
        out = super()._apply(fn, *args, **kwargs)
        moved, home = self[0].gate_proj.weight, self._fused.gate_up_proj
        if (moved.device, moved.dtype) == (home.device, home.dtype):
            self._sync()
        return out

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        """Each token through its top-k experts, weighted by the router (as transformers' eager experts)."""
        out = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self):
            slot, token = torch.where(top_k_index.T == e)  # transformers' order: by slot, then token
            if token.numel() == 0:
                continue
            x = hidden_states[token]
            y = expert.down_proj(self.act_fn(expert.gate_proj(x)) * expert.up_proj(x))
            out.index_add_(0, token, (y * top_k_weights[token, slot, None]).to(out.dtype))
        return out

    def join(self) -> nn.Module:
        """The original fused module, holding the Linears' current weights."""
        self._sync()
        return self._fused


def _fused_modules(root: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute, module)`` of every fused experts module under ``root``."""
    return [(root.get_submodule(path.rpartition(".")[0]), path.rpartition(".")[2], m)
            for path, m in root.named_modules() if is_fused(m)]


def split(model: nn.Module) -> int:
    """Swap every fused experts module of ``model`` for a ``SplitExperts``; return how many."""
    found = _fused_modules(model)
    for parent, name, module in found:
        setattr(parent, name, SplitExperts(module, name))
    return len(found)


def join(model: nn.Module) -> None:
    """Undo ``split``: every ``SplitExperts`` back to its fused module, holding the current weights."""
    for path, module in list(model.named_modules()):
        if isinstance(module, SplitExperts):
            parent, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent), name, module.join())


@contextmanager
def split_experts(model: nn.Module) -> Iterator[int]:
    """Within the block: the model's experts split into Linears (yields how many modules); joined
    back on the way out, also after an error."""
    count = split(model)
    try:
        yield count
    finally:
        if count:
            join(model)


def expert_paths(block: nn.Module) -> list[str]:
    """Paths (inside ``block``) of its ``SplitExperts`` modules."""
    return [path for path, m in block.named_modules() if isinstance(m, SplitExperts)]


def groups(block: nn.Module) -> list[tuple[str, list[str]]]:
    """The input groups of a block's split experts: expert e's gate and up read its routed tokens
    (``expert_in``), its down projection their activations (``expert_out``)."""
    out = []
    for path in expert_paths(block):
        for e in range(len(block.get_submodule(path))):
            out.append(("expert_in", [f"{path}.{e}.gate_proj", f"{path}.{e}.up_proj"]))
            out.append(("expert_out", [f"{path}.{e}.down_proj"]))
    return out


def inside(name: str, paths: list[str]) -> bool:
    """Whether the module ``name`` (inside a block) lies in one of the expert modules ``paths``."""
    return any(name.startswith(p + ".") for p in paths)
