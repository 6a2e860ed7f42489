"""What pruning buys at inference (``make bench-speed``): tokens per second, memory and bytes on disk
of a model dense and pruned, under each matrix kernel (eval/speed/).

For each sparsity the model is pruned by magnitude (what a kernel can gain depends only on where
the zeros are and how many; magnitude needs no data and takes seconds; every pruner keeps the
same count per row), then timed under every kernel: prefill of ``prefill_tokens`` and decode of
``decode_tokens`` new tokens at each batch of ``decode_batches`` (eval/speed/timing.py). The dense
kernel on the same pruned weights is each row's reference (``speedup``); the unpruned model is
timed once under the dense kernel (sparsity ``dense``). Each sparsity's state is also written in
the sparse-bitmask layout and densely, and read back (``bytes`` of each file).

A kernel that cannot run here (no CUDA, a package not installed, a weight that is not 2:4) is one
``unavailable`` row with its reason. Writes ``<out>/speed.csv`` and ``<out>/speed.json`` (settings,
versions, git revision, hardware) and prints the table.

Usage: ``python -m runners.bench_speed [model=smollm2-135m] [sparsities=0.5,0.7,0.9,2:4]
[kernels=dense,csr,bsr,mkl,semi_structured] [device=cpu] [repeats=3] [out=results/bench-speed]``
(``--help`` lists the settings; they are read through Hydra, runners/tool_config.py).
"""
from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd
import torch

from core.families import adapter_for
from eval.speed.kernels import KERNELS, kernel
from eval.speed.timing import COLUMNS, SpeedSettings, disk, measure
from pruners.pattern import SparsityPattern
from runners import registry
from runners.bench import DEFAULT_CACHE, DataSettings
from runners.execution import provenance
from runners.execution.engine import prune_model
from runners.execution.models import ModelSpec, load_model
from runners.tool_config import (SettingError, Tool, at_least, group, not_empty, parse as parse_settings, setting,
                                 show, valid_sparsity)


def check_sparsities(values: list[str]):
    """A check: each value a sparsity (0.7, 70%, 2:4)."""
    for value in values:
        if valid_sparsity(value) is not None:
            raise SettingError(f"sparsities={value!r} is not valid: accepted {valid_sparsity(value)}")
    return None if values else "one sparsity or more"


def check_kernels(values: list[str]):
    """A check: each value a kernel of eval/speed/kernels.py."""
    for value in values:
        if value not in KERNELS:
            raise SettingError(f"kernels={value!r} is not valid: accepted {', '.join(KERNELS)}")
    return None if values else "one kernel or more"


@dataclass
class SpeedBenchSettings:
    """``python -m runners.bench_speed``'s settings (``--help`` lists them)."""

    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"model": "smollm2-135m"}])
    model: Dict[str, Any] = group("model", "the model, a preset of conf/model/ as run.py's model= "
                                  "(model.<key>= sets one of its keys)")
    sparsities: List[str] = setting(["0.5", "0.7", "0.9", "2:4"], "the sparsities, each pruned by magnitude",
                                    check=check_sparsities)
    kernels: List[str] = setting(list(KERNELS), "the matrix kernels timed (eval/speed/kernels.py); dense first is "
                                 "the reference", check=check_kernels)
    device: str = setting("cpu", "where the model runs", accepted="cpu or cuda[:N]",
                          check=lambda v: None if v == "cpu" or str(v).startswith("cuda") else "cpu or cuda[:N]")
    prefill_tokens: int = setting(512, "prompt tokens of the prefill", check=at_least(1))
    decode_tokens: int = setting(128, "new tokens of each decode", check=at_least(1))
    decode_batches: List[int] = setting([1, 8], "batch sizes of the decode",
                                        check=lambda v: None if v and all(b >= 1 for b in v) else "whole numbers >= 1")
    warmup: int = setting(1, "untimed runs before the timed ones", check=at_least(0))
    repeats: int = setting(3, "timed runs (median, fastest and slowest recorded)", check=at_least(1))
    data: DataSettings = field(default_factory=DataSettings)
    out: str = setting("results/bench-speed", "the folder of speed.csv and speed.json", accepted="a folder",
                       check=not_empty)
    cache_dir: Optional[str] = setting(None, f"the harness cache; empty or null: {DEFAULT_CACHE}",
                                       accepted="a folder, empty or null")


def _check(settings: SpeedBenchSettings) -> None:
    try:
        ModelSpec(**settings.model)
    except (ValueError, TypeError) as err:
        raise SettingError(str(err).splitlines()[0]) from None
    if settings.kernels[0] != "dense":
        raise SettingError(f"kernels={show(settings.kernels)} is not valid: accepted a list starting with dense "
                           "(the reference of every speed-up)")


TOOL = Tool("python -m runners.bench_speed", SpeedBenchSettings,
            "make bench-speed: tokens per second (prefill, decode), memory and bytes on disk of a model dense and "
            "pruned by magnitude at each sparsity, under each matrix kernel; writes <out>/speed.csv and "
            "<out>/speed.json and prints the table.",
            ("python -m runners.bench_speed",
             "python -m runners.bench_speed model=gemma3-270m sparsities=0.5,2:4 kernels=dense,csr",
             "python -m runners.bench_speed device=cuda model.dtype=float16 sparsities=2:4 "
             "kernels=dense,semi_structured"), _check)


def parse(argv: list[str]) -> SpeedBenchSettings:
    """The settings of ``argv`` through Hydra (``TOOL``); a bad key or value is one line, exit code 2."""
    return parse_settings(TOOL, argv)


def table(rows: list[dict]) -> pd.DataFrame:
    """The printed table: one line per (sparsity, kernel, phase, batch), rounded."""
    frame = pd.DataFrame(rows)
    keep = ["model", "sparsity"] + [c for c in COLUMNS if c in frame]
    frame = frame[keep]
    for column, digits in (("median_s", 4), ("min_s", 4), ("max_s", 4), ("tokens_per_s", 1), ("speedup", 2),
                           ("model_mb", 1), ("peak_mb", 0), ("max_abs_logit_diff", 8)):
        frame[column] = pd.to_numeric(frame[column]).round(digits)
    return frame


def main(argv: list[str]) -> None:
    """Time every sparsity under every kernel; print and write the table."""
    settings = parse(argv)
    cache = settings.cache_dir or str(DEFAULT_CACHE)
    spec = ModelSpec(**settings.model)
    model, _ = load_model(spec, device=settings.device, cache_dir=cache, local_dir=settings.data.local_dir or None)
    adapter = adapter_for(model)
    speed = SpeedSettings(settings.prefill_tokens, settings.decode_tokens, tuple(settings.decode_batches),
                          warmup=settings.warmup, repeats=settings.repeats)
    kernels = [kernel(name) for name in settings.kernels]
    blocks_of = lambda m: adapter_for(m).blocks(m)  # noqa: E731  (the copy each kernel gets)
    magnitude = registry.build_method("magnitude")[0]
    rows, start = [], time.perf_counter()

    def add(label: str, found: list[dict]) -> None:
        for row in found:
            rows.append({"model": spec.name, "sparsity": label, **row})
            if row["status"] == "ok" and row["phase"] != "disk":
                print(f"{label} {row['kernel']} {row['phase']} batch {row['batch']}: {row['tokens_per_s']:.1f} tok/s "
                      f"(x{row['speedup']:.2f})", flush=True)
            elif row["status"] != "ok":
                print(f"{label} {row['kernel']}: {row['message']}", flush=True)

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)

    def write() -> pd.DataFrame:  # after every sparsity: a crash or a kill keeps what was measured
        frame = table(rows)
        tmp = out / f".speed.csv.tmp{os.getpid()}"
        frame.to_csv(tmp, index=False)
        tmp.replace(out / "speed.csv")
        return frame

    add("dense", measure(model, blocks_of, kernels[:1], speed, settings.device))
    with tempfile.TemporaryDirectory() as scratch:
        add("dense", disk(model, adapter.blocks(model), Path(scratch) / "dense"))
        for label in settings.sparsities:
            model.to("cpu")
            work = copy.deepcopy(model)
            prune_model(work, adapter, magnitude, SparsityPattern.parse(label), None,
                        list(range(len(adapter.blocks(work)))), "cpu", diagnostics=False)
            add(label, disk(work, adapter.blocks(work), Path(scratch) / label.replace(":", "_")))
            add(label, measure(work, blocks_of, kernels, speed, settings.device))
            del work
            write()
    frame = write()
    record = {"command": "python -m runners.bench_speed " + " ".join(argv), "settings": {
        "model": spec.name, "sparsities": show(settings.sparsities), "kernels": show(settings.kernels),
        "device": settings.device, "prefill_tokens": settings.prefill_tokens, "decode_tokens": settings.decode_tokens,
        "decode_batches": show(settings.decode_batches), "warmup": settings.warmup, "repeats": settings.repeats},
        "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - start, 1),
        "versions": provenance.versions(), "git": provenance.git_revision(),
        "hardware": provenance.hardware(settings.device)}
    (out / "speed.json").write_text(json.dumps(record, indent=2))
    print(summary(frame).to_markdown(index=False))


def file_mb(frame: pd.DataFrame, label: str) -> float | None:
    """MiB on disk of sparsity ``label``: the dense file of the unpruned model, the sparse-bitmask
    file of a pruned one."""
    kind = "dense_file" if label == "dense" else "sparse-bitmask"
    found = frame[(frame["phase"] == "disk") & (frame["sparsity"] == label) & (frame["kernel"] == kind)]["bytes"]
    return round(float(found.iloc[0]) / 2**20, 1) if len(found) else None


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per (sparsity, kernel): tokens per second and speed-up of each phase, the model's
    bytes in memory, the peak, and the file's size (the README's table)."""
    timed = frame[(frame["status"] == "ok") & (frame["phase"] != "disk")]
    lines = []
    for (label, name), part in timed.groupby(["sparsity", "kernel"], sort=False):
        line = {"sparsity": label, "kernel": name}
        for _, row in part.iterrows():
            phase = "prefill" if row["phase"] == "prefill" else f"decode b{int(row['batch'])}"
            line[f"{phase} tok/s"] = row["tokens_per_s"]
            line[f"{phase} x"] = row["speedup"]
        line["model MB"], line["peak MB"] = part["model_mb"].iloc[0], part["peak_mb"].max()
        lines.append(line)
    out = pd.DataFrame(lines)
    out["file MB"] = [file_mb(frame, label) for label in out["sparsity"]]
    skipped = frame[frame["status"] != "ok"]
    for _, row in skipped.drop_duplicates("kernel").iterrows():
        print(f"not timed: {row['message']}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
