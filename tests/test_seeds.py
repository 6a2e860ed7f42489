"""Seeds in the report (mean ± std, paired differences, error bars), calibration pools, fallbacks, determinism."""
from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from scipy import stats

from runners.reporting import plots
from runners.execution import store
from runners.reporting.compare import compare, load_published
from runners.reporting.report import build_report, load_store, summarize
from tests.conftest import ROOT, data_dir, tiny_model

COLUMNS = ["run_id", "model", "pruner", "sparsity", "layers", "protocol", "calib_dataset", "calib_nsamples",
           "calib_seqlen", "eval_seqlen", "eval_max_windows", "seed", "dtype", "device", "data_source", "dataset",
           "metric", "value", "status", "message"]
PROTO = {"protocol": "smoke", "calib_dataset": "c4", "calib_nsamples": 4, "calib_seqlen": 64, "eval_seqlen": 64,
         "eval_max_windows": 4, "dtype": "float32", "device": "cpu", "data_source": "local:abcd1234"}
WARNING = "calibration pool: 4 windows of 64 tokens came from only 3 distinct documents"
# ppl per seed 0, 1, 2 (None: the run of that seed is absent; "nan": it gave a NaN)
WIKI = {"wanda": [34.0, 35.0, 36.0], "sparsegpt": [36.0, 37.0, 41.0], "magnitude": [50.0, None, None],
        "sparsellm": [30.0, 31.0, "nan"], "sparsellm+keep_best": [40.0, 41.0, 42.0],
        "sparsellm_released": [45.0, 46.0, 47.0]}
DENSE = [30.0, 31.0, 29.0]


def _write(results: Path, pruner: str, seed: int, rows: list[tuple], sparsity: str = "0.5", fallbacks=None,
           calibration=True, status: str = "ok") -> str:
    """One run folder with the new columns and manifest keys (calibration pool, fallbacks)."""
    rid = f"tiny__{pruner}__{sparsity}__s{seed}".replace(":", "-")
    folder = store.run_dir(results, rid)
    base = {"run_id": rid, "model": "tiny-llama", "pruner": pruner, "sparsity": sparsity,
            "layers": "none" if pruner == "dense" else "all", **PROTO, "seed": seed}
    store.write_csv(folder / "metrics.csv", [{**base, "dataset": d, "metric": m, "value": v, "status": s,
                                              "message": msg} for d, m, v, s, msg in rows], COLUMNS)
    uses = pruner not in ("dense", "magnitude")
    manifest = {"status": status, "versions": {"torch": "2.13.0"}, "git": {"commit": "abc", "dirty": False},
                "hardware": {"cpu": "test cpu"}, "seed": seed,
                "run_key": {"calib": {"nsamples": 4} if uses else None}}
    if uses and calibration:
        manifest["calibration"] = {
            "dataset": "c4", "source": "local", "documents": 1000, "eligible_documents": 28,
            "files": [{"path": "/data/c4/c4-train.00000-of-01024.json.gz", "sha256": "0123456789abcdef" * 4}],
            "distinct_documents_drawn": 3 + seed % 2, "nsamples": 4, "seqlen": 64, "seed": seed,
            "warning": WARNING if seed % 2 == 0 else None}
    if pruner != "dense":
        kinds = fallbacks or {}
        manifest["fallbacks"] = {"total": sum(kinds.values()), "by_kind": kinds}
        blocks = [{"block": b, "metric": "rel_output_error", "step": None, "value": 0.1 * (b + 1) + 0.01 * seed}
                  for b in range(3)]
        blocks += [{"block": 1, "metric": f"fallback:{k}", "step": None, "value": v} for k, v in kinds.items()]
        store.write_csv(folder / "blocks.csv", blocks, ["block", "metric", "step", "value"])
    store.write_json(folder / "manifest.json", manifest)
    return rid


def _ppl(value) -> tuple:
    return ("wikitext2", "ppl", math.nan, "nan", "") if value == "nan" else ("wikitext2", "ppl", value, "ok", "")


def _seed_store(results: Path) -> Path:
    for seed, value in enumerate(DENSE):  # a tiny random model: one dense run per seed
        _write(results, "dense", seed, [_ppl(value), ("zeroshot_mean", "acc", 0.6 + 0.01 * seed, "ok", "")])
    for pruner, values in WIKI.items():
        for seed, value in enumerate(values):
            if value is not None:
                zs = ("zeroshot_mean", "acc", 0.5 + 0.01 * seed + 0.1 * (pruner == "wanda"), "ok", "")
                _write(results, pruner, seed, [_ppl(value), zs],
                       fallbacks={"cholesky_damping_raised": 2, "ridge_raised": 1}
                       if (pruner, seed) == ("sparsegpt", 1) else None)
    return results


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    results = _seed_store(tmp_path_factory.mktemp("seeds") / "results")
    build_report(results)
    return results


def _rows(md_path: Path) -> dict:
    lines = [line for line in md_path.read_text().splitlines() if line.startswith("|")]
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}


def test_mean_std_cells_in_markdown_csv_latex(built):
    """Cells read `mean ± std (n=3)` over seeds (plain for one seed, failures counted); best by mean.
    Mean and std both have 4 significant digits (runners/reporting/formatting.py)."""
    tables = built / "report" / "tables"
    rows = _rows(tables / "ppl__tiny-llama__smoke__s64__w4.md")
    assert list(rows) == ["dense", "magnitude", "wanda", "sparsegpt", "sparsellm", "sparsellm+keep_best",
                          "sparsellm_released"]
    assert rows["dense"] == ["30.00 ± 1.000 (n=3)"]
    assert rows["wanda"] == ["**35.00 ± 1.000 (n=3)**"]       # 30.50 of sparsellm lost a seed: not ranked
    assert rows["sparsegpt"] == ["38.00 ± 2.646 (n=3)"] and f"{math.sqrt(7):.4f}" == "2.6458"
    assert rows["magnitude"] == ["50.00"]
    assert rows["sparsellm"] == ["30.50 ± 0.7071 (n=2; 1 nan)"]
    csv = pd.read_csv(tables / "ppl__tiny-llama__smoke__s64__w4.csv", dtype=str).set_index("pruner")
    assert csv.loc["wanda", "0.5 wikitext2"] == "35.00 ± 1.000 (n=3)*"
    tex = (tables / "ppl__tiny-llama__smoke__s64__w4.tex").read_text()
    assert "\\textbf{35.00 $\\pm$ 1.000 (n=3)}" in tex and "±" not in tex
    agg = pd.read_csv(tables / "aggregate.csv")
    wanda = agg[(agg["pruner"] == "wanda") & (agg["dataset"] == "wikitext2")].iloc[0]
    assert (wanda["mean"], wanda["std"], wanda["n"], wanda["seeds"]) == (35.0, 1.0, 3, "0,1,2")
    assert "seed" not in agg.columns and {"dtype", "device", "data_source"} <= set(agg.columns)
    assert "35.00 ± 1.000 (n=3)" in summarize(built)


def test_paired_table_matches_independent_computation(built):
    """The paired CSV holds n, mean, std and the 95% t-interval of A - B over common seeds."""
    pairs = pd.read_csv(built / "report" / "tables" / "paired_tiny-llama__smoke__s64__w4.csv")
    got = pairs[(pairs["A"] == "wanda") & (pairs["B"] == "sparsegpt") & (pairs["dataset"] == "wikitext2")].iloc[0]
    diffs = np.array(WIKI["wanda"]) - np.array(WIKI["sparsegpt"])
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
    assert got["n"] == 3 and got["mean_diff"] == pytest.approx(diffs.mean())
    assert got["std_diff"] == pytest.approx(diffs.std(ddof=1))
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(diffs.mean() - half), pytest.approx(diffs.mean() + half))
    pair = pairs[(pairs["A"] == "sparsellm") & (pairs["B"] == "sparsellm+keep_best")
                 & (pairs["dataset"] == "wikitext2")].iloc[0]
    assert pair["n"] == 2 and pair["seeds"] == "0,1"                # the NaN seed drops out of the pair
    acc = pairs[(pairs["A"] == "wanda") & (pairs["B"] == "sparsegpt") & (pairs["dataset"] == "zeroshot_mean")]
    assert acc["mean_diff"].iloc[0] == pytest.approx(10.0)            # accuracies in %
    md = (built / "report" / "tables" / "paired_tiny-llama__smoke__s64__w4.md").read_text()
    line = next(x for x in md.splitlines() if "| magnitude" in x and "| wanda" in x and "wikitext2" in x)
    assert [c.strip() for c in line.split("|")[7:-1]] == ["1", "16.00", "n/a", "n/a", "n/a"]
    report = (built / "report" / "report.md").read_text()
    assert "A difference whose interval includes 0 is not a result" in report
    assert (diffs.mean() - half, diffs.mean() + half) == (pytest.approx(-7.3027, abs=1e-4), pytest.approx(1.3027, abs=1e-4))
    assert "[-7.303, 1.303]" in report  # 4 significant digits, as every number of the report


def _containers(fig) -> list:
    return [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_plots_have_error_bars_only_with_several_seeds(built, tmp_path):
    """Perplexity, zero-shot and block plots draw ± std error bars where n > 1 (none for one seed)."""
    (title, slug, frame, blocks), = list(load_store(built).groups())
    fig = plots.ppl_vs_sparsity(frame)
    bars = {c.get_label(): c for c in _containers(fig)}
    assert {"wanda", "sparsegpt", "sparsellm+keep_best", "sparsellm_released"} <= set(bars)
    segments = bars["wanda"].lines[2][0].get_segments()
    assert np.allclose([s[:, 1] for s in segments], [[34.0, 36.0]])  # mean 35 ± std 1
    assert "magnitude" not in bars                                      # one seed: a plain line
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels.index("sparsellm") < labels.index("sparsellm+keep_best") < labels.index("sparsellm_released")
    assert _containers(plots.zeroshot_vs_sparsity(frame)) and _containers(plots.block_errors(blocks, "0.5"))
    single = tmp_path / "one"
    _write(single, "wanda", 0, [_ppl(35.0)])
    _write(single, "sparsegpt", 0, [_ppl(36.0)])
    (_, _, one, _), = list(load_store(single).groups())
    assert not _containers(plots.ppl_vs_sparsity(one))


def test_report_states_calibration_pools_fallbacks_and_dedups(built):
    """report.md names the pool (files, documents, eligible, drawn per seed), each warning once, fallbacks."""
    text = (built / "report" / "report.md").read_text()
    assert ("`c4` from local files `c4-train.00000-of-01024.json.gz` (sha256 `0123456789ab`); 1000 documents, "
            "28 eligible at seqlen 64 (longer than 64 tokens); 4 x 64 tokens drawn per run; "
            "distinct documents drawn: seed 0: 3, seed 1: 4, seed 2: 3.") in text
    assert text.count(WARNING) == 1 and f"Calibration warning (10 runs): {WARNING}" in text
    assert "- Numerical fallbacks: 3 in 1 of 16 runs (cholesky_damping_raised 2, ridge_raised 1" in text
    section = text[text.index("## Numerical fallbacks"):]
    assert "sparsegpt 0.5 layers=all seed 1 | `tiny__sparsegpt__0.5__s1` | cholesky_damping_raised 2, " \
           "ridge_raised 1 | cholesky_damping_raised: 1; ridge_raised: 1 |" in section
    assert section.count("| tiny-llama") == 1
    assert "dtype `float32`; device `cpu`; data source `local:abcd1234`" in text
    assert "- Dense baseline: 3 runs (seed `0`, `1`, `2`); its cells are their mean ± std." in text


def test_fallbacks_none_and_old_store_without_new_keys(tmp_path):
    """A group without fallbacks says none; a store from before seeds/pools/fallbacks still reports."""
    clean = tmp_path / "clean"
    _write(clean, "wanda", 0, [_ppl(35.0)])
    text = build_report(clean).read_text()
    assert "- Numerical fallbacks: none." in text and "## Numerical fallbacks" not in text
    from tests.test_report import _synthetic_store  # the old layout: no dtype/device/data_source, no keys

    old = _synthetic_store(tmp_path / "old")
    text = build_report(old).read_text()
    assert "Calibration pool not recorded" in text and "- Numerical fallbacks: not recorded." in text
    assert "| **35.00**" in text and "dtype `unrecorded`" in text


def test_mixed_old_and_new_runs_split_and_duplicate_notes(tmp_path):
    """A varying device splits rows (label shows it); the same message of two runs is listed once with 2 runs;
    ptb, unavailable in both runs, has no column and its message is given once (under the table only)."""
    r = tmp_path / "r"
    lost = ("c4", "ppl", math.nan, "nan", "c4: non-finite loss")
    _write(r, "wanda", 0, [_ppl(35.0), ("ptb", "ppl", math.nan, "unavailable", "ptb: not found"), lost])
    rid = _write(r, "wanda", 1, [_ppl(36.0), ("ptb", "ppl", math.nan, "unavailable", "ptb: not found"), lost])
    metrics = pd.read_csv(store.run_dir(r, rid) / "metrics.csv", keep_default_na=False).assign(device="cuda")
    store.write_csv(store.run_dir(r, rid) / "metrics.csv", metrics.to_dict("records"), COLUMNS)
    text = build_report(r).read_text()
    assert "| wanda device=cpu  | **35.00**       | nan      |" in text
    assert "| wanda device=cuda | 36.00           | nan      |" in text and "0.5 ptb" not in text
    assert text.count("c4: non-finite loss") == 1 and "- nan (2 runs: " in text  # one note for both runs
    assert text.count("ptb: not found") == 1
    assert "- `ptb` is left out of the table and plots: unavailable in every run (ptb: not found)." in text


def test_compare_label_rules(built, tmp_path):
    """Published SparseLLM numbers match `sparsellm` and `sparsellm_released`, never `sparsellm+keep_best`."""
    ref = tmp_path / "ref.csv"
    ref.write_text("model,pruner,sparsity,layers,dataset,metric,value,eval_seqlen,source,table,protocol\n"
                   "tiny-llama,sparsellm,0.5,all,wikitext2,ppl,30.0,,paper,T1,p\n")
    pairs = compare(load_store(built).metrics, load_published(ref))
    assert sorted(pairs["pruner"]) == ["sparsellm", "sparsellm_released"]
    row = pairs.set_index("pruner").loc["sparsellm_released"]
    assert row["ours"] == "46.00 ± 1.000 (n=3)" and row["ratio"] == "1.533" and f"{46 / 30:.4f}" == "1.5333"


# ---- determinism: same seed, same settings -> identical numbers and masks, bit for bit, on the CPU ----

needs_data = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")


def _sweep(results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "-m", "model=tiny-llama", "pruner=sparsegpt,wanda",
                           "sparsity=0.5", "protocol=smoke", "eval.datasets=[wikitext2]", "device=cpu",
                           f"data.local_dir={data_dir()}", f"results.dir={results}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.subprocess
@needs_data
def test_same_seed_same_settings_identical_files(tmp_path):
    """Two sweeps with the same seed into two stores: identical metrics, zero counts and block errors."""
    a, b = tmp_path / "a", tmp_path / "b"
    for results in (a, b):
        proc = _sweep(results)
        assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p.name for p in (a / "runs").iterdir())
    assert runs == sorted(p.name for p in (b / "runs").iterdir()) and len(runs) == 3
    for name in runs:
        ma, mb = (pd.read_csv(r / "runs" / name / "metrics.csv") for r in (a, b))
        assert (ma["status"] == "ok").all() and ma["value"].tolist() == mb["value"].tolist(), name
        if "__dense__" in name:
            continue
        la, lb = (pd.read_csv(r / "runs" / name / "layers.csv") for r in (a, b))
        assert la["zeros"].tolist() == lb["zeros"].tolist(), name
        ba, bb = (pd.read_csv(r / "runs" / name / "blocks.csv") for r in (a, b))
        keep = ba["metric"] != "seconds"
        assert ba[keep]["value"].tolist() == bb[bb["metric"] != "seconds"]["value"].tolist(), name


@pytest.mark.parametrize("name", ["wanda", "sparsegpt"])
def test_same_calibration_identical_pruned_weights(name):
    """prune_model twice on two copies of one tiny model with the same tokens: torch.equal weights."""
    from omegaconf import OmegaConf

    from pruners.pattern import SparsityPattern
    from runners.registry import build
    from core.families import adapter_for
    from runners.execution.engine import prune_model

    cfg = OmegaConf.load(ROOT / "conf" / "pruner" / f"{name}.yaml")
    tokens = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    first = tiny_model("tiny-llama")
    second = copy.deepcopy(first)
    for model in (first, second):
        prune_model(model, adapter_for(model), build(cfg), SparsityPattern.parse(0.5), tokens, [0, 1, 2], "cpu")
    for (key, wa), wb in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(wa, wb), key
    assert any((w == 0).any() for k, w in first.state_dict().items() if k.endswith("proj.weight"))


def test_different_seed_different_calibration_windows():
    """The calibration sampler: same seed, same windows; another seed, other windows."""
    try:  # the sampler moved from eval.datasets to eval.calibration
        from eval.calibration import sample_windows
    except ImportError:
        from eval.datasets import sample_windows

    class Tokenizer:  # whitespace "tokenizer": ids are word lengths, enough to tell windows apart
        def __call__(self, text):
            return type("Ids", (), {"input_ids": [len(w) + 7 * i for i, w in enumerate(text.split())]})

    documents = [" ".join(f"w{d}x{i}" * (1 + (i + d) % 3) for i in range(200)) for d in range(20)]
    zero = sample_windows(documents, Tokenizer(), 8, 32, seed=0)
    assert torch.equal(zero, sample_windows(documents, Tokenizer(), 8, 32, seed=0))
    assert not torch.equal(zero, sample_windows(documents, Tokenizer(), 8, 32, seed=1))
