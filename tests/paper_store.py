"""A realistic synthetic results store (SmolLM2-like numbers) for the table-format and plot tests.

Dense 21.61 / 46.70 (WikiText-2 / PTB), four pruners at 0.5-0.9, 2:4 and 3:4 over three seeds,
SparseGPT also on the first half of the blocks, magnitude collapsing above the vocabulary size
(49152 from conf/shapes/smollm2-135m.json: the manifests record no vocab_size), C4 and BoolQ
unavailable in every run, one NaN seed and one OOM run, 30 blocks with both per-block errors.
"""
from __future__ import annotations

import math
from pathlib import Path

from runners.execution import store
COLUMNS = ["run_id", "model", "pruner", "sparsity", "layers", "protocol", "calib_dataset", "calib_nsamples",
           "calib_seqlen", "eval_seqlen", "eval_max_windows", "seed", "dtype", "device", "data_source", "dataset",
           "metric", "value", "status", "message"]
PROTO = {"protocol": "quick", "calib_dataset": "c4", "calib_nsamples": 32, "calib_seqlen": 512, "eval_seqlen": 512,
         "eval_max_windows": 40, "dtype": "float32", "device": "cpu", "data_source": "local:abcd1234"}
SPARSITIES = ["0.5", "0.6", "0.7", "0.8", "0.9", "2:4", "3:4"]
WIKI = {"magnitude": [120.0, 520.0, 4800.0, 3.7e5, 3702220.35, 900.0, 8.6e5],
        "wanda": [32.0, 48.0, 110.0, 686.84, 5400.0, 70.0, 2100.0],
        "sparsegpt": [30.0, 42.0, 85.0, 320.0, 2900.0, 60.0, 900.0],
        "sparsellm": [29.5, 41.0, 80.0, 280.0, 2200.0, 58.0, 800.0]}
FIRST_HALF = {"0.7": 40.0, "0.8": 90.0}  # sparsegpt with layers=first_half
DENSE = (21.61, 46.70)
C4 = ("c4", "ppl", math.nan, "unavailable", "c4 validation: not found offline")
BOOLQ = [("boolq", "acc", math.nan, "unavailable", "boolq: no local file"),
         ("boolq", "acc_norm", math.nan, "unavailable", "boolq: no local file")]
MODEL_CONFIG = {"name": "smollm2-135m", "source": "embedded", "name_or_path": None, "family": None,
                "dtype": "float32"}


def _write(results: Path, pruner: str, sparsity: str, seed, rows: list[tuple], layers: str = "all",
           status: str = "ok", blocks: list[dict] | None = None) -> str:
    rid = f"smollm2-135m__{pruner}__{sparsity}__{layers}__s{seed}".replace(":", "-")
    folder = store.run_dir(results, rid)
    base = {"run_id": rid, "model": "smollm2-135m", "pruner": pruner, "sparsity": sparsity,
            "layers": "none" if pruner == "dense" else layers, **PROTO, "seed": seed}
    store.write_csv(folder / "metrics.csv", [{**base, "dataset": d, "metric": m, "value": v, "status": s,
                                              "message": msg} for d, m, v, s, msg in rows], COLUMNS)
    if blocks is not None:
        store.write_csv(folder / "blocks.csv", blocks, ["block", "metric", "step", "value"])
    uses = pruner not in ("dense", "magnitude")
    store.write_json(folder / "manifest.json", {
        "status": status, "versions": {"torch": "2.13.0"}, "git": {"commit": "abc", "dirty": False},
        "hardware": {"cpu": "test cpu"}, "seed": seed, "config": {"model": MODEL_CONFIG},
        "run_key": {"calib": {"nsamples": 32} if uses else None}})
    return rid


def _blocks(scale: float, seed: int, n: int = 30, update: bool = True) -> list[dict]:
    """Per-block errors: the output error dips where the residual norm jumps (block 10); the update
    error grows smoothly with depth."""
    rows = []
    for b in range(n):
        upd = scale * (0.2 + 0.02 * b) * (1 + 0.03 * seed)
        rows.append({"block": b, "metric": "rel_output_error", "step": None,
                     "value": upd * (0.4 if b >= 10 else 1.0) * 0.3})
        if update:
            rows.append({"block": b, "metric": "rel_update_error", "step": None, "value": upd})
    return rows


def _zeroshot(acc: float) -> list[tuple]:
    return [("arc_easy", "acc", acc + 0.05, "ok", ""), ("arc_easy", "acc_norm", acc + 0.02, "ok", ""), *BOOLQ,
            ("zeroshot_mean", "acc", acc, "ok", "")]


def paper_store(results: Path, update_errors: bool = True) -> Path:
    """Write the store described in the module docstring under ``results``; return it."""
    _write(results, "dense", "0", "", [("wikitext2", "ppl", DENSE[0], "ok", ""), ("ptb", "ppl", DENSE[1], "ok", ""),
                                       C4, *_zeroshot(0.45)])
    for pruner, values in WIKI.items():
        seeds = [""] if pruner == "magnitude" else [0, 1, 2]
        for sp, wiki in zip(SPARSITIES, values):
            for seed in seeds:
                if (pruner, sp) == ("wanda", "3:4") and seed == 2:
                    _write(results, pruner, sp, seed, [("all", "ppl", math.nan, "oom", "CUDA out of memory")],
                           status="oom")
                    continue
                jitter = 1.0 if seed == "" else 1 + 0.03 * (seed - 1)
                ok = (pruner, sp, seed) != ("sparsellm", "0.9", 2)
                ppl = [("wikitext2", "ppl", wiki * jitter if ok else math.nan, "ok" if ok else "nan", ""),
                       ("ptb", "ppl", 2.1 * wiki * jitter if ok else math.nan, "ok" if ok else "nan", ""), C4]
                acc = max(0.25, 0.45 - 0.2 * math.log10(wiki / DENSE[0]) / 3) + 0.005 * (seed or 0)
                _write(results, pruner, sp, seed, ppl + _zeroshot(acc), status="ok" if ok else "nan",
                       blocks=_blocks(math.log10(wiki), seed or 0, update=update_errors))
    for sp, wiki in FIRST_HALF.items():
        for seed in (0, 1, 2):
            _write(results, "sparsegpt", sp, seed, [("wikitext2", "ppl", wiki * (1 + 0.02 * seed), "ok", ""),
                                                     ("ptb", "ppl", 2 * wiki, "ok", ""), C4],
                   layers="first_half", blocks=_blocks(math.log10(wiki), seed, n=15, update=update_errors))
    return results
