"""Speed and memory benchmark of the pruning stage (``make bench``), apart from the accuracy path.

For each pruner on SmolLM2-135M with ``nsamples`` x ``seqlen`` calibration tokens (default
32 x 2048), prints the seconds of the whole pruning stage, the unit ``T_pass`` (one pass of the
same calibration set through all decoder blocks: no embedding, no lm_head, no loss), their
ratio, and the peak resident memory during pruning. The sequential protocol needs two passes
through every block (dense with statistics, then pruned), so 2.0 is the floor for calibrated
methods; magnitude needs no data and runs no pass. Per-block diagnostics are off here, since
they are a measurement, not part of pruning.

A name ``pruner+refinement`` (``wanda+dsnot``) times that pruner followed by ``refine=<refinement>``.

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
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from eval.calibration import calibration_tokens
from pruners.pattern import SparsityPattern

from runners.execution import provenance
from core.families import adapter_for
from runners.cli import CONF
from core.walk import capture, walk
from runners.execution.engine import prune_model
from runners.execution.models import ModelSpec, load_model

DEFAULTS = {"nsamples": "32", "seqlen": "2048",
            "pruners": "magnitude,wanda,sparsegpt,sparsellm,ria,alps,wanda+dsnot",
            "sparsity": "0.7", "data.local_dir": "", "out": "results/bench", "cache_dir": ""}
TARGETS = {"magnitude": 0.1, "wanda": 2.2, "sparsegpt": 2.5, "sparsellm": 10.0, "ria": 2.5, "alps": 30.0,
           "wanda+dsnot": 4.0}


def parse(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments over DEFAULTS; unknown keys are an error naming the accepted ones."""
    args = dict(DEFAULTS)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"error: unknown argument {arg!r}: accepted {', '.join(k + '=' for k in DEFAULTS)}")
        args[key] = value
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
    pruner, _, refine = name.partition("+")
    overrides = [f"pruner={pruner}"] + ([f"refine={refine}"] if refine else [])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return instantiate(cfg.pruner), instantiate(cfg.refine) if refine else None


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
        calibrated = pruner.needs_calibration or (refine is not None and refine.needs_calibration)
        start = time.perf_counter()
        with provenance.PeakMemory("cpu") as mem:
            prune_model(work, adapter, pruner, pattern, tokens if calibrated else None,
                        list(range(len(adapter.blocks(work)))), "cpu", diagnostics=False, refine=refine)
        seconds = time.perf_counter() - start
        rows.append({"pruner": name, "prune_s": round(seconds, 2), "T_pass_s": round(t_pass, 2),
                     "ratio": round(seconds / t_pass, 3), "target": TARGETS.get(name),
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
