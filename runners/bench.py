"""Speed and memory benchmark of the pruning stage (``make bench``), apart from the accuracy path.

For each pruner on SmolLM2-135M with ``nsamples`` x ``seqlen`` calibration tokens (default
32 x 2048), prints the seconds of the whole pruning stage, the unit ``T_pass`` (one pass of the
same calibration set through all decoder blocks: no embedding, no lm_head, no loss), their
ratio, and the peak resident memory during pruning. The sequential protocol needs two passes
through every block (dense with statistics, then pruned), so 2.0 is the floor for calibrated
methods; magnitude needs no data and runs no pass. Per-block diagnostics are off here, since
they are a measurement, not part of pruning.

A name ``pruner+refinement`` (``wanda+dsnot``) times that pruner followed by ``refine=<refinement>``.
Each row's ``target`` (the ceiling of its ratio) is the pruner's cost model's ``bench_target``
(pruners/cost.py; for ``pruner+refinement``, the refinement's, when that is the pruner it was
measured with). By default every pruner whose cost model has a target is timed, in table order
(``order`` in its config), then each refinement after the pruner it was measured with.

Usage: ``python -m runners.bench [nsamples=32] [seqlen=2048] [pruners=magnitude,wanda,...]
[sparsity=0.7] [data.local_dir=PATH] [out=results/bench]``.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from eval.calibration import calibration_tokens
from pruners.base import needs_calibration
from pruners.pattern import SparsityPattern

from runners import registry
from runners.execution import provenance
from core.families import adapter_for
from core.walk import capture, walk
from runners.execution.engine import prune_model
from runners.execution.models import ModelSpec, load_model

DEFAULTS = {"nsamples": "32", "seqlen": "2048", "pruners": "",
            "sparsity": "0.7", "data.local_dir": "", "out": "results/bench", "cache_dir": ""}


def target(pruner, refine=None) -> float | None:
    """The ceiling of a method's seconds / T_pass: its cost model's ``bench_target`` (a refinement's
    applies after the pruner it was measured with); None: none."""
    cost = pruner.cost if refine is None else refine.cost
    if cost is None or (refine is not None and cost.bench_pruner != pruner.name):
        return None
    return cost.bench_target


def default_methods() -> list[str]:
    """What make bench times: every pruner whose cost model has a ``bench_target``, in table order
    (``order`` in its config), then each refinement after the pruner it was measured with."""
    methods = []
    for name in sorted(registry.pruner_configs(), key=registry.order_key):
        try:
            pruner = registry.build_method(name)[0]
        except Exception:  # a plugin that does not build has no measurement either: not timed by default
            continue
        if target(pruner) is not None:
            methods.append(name)
    for name in sorted(registry.group_names("refine")):
        cost = registry.build_refine(name).cost
        if cost is not None and cost.bench_pruner in methods and cost.bench_target is not None:
            methods.append(f"{cost.bench_pruner}+{name}")
    return methods


def parse(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments over DEFAULTS (``pruners`` empty: ``default_methods()``); unknown keys
    are an error naming the accepted ones."""
    args = dict(DEFAULTS)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"error: unknown argument {arg!r}: accepted {', '.join(k + '=' for k in DEFAULTS)}")
        args[key] = value
    args["pruners"] = args["pruners"] or ",".join(default_methods())
    return args


@torch.no_grad()
def time_pass(model, adapter, tokens) -> float:
    """Seconds of one pass of ``tokens`` through all decoder blocks (inputs captured beforehand)."""
    inputs = capture(model, adapter, tokens, "cpu")
    start = time.perf_counter()
    for _ in walk(model, adapter, inputs, "cpu", desc="timed pass"):
        pass
    return time.perf_counter() - start


def build_pruner(name: str):
    """``(pruner, refinement or None)`` as their config groups build them: ``wanda`` or ``wanda+dsnot``."""
    return registry.build_method(name)


def main(argv: list[str]) -> None:
    """Run the benchmark and print one row per pruner."""
    args = parse(argv)
    cache = args["cache_dir"] or str(Path.home() / ".cache" / "llm-prune-bench")
    local = args["data.local_dir"] or None
    spec = ModelSpec(name="smollm2-135m", source="embedded", family="llama", dtype="float32")
    model, tokenizer = load_model(spec, device="cpu", cache_dir=cache, local_dir=local)
    adapter = adapter_for(model)
    tokens = calibration_tokens(tokenizer, "c4", local, int(args["nsamples"]), int(args["seqlen"]), 0, cache).tokens
    pattern = SparsityPattern.parse(args["sparsity"])
    t_pass = time_pass(model, adapter, tokens)
    print(f"T_pass = {t_pass:.1f} s ({args['nsamples']} x {args['seqlen']} tokens, 30 blocks, "
          f"{torch.get_num_threads()} threads)", flush=True)
    rows = []
    for name in args["pruners"].split(","):
        (pruner, refine), work = build_pruner(name), copy.deepcopy(model)
        calibrated = needs_calibration(pruner, refine=refine)
        start = time.perf_counter()
        with provenance.PeakMemory("cpu") as mem:
            prune_model(work, adapter, pruner, pattern, tokens if calibrated else None,
                        list(range(len(adapter.blocks(work)))), "cpu", diagnostics=False, refine=refine)
        seconds = time.perf_counter() - start
        rows.append({"pruner": name, "prune_s": round(seconds, 2), "T_pass_s": round(t_pass, 2),
                     "ratio": round(seconds / t_pass, 3), "target": target(pruner, refine),
                     "peak_rss_mb": round(mem.summary()["peak_rss_mb"])})
        print(f"{name}: {seconds:.1f} s = {seconds / t_pass:.2f} x T_pass", flush=True)
        del work
    table = pd.DataFrame(rows)
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "bench.csv", index=False)
    (out / "bench.json").write_text(json.dumps({"args": args, "rows": rows, "versions": provenance.versions(),
                                                "git": provenance.git_revision(),
                                                "hardware": provenance.hardware("cpu")}, indent=2))
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main(sys.argv[1:])
