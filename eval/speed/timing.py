"""Tokens per second, memory and size on disk of one (pruned) model under each matrix kernel.

``measure(model, blocks_of, kernels, settings, device)`` times, for every kernel of
``eval/speed/kernels.py`` that can run here:

- ``prefill``: one forward of a ``prefill_tokens``-token prompt (batch 1) that fills the KV cache;
- ``decode``: a short prompt, then ``decode_tokens`` new tokens one at a time with the KV cache,
  for each batch size of ``decode_batches`` (the greedy next token is fed back, as in generation;
  the prompt's forward, about one step, is inside the timing);

each ``warmup`` times untimed, then ``repeats`` times: the median, the fastest and the slowest
go in the row, with the torch thread count and the kernel's name. The kernel's model answers the
same prompt as the dense-kernel model first: ``max_abs_logit_diff`` is their largest logit
difference (the sparse product is only a speed-up if it computes the same function).
``model_mb`` is the bytes the model's tensors hold in that kernel's layout (exact);
``peak_mb`` is the process's peak resident memory during the timings on the CPU (sampled, the
whole process), torch's allocator peak on CUDA.

``disk(model, blocks, folder)`` writes the model's state in the sparse-bitmask layout
(``eval/speed/bitmask.py``) and densely, reads the sparse file back, and checks every tensor
equal: two ``disk`` rows with the bytes of each file.
"""
from __future__ import annotations

import copy
import inspect
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from core.memory import PeakMemory
from eval.speed import bitmask
from eval.speed.kernels import Kernel, sparsify

COLUMNS = ["kernel", "phase", "batch", "tokens", "threads", "device", "median_s", "min_s", "max_s", "tokens_per_s",
           "speedup", "model_mb", "peak_mb", "bytes", "max_abs_logit_diff", "status", "message"]


@dataclass(frozen=True)
class SpeedSettings:
    """What is timed (``measure``): prompt and generation lengths, batches, repetitions."""

    prefill_tokens: int = 512
    decode_tokens: int = 128
    decode_batches: tuple[int, ...] = (1, 8)
    prompt_tokens: int = 16  # the context each decode starts from
    warmup: int = 1
    repeats: int = 3
    seed: int = 0


def check_kernel_list(value) -> None:
    """Raise (one line) unless ``value`` is a list of kernel names starting with ``dense``."""
    from eval.speed.kernels import KERNELS

    names = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(
        value, str) else None
    if not names or names[0] != "dense" or any(n not in KERNELS for n in names) or len(set(names)) != len(names):
        raise ValueError(f"measure.kernels={names if names is not None else value!r} is not valid: accepted a list "
                         f"of {', '.join(KERNELS)} starting with dense (the reference), each once")


def check_batches(value) -> None:
    """Raise (one line) unless ``value`` is a non-empty list of whole numbers >= 1."""
    items = list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else None
    if not items or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in items):
        raise ValueError(f"measure.decode_batches={items if items is not None else value!r} is not valid: "
                         "accepted a list of whole numbers >= 1 such as [1, 8]")


def from_config(measure) -> tuple[SpeedSettings, list]:
    """``(settings, kernels)`` of a run's ``measure`` config (checked: one-line ValueError)."""
    from eval.speed.kernels import kernel

    check_kernel_list(list(measure.kernels))
    check_batches(list(measure.decode_batches))
    settings = SpeedSettings(int(measure.prefill_tokens), int(measure.decode_tokens),
                             tuple(int(b) for b in measure.decode_batches), warmup=int(measure.warmup),
                             repeats=int(measure.repeats))
    return settings, [kernel(name) for name in measure.kernels]


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _times(work: Callable[[], None], settings: SpeedSettings, device: str) -> list[float]:
    for _ in range(settings.warmup):
        work()
    _sync(device)
    seconds = []
    for _ in range(settings.repeats):
        start = time.perf_counter()
        work()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def tensor_bytes(model) -> int:
    """Bytes held by the model's parameters and buffers, sparse layouts counted by their parts
    (values and indices); a tensor shared by two names counts once."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if t is None or not isinstance(t, torch.Tensor):
            return
        if t.layout in (torch.sparse_csr, torch.sparse_bsr):
            parts = (t.values(), t.crow_indices(), t.col_indices())
        elif type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter and hasattr(t, "packed"):
            parts = tuple(p for p in (t.packed, getattr(t, "meta", None)) if p is not None)  # semi-structured
        else:
            parts = (t,)
        for p in parts:
            key = (p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape))
            if key not in seen:
                seen.add(key)
                total += p.numel() * p.element_size()

    for t in list(model.parameters()) + list(model.buffers()):
        add(t)
    for module in model.modules():  # SparseLinear keeps its packed weight as a plain attribute
        packed = getattr(module, "packed", None)
        if isinstance(packed, torch.Tensor):
            add(packed)
        elif packed is not None and hasattr(packed, "data"):  # scipy CSR (mkl)
            total += packed.data.nbytes + packed.indices.nbytes + packed.indptr.nbytes
    return total


@torch.no_grad()
def _prefill(model, ids):
    return model(input_ids=ids, use_cache=True)


def _cache_key(model) -> str:
    """The forward's name for the KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def _decode(model, prompt, steps: int) -> None:
    key = _cache_key(model)
    out = model(input_ids=prompt, use_cache=True)
    for _ in range(steps):
        token = out.logits[:, -1:].argmax(-1)  # greedy: the next token fed back, as generation does
        out = model(input_ids=token, use_cache=True, **{key: getattr(out, key)})


def _row(kernel: str, phase: str, batch: int, tokens: int, device: str, **values) -> dict:
    row = {c: None for c in COLUMNS}
    row.update(kernel=kernel, phase=phase, batch=batch, tokens=tokens, threads=torch.get_num_threads(),
               device=str(device), status="ok", message="")
    row.update(values)
    return row


def _timed_rows(model, name: str, settings: SpeedSettings, device: str, prompt, vocab: int, model_mb: float,
                memory: PeakMemory) -> list[dict]:
    rows = []
    generator = torch.Generator().manual_seed(settings.seed)
    with memory:
        seconds = _times(lambda: _prefill(model, prompt), settings, device)
        rows.append(_row(name, "prefill", 1, prompt.shape[1], device, **_stats(seconds, prompt.shape[1])))
        for batch in settings.decode_batches:
            context = torch.randint(0, vocab, (batch, settings.prompt_tokens), generator=generator).to(device)
            seconds = _times(lambda: _decode(model, context, settings.decode_tokens), settings, device)
            rows.append(_row(name, "decode", batch, batch * settings.decode_tokens, device,
                             **_stats(seconds, batch * settings.decode_tokens)))
    peak = memory.summary()
    for row in rows:
        row["model_mb"] = model_mb
        row["peak_mb"] = peak["peak_cuda_mb"] if peak["peak_cuda_mb"] is not None else peak["peak_rss_mb"]
    return rows


def _stats(seconds: list[float], tokens: int) -> dict:
    median = statistics.median(seconds)
    return {"median_s": median, "min_s": min(seconds), "max_s": max(seconds), "tokens_per_s": tokens / median}


def measure(model, blocks_of: Callable, kernels: list[Kernel], settings: SpeedSettings, device: str) -> list[dict]:
    """One row per (kernel, phase, batch); a kernel that cannot run here is one ``unavailable`` row
    naming why. ``blocks_of(model)``: the decoder blocks whose Linears a kernel takes over.
    ``speedup``: the dense kernel's median seconds over this kernel's, same phase and batch."""
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(settings.seed)
    prompt = torch.randint(0, vocab, (1, settings.prefill_tokens), generator=generator).to(device)
    dtype = next(model.parameters()).dtype
    reference = None
    rows: list[dict] = []
    for kernel in kernels:
        reason = kernel.unavailable(device, dtype)
        if reason is None:
            try:
                work = copy.deepcopy(model) if kernel.name != "dense" else model
                sparsify(work, blocks_of(work), kernel)
            except ValueError as err:  # a weight without the pattern the kernel needs
                reason = str(err)
        if reason is not None:
            rows.append(_row(kernel.name, "all", None, None, device, status="unavailable", message=reason))
            continue
        work.to(device)
        logits = _prefill(work, prompt).logits.float().cpu()
        reference = logits if reference is None else reference
        diff = float((logits - reference).abs().max())
        mb = tensor_bytes(work) / 2**20
        for row in _timed_rows(work, kernel.name, settings, device, prompt, vocab, mb, PeakMemory(str(device))):
            row["max_abs_logit_diff"] = diff
            rows.append(row)
        if work is not model:
            del work
    dense = {(r["phase"], r["batch"]): r["median_s"] for r in rows if r["kernel"] == "dense" and r["status"] == "ok"}
    for row in rows:
        base = dense.get((row["phase"], row["batch"]))
        if base and row["median_s"]:
            row["speedup"] = base / row["median_s"]
    return rows


def disk(model, blocks, folder: str | Path) -> list[dict]:
    """Bytes on disk of the model's state in the sparse-bitmask layout and densely (two ``disk`` rows);
    the sparse file is read back and must give every tensor equal, else ValueError."""
    folder = Path(folder)
    state = model.state_dict()
    targets = bitmask.sparse_weights(model, blocks)
    sparse_file = bitmask.save(state, folder / "sparse", targets)
    dense_file = bitmask.save_dense(state, folder / "dense")
    back = bitmask.load(folder / "sparse")
    wrong = sorted(name for name in state if name not in back or not torch.equal(back[name], state[name].cpu()))
    if wrong or set(back) != set(state):
        raise ValueError(f"the sparse-bitmask file does not read back equal: {wrong[:3] or sorted(set(back) ^ set(state))[:3]}")
    rows = []
    for name, path in (("dense_file", dense_file), (bitmask.FORMAT, sparse_file)):
        rows.append(_row(name, "disk", None, None, "disk", bytes=path.stat().st_size))
    return rows
