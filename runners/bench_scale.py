"""Paper-scale shapes without the weights (``make bench-scale``).

For OPT-13B, OPT-66B, LLaMA-2-7B, LLaMA-2-70B (grouped-query attention, 8 KV heads),
Llama-3.1-8B and Qwen3-30B-A3B (128 fused experts, 8 per token: each expert pruned from its
routed tokens) this
builds a one-block model with random weights and the exact block shapes of ``conf/shapes/<model>.json``
(transformers' own model of the file's ``model_type`` from its fields, ``AutoConfig.for_model``
with one block: any family; a 128-token vocabulary so the embeddings stay small), so the engine
and the pruners run unchanged (``prune_model``, as ``runners/bench.py`` times it, diagnostics off).
Each (model, pruner, token count) is measured in its own subprocess: pruning seconds and peak
resident memory, beside the plan's prediction of that peak (``runners/plan.py``). Pairs the plan
predicts to need more than ``mem_gb`` or more than ``max_s`` seconds (at the idle-machine
throughputs) are skipped and say so.

From two token counts it fits the affine cost ``t(T) = c0 + c1 T`` per block (c0: the
token-independent work, e.g. SparseGPT's d^3 inverses) and extrapolates to the whole model at
128 x 2048 tokens (x number of blocks; the per-token part scaled by the plan's seconds per token at
seqlen 2048 over the measured seqlen). Printed: per block the measured seconds and peak, the
scaling exponent against tokens (log t2/t1 over log T2/T1), the exponent against hidden size
(least squares across the measured models), and the extrapolated whole-model time and memory.

Usage: ``python -m runners.bench_scale [models=opt-13b,opt-66b,llama-2-7b,llama-2-70b,llama-3.1-8b,qwen3-30b-a3b]
[pruners=magnitude,wanda,...] [seqlen=256] [nsamples=1,2] [mem_gb=8] [max_s=75]
[out=results/bench_scale] [reuse=FILE,...]``; ``reuse`` takes earlier ``bench_scale.json`` files (or
their printed JSON lines): the (model, pruner, tokens) measured there are not measured again, so
a table can grow over several shorter invocations; ``measure=false`` only tabulates them. The
default ``pruners`` are ``make bench``'s (``runners.bench.default_methods``); any pruner with a
config (built-in or plugin) and a cost model can be named, with an optional ``+refinement``.
``--help`` lists the settings; they are read through Hydra (``BenchScaleSettings``,
runners/tool_config.py), and a bad one is one line on stderr, exit code 2.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

from runners import plan
from runners.tool_config import (SettingError, Tool, at_least, not_empty, parse as parse_settings, positive, setting,
                                 show, valid_sparsity)

PAPER_TOKENS, PAPER_SEQLEN = 128 * 2048, 2048
MIN_RISE = 0.2  # a fitted per-token slope is used only when it moves the time by 20% or more
TINY_VOCAB = 128


def _models(names: list[str]) -> str | None:
    """A check: every model has a ``conf/shapes`` file."""
    for model in names:
        if not (plan_shapes_dir() / f"{model}.json").is_file():
            known = ", ".join(sorted(p.stem for p in plan_shapes_dir().glob("*.json")))
            raise SettingError(f"models={model!r} has no conf/shapes file: accepted {known}")
    return None if names else "model names separated by commas"


def _methods(names: list[str]) -> None:
    """A check: every name is a pruner (or pruner+refinement) with a cost model (none: make bench's)."""
    for method in names:
        try:
            spec = plan.method(method)
        except ValueError as err:
            raise SettingError(f"pruners={method!r}: {err}") from None
        if spec.not_estimated:
            raise SettingError(f"pruners={method!r}: {spec.not_estimated}: accepted a pruner with a cost model")


def _nsamples(values: list[int]) -> str | None:
    return None if values and all(v >= 1 for v in values) else "whole numbers >= 1 such as 2,4"


def _reuse(files: list[str]) -> None:
    for name in files:
        if not Path(name).is_file():
            raise SettingError(f"reuse={name!r} is not a file: accepted bench_scale.json files or files of its "
                               "printed JSON lines, separated by commas")


@dataclass
class BenchScaleSettings:
    """``python -m runners.bench_scale``'s settings (``--help`` lists them)."""

    models: List[str] = setting(["opt-13b", "opt-66b", "llama-2-7b", "llama-2-70b", "llama-3.1-8b", "qwen3-30b-a3b"],
                                "the shapes measured (conf/shapes/<model>.json)", check=_models)
    pruners: List[str] = setting([], "pruner or pruner+refinement, each with a cost model (empty: make bench's)",
                                 check=_methods)
    seqlen: int = setting(256, "tokens per calibration sequence", accepted="a whole number >= 1", check=at_least(1))
    nsamples: List[int] = setting([1, 2], "the calibration sequences of each measurement (two or more give the fit "
                                  "t = c0 + c1 T)", accepted="whole numbers >= 1 such as 2,4", check=_nsamples)
    mem_gb: float = setting(8.0, "skip a pair the plan predicts above this peak (GB)", accepted="a positive number",
                            check=positive)
    max_s: float = setting(75.0, "skip a pair the plan predicts slower than this (seconds on the idle CPU)",
                           accepted="a positive number", check=positive)
    sparsity: str = setting("0.7", "the target sparsity", accepted="a fraction such as 0.7, 70%, or N:M such as 2:4",
                            check=valid_sparsity)
    out: str = setting("results/bench_scale", "the folder of bench_scale.json and bench_scale.md", accepted="a folder",
                       check=not_empty)
    reuse: List[str] = setting([], "earlier bench_scale.json files (or their printed JSON lines): what they "
                               "measured is not measured again", accepted="files separated by commas", check=_reuse)
    measure: bool = setting(True, "false: only tabulate the reused measurements")


TOOL = Tool("python -m runners.bench_scale", BenchScaleSettings,
            "make bench-scale: prunes one random block of each paper-scale shape with each pruner, each in "
            "its own process; fits t = c0 + c1 T per block and extrapolates to the whole model at 128 x 2048; "
            "writes <out>/bench_scale.json and <out>/bench_scale.md and prints the table.",
            ("python -m runners.bench_scale mem_gb=8 max_s=75",
             "python -m runners.bench_scale models=llama-2-7b pruners=magnitude,wanda,sparsegpt mem_gb=20 max_s=1000",
             "python -m runners.bench_scale measure=false reuse=a/bench_scale.json,b/bench_scale.json"))


def parse(argv: list[str]) -> BenchScaleSettings:
    """The settings of ``argv`` through Hydra (``TOOL``; ``pruners`` empty: make bench's,
    ``runners.bench.default_methods``); a bad key or value is one line on stderr, exit code 2."""
    settings = parse_settings(TOOL, argv)
    if not settings.pruners:
        from runners.bench import default_methods

        settings.pruners = default_methods()
    return settings


def record(settings: BenchScaleSettings) -> dict[str, str]:
    """The settings as bench_scale.json's ``args`` records them (the command line's ``key: value`` text)."""
    return {"models": show(settings.models), "pruners": show(settings.pruners), "seqlen": show(settings.seqlen),
            "nsamples": show(settings.nsamples), "mem_gb": show(settings.mem_gb), "max_s": show(settings.max_s),
            "sparsity": settings.sparsity, "out": settings.out, "reuse": show(settings.reuse),
            "measure": show(settings.measure)}


def plan_shapes_dir() -> Path:
    from runners.cli import CONF

    return CONF / "shapes"


def shape_of(model: str) -> plan.Shape:
    """The plan's Shape of a shipped model (its family from the file's ``model_type``)."""
    raw = json.loads((plan_shapes_dir() / f"{model}.json").read_text())
    return plan.Shape.from_config(raw, raw["model_type"])


def predicted_peak(shape: plan.Shape, pruner: str, tokens: int, seqlen: int) -> float:
    """The plan's CPU peak for pruning one block of ``shape`` (float32, diagnostics off, batch 1)."""
    weights = 4 * (shape.block_params + 2 * TINY_VOCAB * shape.hidden)
    return plan.BASE_BYTES + weights + plan.prune_bytes(shape, pruner, tokens, seqlen, 1, 4, False)


def predicted_seconds(shape: plan.Shape, pruner: str, tokens: int, seqlen: int) -> float:
    """The plan's CPU seconds for pruning one block (throughputs calibrated on SmolLM2)."""
    return plan.prune_seconds(shape, pruner, tokens, seqlen)


# ---- the measurement (in a child process) -------------------------------------------------


TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "sep_token_id")


def one_block_config(model: str):
    """The transformers config of a one-block ``model``: every field of its ``conf/shapes/<model>.json``
    (the language model's ``text_config`` of a multimodal one) through ``AutoConfig.for_model`` of
    its ``model_type``, with one block, a ``TINY_VOCAB`` vocabulary (special token ids beyond it
    dropped: they would index past the embeddings) and per-block lists (``layer_types``) cut to
    the first block's entry. Any family transformers knows; the block's shapes are the model's."""
    from transformers import CONFIG_MAPPING, AutoConfig

    raw = json.loads((plan_shapes_dir() / f"{model}.json").read_text())
    raw = dict(raw.get("text_config", raw))
    model_type, blocks = raw.pop("model_type"), raw.get("num_hidden_layers")
    fields = {k: (v[:1] if isinstance(v, list) and blocks and len(v) == blocks else v) for k, v in raw.items()
              if k not in TOKEN_IDS}
    defaults = CONFIG_MAPPING[model_type]()  # the family's own token ids, kept where they fit the vocabulary
    for name in TOKEN_IDS:
        ids = getattr(defaults, name, None)
        if ids is not None and any(i >= TINY_VOCAB for i in (ids if isinstance(ids, list) else [ids])):
            fields[name] = None
    config = AutoConfig.for_model(model_type, **{**fields, "num_hidden_layers": 1, "vocab_size": TINY_VOCAB})
    config._attn_implementation = "eager"
    return config


def build_one_block(model: str):
    """A one-block causal LM with ``model``'s block shapes and random weights (float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = one_block_config(model)
    torch.manual_seed(0)
    with torch.device("cpu"):
        net = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # initialization draws are slow at this size; small random weights are all pruning needs
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() >= 2:  # matrices, and a mixture of experts' fused 3-D experts
                p.normal_(0.0, 0.02)
    return net.eval()


def measure(model: str, pruner_name: str, nsamples: int, seqlen: int, sparsity: str) -> dict:
    """Prune the one block once; seconds and peak RSS (runs in the child process)."""
    import torch

    from pruners.base import needs_calibration
    from pruners.pattern import SparsityPattern
    from runners.bench import build_pruner
    from runners.execution import provenance
    from core.families import adapter_for
    from runners.execution.engine import prune_model

    rss_start = provenance.rss_bytes() / 2**20
    net = build_one_block(model)
    rss_built = provenance.rss_bytes() / 2**20
    adapter = adapter_for(net)
    pruner, refine = build_pruner(pruner_name)
    calibrated = needs_calibration(pruner, refine=refine)
    tokens = torch.randint(0, TINY_VOCAB, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with provenance.PeakMemory("cpu") as mem:
        report = prune_model(net, adapter, pruner, SparsityPattern.parse(sparsity),
                             tokens if calibrated else None, [0], "cpu", diagnostics=False, refine=refine)
    seconds = time.perf_counter() - start
    zeros, numel = sum(r["zeros"] for r in report.layers), sum(r["numel"] for r in report.layers)  # experts too
    return {"seconds": seconds, "peak_rss_mb": mem.summary()["peak_rss_mb"], "sparsity": zeros / numel,
            "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0],
            "rss_start_mb": rss_start, "rss_built_mb": rss_built}


def run_child(model: str, pruner: str, nsamples: int, seqlen: int, sparsity: str) -> dict:
    """``measure`` in a fresh process, so that each peak is that pruner's alone."""
    code = ("import json,sys; from runners.bench_scale import measure; "
            f"print('RESULT ' + json.dumps(measure({model!r}, {pruner!r}, {nsamples}, {seqlen}, {sparsity!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {done.returncode}: {tail}"}


# ---- the table and the extrapolation ------------------------------------------------------


def token_exponent(t1: float, t2: float, n1: int, n2: int) -> float:
    """Scaling exponent of time against tokens between two measurements."""
    return math.log(t2 / t1) / math.log(n2 / n1)


def affine_fit(tokens: list[int], seconds: list[float]) -> tuple[float, float]:
    """``(c0, c1)`` of the least-squares line ``t = c0 + c1 T`` (c0 clipped at 0)."""
    n = len(tokens)
    mean_t, mean_s = sum(tokens) / n, sum(seconds) / n
    var = sum((t - mean_t) ** 2 for t in tokens)
    c1 = sum((t - mean_t) * (s - mean_s) for t, s in zip(tokens, seconds)) / var if var else mean_s / mean_t
    c1 = max(c1, 0.0)
    return max(mean_s - c1 * mean_t, 0.0), c1


def hidden_exponent(hidden: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log t against log hidden across models (None: fewer than two)."""
    if len(set(hidden)) < 2:
        return None
    xs, ys = [math.log(h) for h in hidden], [math.log(s) for s in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def extrapolate(shape: plan.Shape, pruner: str, tokens: list[int], seconds: list[float], seqlen: int) -> float:
    """Whole-model seconds at 128 x 2048: blocks x (c0 + c1 T_paper r), with r the plan's seconds
    per token at seqlen 2048 over those at the measured seqlen (attention grows with seqlen).

    With one token count, or a fitted slope whose rise over the measured token range is under
    ``MIN_RISE`` of the mean time (timing noise, +-5-10% between repeats, would then be read as
    the per-token cost and multiplied by ~1000 at the paper's token count), the per-token part
    is the plan's (``plan.prune_seconds``) and the measured mean is taken as the fixed part."""
    per_token = lambda s: (plan.prune_seconds(shape, pruner, 2, s) - plan.prune_seconds(shape, pruner, 1, s))  # noqa: E731
    c0, c1 = affine_fit(tokens, seconds) if len(set(tokens)) > 1 else (0.0, 0.0)
    rise = c1 * (max(tokens) - min(tokens))
    if rise < MIN_RISE * sum(seconds) / len(seconds):
        return shape.blocks * (sum(seconds) / len(seconds) + per_token(PAPER_SEQLEN) * PAPER_TOKENS)
    ratio = per_token(PAPER_SEQLEN) / per_token(seqlen) if per_token(seqlen) > 0 else 1.0
    return shape.blocks * (c0 + c1 * PAPER_TOKENS * ratio)


def plan_model_seconds(shape: plan.Shape, pruner: str) -> float:
    """The plan's whole-model pruning seconds at 128 x 2048 on the idle CPU (every block)."""
    return shape.blocks * predicted_seconds(shape, pruner, PAPER_TOKENS, PAPER_SEQLEN)


def whole_model_peak(shape: plan.Shape, pruner: str) -> float:
    """The plan's CPU peak of pruning the whole model at 128 x 2048 (float32, diagnostics off)."""
    return plan.BASE_BYTES + 4 * shape.params + plan.prune_bytes(shape, pruner, PAPER_TOKENS, PAPER_SEQLEN, 1, 4, False)


def table(rows: list[dict], seqlen: int) -> tuple[list[dict], str]:
    """Summary rows per (model, pruner) and the markdown table (measured and extrapolated)."""
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_pair.setdefault((r["model"], r["pruner"]), []).append(r)
    first_tokens = min(r["tokens"] for r in rows)
    out = []
    for (model, pruner), group in by_pair.items():
        shape = shape_of(model)
        ok = sorted((r for r in group if "seconds" in r), key=lambda r: r["tokens"])
        row = {"model": model, "pruner": pruner, "hidden": shape.hidden, "blocks": shape.blocks}
        if not ok:
            row["note"] = next((r.get("skipped") or r.get("error") for r in group), "")
            row["peak_model_gb"] = whole_model_peak(shape, pruner) / plan.GB
            row["plan_model_s"] = plan_model_seconds(shape, pruner)
            out.append(row)
            continue
        first = ok[0]
        row.update({"tokens": first["tokens"], "block_s": first["seconds"], "peak_gb": first["peak_rss_mb"] * 2**20 / plan.GB,
                    "pred_peak_gb": first["predicted_peak_gb"],
                    "peak_err": first["peak_rss_mb"] * 2**20 / plan.GB / first["predicted_peak_gb"] - 1,
                    "pred_block_s": first["predicted_s"]})
        if len(ok) >= 2:
            row["exp_tokens"] = token_exponent(ok[0]["seconds"], ok[-1]["seconds"], ok[0]["tokens"], ok[-1]["tokens"])
        row["model_s"] = extrapolate(shape, pruner, [r["tokens"] for r in ok], [r["seconds"] for r in ok], seqlen)
        row["peak_model_gb"] = whole_model_peak(shape, pruner) / plan.GB
        row["plan_model_s"] = plan_model_seconds(shape, pruner)
        out.append(row)
    for pruner in {r["pruner"] for r in out}:
        pts = [(r["hidden"], r["block_s"]) for r in out if r["pruner"] == pruner and r.get("tokens") == first_tokens]
        exp = hidden_exponent([h for h, _ in pts], [s for _, s in pts])
        for r in out:
            if r["pruner"] == pruner:
                r["exp_hidden"] = exp
    return out, markdown(out)


def _f(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _time(seconds: float | None) -> str:
    return "—" if seconds is None else plan._human_time(seconds)


def markdown(out: list[dict]) -> str:
    """The table: measured per block (left), extrapolated to the whole model (right)."""
    lines = ["| model | pruner | tokens | block s (measured) | block s (plan) | peak GB (measured) | peak GB (plan) "
             "| exp. tokens | exp. hidden | whole model at 128×2048 (extrapolated) | same (plan, idle CPU) "
             "| peak GB whole model (plan) |",
             "|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in out:
        if "block_s" not in r:
            lines.append(f"| {r['model']} | {r['pruner']} | — | {r.get('note', '')} | | | | | | "
                         f"| {_time(r['plan_model_s'])} | {r['peak_model_gb']:.0f} |")
            continue
        lines.append(f"| {r['model']} | {r['pruner']} | {r['tokens']} | {r['block_s']:.1f} | {r['pred_block_s']:.1f} "
                     f"| {r['peak_gb']:.2f} | {r['pred_peak_gb']:.2f} ({r['peak_err']:+.0%}) "
                     f"| {_f(r.get('exp_tokens'), '.2f')} | {_f(r.get('exp_hidden'), '.2f')} "
                     f"| {_time(r.get('model_s'))} | {_time(r['plan_model_s'])} | {r['peak_model_gb']:.0f} |")
    return "\n".join(lines)


def load_reused(files: list[str]) -> dict[tuple, dict]:
    """Earlier measurements by (model, pruner, tokens), from bench_scale.json files or JSON lines."""
    found = {}
    for name in files:
        text = Path(name).read_text()
        try:
            rows = json.loads(text)["measurements"]
        except (ValueError, KeyError, TypeError):
            rows = [json.loads(line) for line in text.splitlines() if line.startswith('{"model"')]
        for r in rows:
            if "seconds" in r:
                found[(r["model"], r["pruner"], r["tokens"])] = r
    return found


def main(argv: list[str]) -> None:
    """Measure every (model, pruner, token count) that fits, then print and save the table."""
    settings = parse(argv)
    args = record(settings)
    reused = load_reused(settings.reuse)
    seqlen, mem, max_s = settings.seqlen, settings.mem_gb * plan.GB, settings.max_s
    rows = []
    for model in settings.models:
        shape = shape_of(model)
        for pruner in settings.pruners:
            for n in settings.nsamples:
                tokens = n * seqlen
                peak, secs = predicted_peak(shape, pruner, tokens, seqlen), predicted_seconds(shape, pruner, tokens, seqlen)
                row = {"model": model, "pruner": pruner, "tokens": tokens, "predicted_peak_gb": peak / plan.GB,
                       "predicted_s": secs}
                if (model, pruner, tokens) in reused:
                    row = {**reused[(model, pruner, tokens)], "predicted_peak_gb": peak / plan.GB, "predicted_s": secs}
                elif not settings.measure:
                    row["skipped"] = "not measured (measure=false)"
                elif peak > mem:
                    row["skipped"] = f"skipped: plan predicts {peak / plan.GB:.1f} GB > mem_gb={args['mem_gb']}"
                elif secs > max_s:
                    row["skipped"] = f"skipped: plan predicts {secs:.0f} s > max_s={args['max_s']}"
                else:
                    row.update(run_child(model, pruner, n, seqlen, settings.sparsity))
                print(json.dumps(row), flush=True)
                rows.append(row)
                if "skipped" in row or not plan.method(pruner).calibrated:
                    break  # a larger token count would not fit either; a method without calibration reads no tokens
    listed = {(r["model"], r["pruner"], r["tokens"]) for r in rows}
    for key, r in reused.items():  # earlier token counts of the same pairs (e.g. nsamples=1,2 before)
        if key not in listed and key[0] in settings.models and key[1] in settings.pruners:
            rows.append(r)
    out, text = table(rows, seqlen)
    folder = Path(settings.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_scale.json").write_text(json.dumps({"args": args, "measurements": rows, "table": out}, indent=2))
    (folder / "bench_scale.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
