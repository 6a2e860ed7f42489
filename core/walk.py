"""The one block walk: capture what enters the decoder blocks, then carry hidden states through
them one block at a time.

Pruning (runners/execution/engine.py), block-by-block evaluation (eval/blockwise.py) and the
benchmarks all walk the blocks this way, so the rule "each block is called exactly as the model
itself would call it" lives here only:

1. ``capture`` runs the model's own forward once per batch with every block's ``forward``
   swapped for a recorder. The recorder keeps what the model passes to that block (positional
   and keyword arguments: attention mask, position ids, rotary tables, cache position) and
   hands the hidden states on unchanged, so no block is computed. Models with
   ``config.layer_types`` (Gemma-2/3, Qwen with sliding windows) give sliding and full layers
   different masks and rotary tables; recording per block keeps them apart. Identical objects
   (the same mask for every full layer) are stored once, as references.
2. ``walk`` moves one block at a time to the device, yields it with its inputs, runs it (or
   takes the outputs its consumer already computed) and carries the outputs to the next block.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .families import FamilyAdapter
from .progress import progress


@dataclass
class Batch:
    """Inputs of one block call: hidden states plus the other arguments the model passed."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict


class _Captured(Exception):
    """Raised by a recorder (or a statistics hook) to stop a forward pass early."""


def to_device(value, device):
    """Move tensors (also inside tuples/lists/dicts) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


@dataclass
class BlockInputs:
    """Hidden states entering the next block (one tensor per batch) and every block's own call
    arguments (``calls[block][batch] = (args, kwargs)``), as the model passed them."""

    hidden: list[torch.Tensor]
    calls: list[list[tuple[tuple, dict]]]
    offload: bool = False   # keep hidden states in CPU memory between blocks
    device: str = "cpu"

    def batches(self, index: int) -> list[Batch]:
        """The calls of block ``index``: current hidden states with that block's own arguments."""
        return [Batch(h.to(self.device), *call) for h, call in zip(self.hidden, self.calls[index])]

    def advance(self, outputs: list[torch.Tensor]) -> None:
        """The outputs of the block just run become the next block's hidden states."""
        self.hidden = [o.cpu() if self.offload else o for o in outputs]


@contextmanager
def _blocks_replaced(model: nn.Module, family: FamilyAdapter, forward, device: str):
    """Within the block: every block's ``forward`` is ``forward(index)`` (an instance attribute
    shadows the class's) and the modules outside the blocks sit on ``device``."""
    blocks = family.blocks(model)
    outside = family.outside_blocks(model)
    for part in outside:
        part.to(device)
    for i, block in enumerate(blocks):
        block.forward = forward(i)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward
        if device != "cpu":
            for part in outside:
                part.to("cpu")


@torch.no_grad()
def capture(model: nn.Module, family: FamilyAdapter, tokens: torch.Tensor, device: str,
            batch_size: int = 1, offload: bool = False) -> BlockInputs:
    """Run ``tokens`` (n x seqlen) through the model's embedding and its block loop with
    recording blocks; return block 0's hidden states and every block's call arguments.

    Only the modules outside the blocks run (on ``device``); no block is computed.
    With ``offload`` the hidden states are kept in CPU memory between blocks.
    """
    n_blocks = len(family.blocks(model))
    hidden: list[torch.Tensor] = []
    calls: list[list[tuple[tuple, dict]]] = [[] for _ in range(n_blocks)]

    def recorder(index: int):
        def forward(*args, **kwargs):
            kwargs = dict(kwargs)
            state = args[0] if args else kwargs.pop("hidden_states")
            if index == 0:
                hidden.append(state.cpu() if offload else state)
            calls[index].append((tuple(args[1:]), kwargs))
            if index == n_blocks - 1:
                raise _Captured
            return state
        return forward

    with _blocks_replaced(model, family, recorder, device):
        for start in progress(range(0, len(tokens), batch_size), "capture block inputs"):
            try:
                model(input_ids=tokens[start : start + batch_size].to(device), use_cache=False)
            except _Captured:
                pass
    return BlockInputs(hidden, calls, offload, device)


@torch.no_grad()
def run_block(block: nn.Module, batches: list[Batch]) -> list[torch.Tensor]:
    """The block's output hidden states for every batch."""
    outputs = []
    for b in batches:
        out = block(b.hidden, *b.args, **b.kwargs)
        # transformers 5 returns a tensor; older releases a tuple whose [0] is the hidden state.
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


@dataclass
class Step:
    """One block of a walk: its index, the block (on the device) and its inputs. A consumer
    that runs the block itself (to compare outputs, say) sets ``outputs`` so it is not run twice."""

    index: int
    block: nn.Module
    batches: list[Batch] | None
    outputs: list[torch.Tensor] | None = field(default=None)


def walk(model: nn.Module, family: FamilyAdapter, inputs: BlockInputs | None, device: str,
         last: int | None = None, desc: str = "blocks") -> Iterator[Step]:
    """Walk blocks 0..``last`` (default: all) one at a time on ``device``, carrying ``inputs``.

    Each block is yielded before it runs, so a consumer can gather statistics and prune it; then
    its outputs (``step.outputs``, or a run of the block as it is now) become the next block's
    inputs and the block goes back to the CPU. With ``inputs=None`` nothing is run (a pruner
    that needs no data).
    """
    blocks = family.blocks(model)
    last = len(blocks) - 1 if last is None else last
    for i in progress(range(last + 1), desc):
        block = blocks[i].to(device)
        step = Step(i, block, inputs.batches(i) if inputs is not None else None)
        yield step
        if inputs is not None:
            inputs.advance(step.outputs if step.outputs is not None else run_block(block, step.batches))
        if device != "cpu":
            block.to("cpu")


@torch.no_grad()
def final_hidden(model: nn.Module, family: FamilyAdapter, tokens: torch.Tensor, device: str,
                 batch_size: int = 1, offload: bool = False) -> BlockInputs:
    """``tokens`` carried through every block, one block on ``device`` at a time: the hidden
    states that enter the model's head (``family.head``), per batch."""
    inputs = capture(model, family, tokens, device, batch_size, offload)
    for _ in walk(model, family, inputs, device, desc="forward block by block"):
        pass
    return inputs


@torch.no_grad()
def head_logits(model: nn.Module, family: FamilyAdapter, hidden: list[torch.Tensor], tokens: list[torch.Tensor],
                device: str) -> Iterator[torch.Tensor]:
    """Logits of each batch of ``tokens`` from the final hidden states ``hidden`` of its blocks,
    computed by the model's own forward with every block replaced (the last returns the batch's
    hidden states): the model's final norm, projections, ``lm_head`` and logit soft-cap apply
    exactly as in a whole forward. The modules outside the blocks move to ``device`` once."""
    last, current = len(family.blocks(model)) - 1, [None]

    def replaced(index: int):
        def forward(*args, **kwargs):
            return current[0] if index == last else (args[0] if args else kwargs["hidden_states"])
        return forward

    with _blocks_replaced(model, family, replaced, device):
        for states, ids in zip(hidden, tokens):
            current[0] = states.to(device)
            yield model(input_ids=ids.to(device), use_cache=False).logits
