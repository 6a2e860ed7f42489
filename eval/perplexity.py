"""Perplexity over non-overlapping windows, as every pruning paper reports it.

``n = numel // seqlen`` windows, the tail dropped; ``ppl = exp(mean over windows of the mean
next-token cross-entropy)``. ``max_windows`` keeps only the first windows (for CPU-sized
protocols). The token ids are the whole test text as the tokenizer encodes it, so a tokenizer
that adds a BOS token (LLaMA-2, Gemma) puts one at the start of the first window only.

``eval.bos`` (:func:`check_bos`, :func:`resolve_bos`): whether every window is read after the
tokenizer's BOS token, for models trained to always see one first (Gemma). The two conventions
score the same target tokens, every token of a window after its first:

* ``bos=false`` (the papers' and the harness's original protocol): a window is ``seqlen`` tokens
  of the text; the loss is over its tokens 1..seqlen-1, each predicted from the tokens before it.
* ``bos=true``: the BOS id is put in front of each window, so the model reads ``seqlen + 1``
  tokens, and the loss is over the same tokens 1..seqlen-1 of the window (the prediction of the
  window's first token from the BOS alone is not scored). A window that already begins with the
  tokenizer's BOS (the first one, for Gemma) gets no second BOS: it is read as it is, followed
  by the next token of the text to make up the row's length; that extra token is not scored, and
  a causal model's earlier outputs do not see it.

The rows the model reads and what they score are :func:`labeled_windows` (labels as Hugging
Face's ``labels``: the token a position's predecessor must predict, ``IGNORE`` where nothing is
scored); whole-model (here) and block-by-block (eval/blockwise.py) evaluation both use it and
:func:`next_token_losses`.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from core.progress import progress

IGNORE = -100  # a label that is not scored (Hugging Face's ignore index)
BOS_SETTINGS = ("auto", "true", "false")


def check_bos(value) -> bool | str:
    """``eval.bos`` as True, False or ``'auto'`` (the model's own default); a bad value is a
    one-line error naming the key, the value and what is accepted."""
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError(f"eval.bos={value!r} is not valid: accepted auto, true, false")


def resolve_bos(setting, model_default: bool = False) -> bool:
    """Whether windows get a BOS: ``eval.bos`` when true/false, else the model preset's ``model.bos``."""
    setting = check_bos(setting)
    return bool(model_default) if setting == "auto" else setting


def _count(ids: torch.Tensor, seqlen: int, max_windows: int | None) -> int:
    count = ids.numel() // seqlen
    if max_windows:
        count = min(count, int(max_windows))
    if count == 0:
        raise ValueError(f"eval.seqlen={seqlen} is longer than the whole text ({ids.numel()} tokens)")
    return count


def labeled_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
                    bos: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of the windows of (1 x n) token ids (module docstring).

    ``bos`` None: (windows x seqlen) inputs, the labels the inputs themselves (every position
    after the first is a target). ``bos`` the BOS id: (windows x (seqlen + 1)) inputs, the BOS
    first, and labels ``IGNORE`` except on the window's tokens after its first.
    """
    count = _count(ids, seqlen, max_windows)
    flat = ids.reshape(-1)
    rows = flat[: count * seqlen].view(count, seqlen)
    if bos is None:
        return rows, rows
    inputs = torch.cat([torch.full((count, 1), int(bos), dtype=rows.dtype), rows], 1)
    labels = inputs.clone()
    labels[:, :2] = IGNORE  # the BOS and the window's first token are never targets
    if int(flat[0]) == int(bos):  # the tokenizer's own BOS leads the first window: no second one
        if flat.numel() <= seqlen:
            raise ValueError(f"eval.seqlen={seqlen} with eval.bos=true needs one token more than the whole text "
                             f"({flat.numel()} tokens)")
        inputs[0] = flat[: seqlen + 1]
        labels[0] = inputs[0]
        labels[0, 0] = IGNORE
        labels[0, seqlen] = IGNORE  # the token after the window: only there to make up the row
    return inputs, labels


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None, bos: int | None = None) -> torch.Tensor:
    """The rows the model reads: (windows x seqlen) of the ids, tail dropped; with ``bos``,
    (windows x (seqlen + 1)) as :func:`labeled_windows` makes them."""
    return labeled_windows(ids, seqlen, max_windows, bos)[0]


def next_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each row (float32 on the logits' device): position ``i``'s
    logits against ``labels[:, i + 1]``, ``IGNORE`` labels left out."""
    shift = logits[:, :-1].float()
    target = labels[:, 1:].to(shift.device)
    loss = F.cross_entropy(shift.reshape(-1, shift.shape[-1]), target.reshape(-1), reduction="none",
                           ignore_index=IGNORE).view(target.shape)
    keep = target != IGNORE
    if bool(keep.all()):
        return loss.mean(1)  # every position scored: the original computation, bit for bit
    return (loss * keep).sum(1) / keep.sum(1)


@torch.no_grad()
def window_losses(model: torch.nn.Module, batches: torch.Tensor, device: str, batch_size: int = 1,
                  desc: str = "perplexity", labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of every window (float32), model already on ``device``.
    ``labels``: what each row scores (:func:`labeled_windows`); None: every next token."""
    labels = batches if labels is None else labels
    losses = []
    for start in progress(range(0, len(batches), batch_size), desc):
        x = batches[start : start + batch_size].to(device)
        logits = model(input_ids=x).logits
        losses.append(next_token_losses(logits, labels[start : start + batch_size]).cpu())
    return torch.cat(losses)


def perplexity(model: torch.nn.Module, ids: torch.Tensor, seqlen: int, device: str,
               max_windows: int | None = None, batch_size: int = 1, desc: str = "perplexity",
               bos: int | None = None) -> float:
    """Perplexity of ``model`` on token ids (1 x n); NaN/inf are returned as they are.
    ``bos``: the BOS id to read every window after (``eval.bos``), None for none."""
    inputs, labels = labeled_windows(ids, seqlen, max_windows, bos)
    return exp_mean(window_losses(model, inputs, device, batch_size, desc, labels))


def exp_mean(losses: torch.Tensor) -> float:
    """``exp`` of the mean window loss; NaN stays NaN, an overflow is inf."""
    mean = losses.double().mean().item()
    return math.exp(mean) if math.isfinite(mean) and mean < 700 else (float("inf") if mean == mean else float("nan"))
