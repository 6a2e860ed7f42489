"""Perplexity over non-overlapping windows, as every pruning paper reports it.

``n = numel // seqlen`` windows, the tail dropped, no extra BOS per window;
``ppl = exp(mean over windows of the mean next-token cross-entropy)``.
``max_windows`` keeps only the first windows (for CPU-sized protocols).
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from core.progress import progress


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Split (1 x n) token ids into (windows x seqlen), tail dropped."""
    count = ids.numel() // seqlen
    if max_windows:
        count = min(count, int(max_windows))
    if count == 0:
        raise ValueError(f"eval.seqlen={seqlen} is longer than the whole text ({ids.numel()} tokens)")
    return ids.reshape(-1)[: count * seqlen].view(count, seqlen)


def token_losses(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (float32) of each window of ``x`` (windows x seqlen) given
    its ``logits`` (windows x seqlen x vocab): position t predicts token t + 1."""
    shift = logits[:, :-1].float()
    loss = F.cross_entropy(shift.reshape(-1, shift.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
    return loss.view(x.shape[0], -1).mean(1).cpu()


def ppl_from_losses(losses: torch.Tensor) -> float:
    """``exp`` of the mean window loss; a mean too large for exp gives inf, a NaN stays NaN."""
    mean = losses.double().mean().item()
    return math.exp(mean) if math.isfinite(mean) and mean < 700 else (float("inf") if mean == mean else float("nan"))


@torch.no_grad()
def window_losses(model: torch.nn.Module, batches: torch.Tensor, device: str, batch_size: int = 1,
                  desc: str = "perplexity") -> torch.Tensor:
    """Mean next-token cross-entropy of every window (float32), model already on ``device``."""
    losses = []
    for start in progress(range(0, len(batches), batch_size), desc):
        x = batches[start : start + batch_size].to(device)
        losses.append(token_losses(model(input_ids=x).logits, x))
    return torch.cat(losses)


def perplexity(model: torch.nn.Module, ids: torch.Tensor, seqlen: int, device: str,
               max_windows: int | None = None, batch_size: int = 1, desc: str = "perplexity") -> float:
    """Perplexity of ``model`` on token ids (1 x n); NaN/inf are returned as they are."""
    return ppl_from_losses(window_losses(model, windows(ids, seqlen, max_windows), device, batch_size, desc))
