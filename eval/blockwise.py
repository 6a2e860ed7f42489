"""Perplexity computed block by block, for models larger than the device.

The weights stay in CPU memory; the windows' hidden states are carried across the decoder
blocks, one block on the device at a time (``core.walk``, the walk pruning uses); then the
model's own head (final norm, lm_head, any soft-cap) turns them into logits and the same loss
as ``eval.perplexity``.
The number equals the whole-model forward up to float rounding (tested to 1e-5 relative).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from core.families import adapter_for
from core.walk import final_hidden, head_logits

from .perplexity import exp_mean, labeled_windows, next_token_losses

SETTINGS = ("auto", "true", "false")


def check_setting(value) -> bool | str:
    """``eval.blockwise`` as True, False or ``'auto'``; a bad value is a one-line error."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return "auto"
    raise ValueError(f"eval.blockwise={value!r} is not valid: accepted auto, true, false")


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def device_free_bytes(device: str) -> int:
    """Free memory of ``device``: the accelerator's free memory, or the host's available memory
    on the CPU (where the model already lives, so whole-model evaluation needs nothing more)."""
    if str(device).startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def use_blockwise(setting, model: nn.Module, device: str) -> bool:
    """Whether to evaluate block by block. ``auto``: only when the model does not fit on the device.

    On the CPU the model is already in host memory, so ``auto`` is whole-model there; on an
    accelerator the model needs its own bytes plus a margin (a fifth, for activations and logits).
    """
    setting = check_setting(setting)
    if setting != "auto":
        return setting
    if str(device) == "cpu":
        return False
    return model_bytes(model) * 1.2 > device_free_bytes(device)


@torch.no_grad()
def blockwise_window_losses(model: nn.Module, batches: torch.Tensor, device: str,
                            batch_size: int = 1, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of every window (float32), one block on ``device`` at a time;
    ``labels`` as ``eval.perplexity.window_losses`` (None: every next token).

    Hidden states between blocks are kept on the CPU so the device holds one block and one
    batch's activations; the model ends on the CPU.
    """
    family = adapter_for(model)
    labels = batches if labels is None else labels
    states = final_hidden(model, family, batches, device, batch_size, offload=True)
    starts = range(0, len(batches), batch_size)
    windows = [batches[start : start + batch_size] for start in starts]
    losses = [next_token_losses(logits, labels[start : start + batch_size]).cpu()
              for logits, start in zip(head_logits(model, family, states.hidden, windows, device), starts)]
    return torch.cat(losses)


def blockwise_perplexity(model: nn.Module, ids: torch.Tensor, seqlen: int, device: str,
                         max_windows: int | None = None, batch_size: int = 1, bos: int | None = None) -> float:
    """Perplexity of ``model`` on token ids (1 x n), block by block; same windows (and ``bos``) as ``perplexity``."""
    inputs, labels = labeled_windows(ids, seqlen, max_windows, bos)
    return exp_mean(blockwise_window_losses(model, inputs, device, batch_size, labels))


def offload_device_map(model: nn.Module, device_bytes: int, host_bytes: int) -> dict:
    """accelerate's device map for a model larger than the accelerator (zero-shot under lm-eval):
    whole decoder blocks on GPU 0 up to ``device_bytes``, the rest in CPU memory (never a block split)."""
    from accelerate import infer_auto_device_map

    block = type(adapter_for(model).blocks(model)[0]).__name__
    return infer_auto_device_map(model, max_memory={0: int(device_bytes), "cpu": int(host_bytes)},
                                 no_split_module_classes=[block], dtype=next(model.parameters()).dtype)


def dispatch_for_zeroshot(model: nn.Module, device: str) -> nn.Module:
    """Spread ``model`` over the accelerator and CPU memory with ``accelerate.dispatch_model``
    (4/5 of the free accelerator memory, leaving room for activations); lm-eval then runs it as is."""
    from accelerate import dispatch_model

    device_map = offload_device_map(model, device_free_bytes(device) * 0.8, device_free_bytes("cpu"))
    return dispatch_model(model, device_map=device_map, main_device=device)
