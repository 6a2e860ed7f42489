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

The model is a preset of ``conf/model/`` composed as run.py composes it (``model=<name>``, default
smollm2-135m; ``model.<key>=`` sets one of its keys) and loaded as a run loads it
(``runners/execution/models.py``), on the CPU. The numbers of docs/cost-model.md are SmolLM2's.

Usage: ``python -m runners.bench [model=smollm2-135m] [nsamples=32] [seqlen=2048]
[pruners=magnitude,wanda,...] [sparsity=0.7] [data.local_dir=PATH] [out=results/bench] [cache_dir=PATH]``
(``--help`` lists the settings; they are read through Hydra: ``BenchSettings``, runners/tool_config.py).
"""
from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

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
from runners.tool_config import (SettingError, Tool, at_least, group, not_empty, parse as parse_settings, setting,
                                 show, valid_sparsity)

DEFAULT_CACHE = Path.home() / ".cache" / "llm-prune-bench"


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


def check_methods(names: list[str]):
    """A check: every name is a pruner or ``pruner+refinement`` (none: ``default_methods()``)."""
    for name in names:
        try:
            registry.build_method(name)
        except ValueError as err:
            raise SettingError(f"pruners={name!r} is not valid: accepted {str(err).split(': accepted ', 1)[-1]}") \
                from None
    return None


@dataclass
class DataSettings:
    local_dir: Optional[str] = setting(None, "the offline data copies (a folder laid out like ../shared/data; "
                                       "the Makefile passes it); empty or null: the hub", accepted="a folder, "
                                       "empty or null")


@dataclass
class BenchSettings:
    """``python -m runners.bench``'s settings (``--help`` lists them)."""

    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"model": "smollm2-135m"}])
    model: Dict[str, Any] = group("model", "the model, a preset of conf/model/ as run.py's model= "
                                  "(model.<key>= sets one of its keys); loaded on the CPU")
    pruners: List[str] = setting([], "the methods timed, pruner or pruner+refinement, in this order "
                                 "(empty: every pruner whose cost model has a bench target, in table order, "
                                 "then each refinement)", check=check_methods)
    nsamples: int = setting(32, "calibration sequences", accepted="a whole number >= 1", check=at_least(1))
    seqlen: int = setting(2048, "tokens per calibration sequence", accepted="a whole number >= 2", check=at_least(2))
    sparsity: str = setting("0.7", "the target sparsity", accepted="a fraction such as 0.7, 70%, or N:M such as 2:4",
                            check=valid_sparsity)
    data: DataSettings = field(default_factory=DataSettings)
    out: str = setting("results/bench", "the folder of bench.csv and bench.json", accepted="a folder",
                       check=not_empty)
    cache_dir: Optional[str] = setting(None, f"the harness cache (converted SmolLM2, tokenized data); empty or "
                                       f"null: {DEFAULT_CACHE}", accepted="a folder, empty or null")


def _check(settings: BenchSettings) -> None:
    """The model's settings as a run checks them (``ModelSpec``)."""
    try:
        ModelSpec(**settings.model)
    except ValueError as err:  # names the key, the value and what is accepted
        raise SettingError(str(err)) from None
    except TypeError as err:
        raise SettingError(f"model={settings.model.get('name')!r}: {err}: accepted the keys and values of a "
                           "conf/model preset") from None


TOOL = Tool("python -m runners.bench", BenchSettings,
            "make bench: times each pruner's whole pruning stage against T_pass, one pass of the same "
            "calibration set through all decoder blocks of the model, on the CPU; writes <out>/bench.csv "
            "and <out>/bench.json and prints the table.",
            ("python -m runners.bench nsamples=32 seqlen=2048",
             "python -m runners.bench pruners=wanda,sparsegpt nsamples=8 seqlen=512",
             "python -m runners.bench model=smollm2-135m pruners=wanda+dsnot"), _check)


def parse(argv: list[str]) -> BenchSettings:
    """The settings of ``argv`` through Hydra (``TOOL``; ``pruners`` empty: ``default_methods()``);
    a bad key or value is one line on stderr, exit code 2."""
    settings = parse_settings(TOOL, argv)
    settings.pruners = settings.pruners or default_methods()
    return settings


def record(settings: BenchSettings) -> dict[str, str]:
    """The settings as bench.json's ``args`` records them (the command line's ``key: value`` text)."""
    return {"nsamples": show(settings.nsamples), "seqlen": show(settings.seqlen), "pruners": show(settings.pruners),
            "sparsity": settings.sparsity, "data.local_dir": settings.data.local_dir or "", "out": settings.out,
            "cache_dir": settings.cache_dir or "", "model": settings.model["name"]}


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
    settings = parse(argv)
    args = record(settings)
    cache = settings.cache_dir or str(DEFAULT_CACHE)
    local = settings.data.local_dir or None
    spec = ModelSpec(**settings.model)  # as a run builds it from cfg.model (runners/execution/identity.py)
    model, tokenizer = load_model(spec, device="cpu", cache_dir=cache, local_dir=local)
    adapter = adapter_for(model)
    tokens = calibration_tokens(tokenizer, "c4", local, settings.nsamples, settings.seqlen, 0, cache).tokens
    pattern = SparsityPattern.parse(settings.sparsity)
    t_pass = time_pass(model, adapter, tokens)
    print(f"T_pass = {t_pass:.1f} s ({settings.nsamples} x {settings.seqlen} tokens, {len(adapter.blocks(model))} "
          f"blocks, {torch.get_num_threads()} threads)", flush=True)
    rows = []
    for name in settings.pruners:
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
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "bench.csv", index=False)
    (out / "bench.json").write_text(json.dumps({"args": args, "rows": rows, "versions": provenance.versions(),
                                                "git": provenance.git_revision(),
                                                "hardware": provenance.hardware("cpu")}, indent=2))
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main(sys.argv[1:])
