"""Report from a synthetic results store: paper tables, LaTeX/CSV, plots, published comparison, presets, notebook."""
from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from runners.execution import store
from runners.reporting.compare import REFERENCE, compare, load_published
from runners.execution.job import BLOCK_COLUMNS, METRIC_COLUMNS
from runners.reporting.report import build_report, load_store, main, summarize
from tests.conftest import ROOT

NAN = math.nan
SMOKE = {"protocol": "smoke", "calib_dataset": "c4", "calib_nsamples": 4, "calib_seqlen": 64, "eval_seqlen": 64,
         "eval_max_windows": 4, "seed": 0}
PAPER = {**SMOKE, "protocol": "paper", "calib_nsamples": 128, "calib_seqlen": 2048, "eval_seqlen": 2048,
         "eval_max_windows": None}
UNAVAILABLE = ("c4", "ppl", NAN, "unavailable", "c4 validation: not found offline")


def _write_run(results: Path, model: str, pruner: str, sparsity: str, rows: list[tuple], proto: dict = SMOKE,
               layers: str = "all", status: str = "ok", errors: list[float] | None = None, settings: str = "") -> str:
    """One run folder written the way runners/execution/job.py writes it (metrics, blocks, manifest last)."""
    rid = f"{model}__{pruner}__{sparsity}__{layers}__{proto['protocol']}__s{proto['seed']}{settings}".replace(":", "-")
    folder = store.run_dir(results, rid)
    base = {"run_id": rid, "model": model, "pruner": pruner, "sparsity": sparsity,
            "layers": "none" if pruner == "dense" else layers, **proto, "settings": settings}
    metrics = [{**base, "dataset": d, "metric": m, "value": v, "status": s, "message": msg}
               for d, m, v, s, msg in rows]
    store.write_csv(folder / "metrics.csv", metrics, METRIC_COLUMNS)
    if errors is not None:
        blocks = [r for i, e in enumerate(errors) for r in (
            {"block": i, "metric": "seconds", "step": None, "value": 0.1},
            {"block": i, "metric": "rel_output_error", "step": None, "value": e})]
        store.write_csv(folder / "blocks.csv", blocks, BLOCK_COLUMNS)
    store.write_json(folder / "manifest.json", {
        "status": status, "versions": {"python": "3.11.0", "torch": "2.13.0", "transformers": "5.0.0"},
        "git": {"commit": "0123456789abcdef", "dirty": False}, "hardware": {"device": "cpu", "cpu": "test cpu"},
        "seed": 0, "config": {}, "seconds": {}, "memory": {},
        "run_key": {"calib": None if pruner in ("dense", "magnitude") else {"nsamples": proto["calib_nsamples"]}}})
    return rid


def _ok(ds: str, value: float, metric: str = "ppl") -> tuple:
    return (ds, metric, value, "ok", "")


def _zeroshot(arc: float, boolq: float, mean: float) -> list[tuple]:
    """Zero-shot rows as eval/zeroshot.py writes them (boolq unavailable when ``boolq`` is NaN)."""
    boolq_row = ("boolq", "acc", boolq, "ok", "") if boolq == boolq else \
        ("boolq", "acc", NAN, "unavailable", "boolq: no local file")
    return [_ok("arc_easy", arc, "acc"), _ok("arc_easy", arc - 0.05, "acc_norm"), boolq_row,
            _ok("zeroshot_mean", mean, "acc")]


def _synthetic_store(r: Path) -> Path:
    """A store with two model/protocol groups, zero-shot rows, every failure status and one killed run."""
    _write_run(r, "tiny-opt", "dense", "0", [_ok("wikitext2", 30.0), _ok("ptb", 40.0), UNAVAILABLE,
                                             *_zeroshot(0.60, 0.62, 0.61)])
    _write_run(r, "tiny-opt", "magnitude", "0.5", [_ok("wikitext2", 50.0), _ok("ptb", 60.0), UNAVAILABLE,
                                                   *_zeroshot(0.50, 0.52, 0.51)], errors=[0.1, 0.2, 0.4])
    _write_run(r, "tiny-opt", "wanda", "0.5", [_ok("wikitext2", 35.0), _ok("ptb", 45.0), UNAVAILABLE,
                                               *_zeroshot(0.55, NAN, 0.55)], errors=[0.05, 0.1, 0.2])
    _write_run(r, "tiny-opt", "wanda", "2:4", [_ok("wikitext2", 70.0), ("ptb", "ppl", NAN, "nan", ""), UNAVAILABLE],
               status="nan", errors=[0.2, 0.5, 0.9])
    _write_run(r, "tiny-opt", "magnitude", "2:4", [("all", "ppl", NAN, "oom", "CUDA out of memory")], status="oom")
    _write_run(r, "tiny-opt", "sparsegpt", "0.5", [("all", "ppl", NAN, "error", "RuntimeError: boom")],
               status="error")
    killed = _write_run(r, "tiny-opt", "sparsellm", "0.5", [_ok("wikitext2", 1.0)])
    (store.run_dir(r, killed) / "manifest.json").unlink()  # no manifest: incomplete, never reported
    _write_run(r, "opt-1.3b", "dense", "0", [_ok("wikitext2", 14.70)], proto=PAPER)
    _write_run(r, "opt-1.3b", "sparsegpt", "0.5", [_ok("wikitext2", 17.50), _ok("ptb", 26.0)], proto=PAPER)
    _write_run(r, "opt-1.3b", "sparsegpt", "0.5", [_ok("wikitext2", 16.00)], proto=PAPER, layers="first_half")
    _write_run(r, "opt-1.3b", "magnitude", "0.5", [_ok("wikitext2", 900.0)], proto=PAPER)
    return r


@pytest.fixture
def results(tmp_path) -> Path:
    """A fresh synthetic store (for tests that write their own report)."""
    return _synthetic_store(tmp_path / "results")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A synthetic store with its report built once (read-only for the tests using it)."""
    r = _synthetic_store(tmp_path_factory.mktemp("built") / "results")
    build_report(r)
    return r


def _tables(results: Path) -> Path:
    return results / "report" / "tables"


def test_summary_markdown_unchanged(results):
    """summarize still prints one Markdown table per model/protocol with '<sparsity> <dataset>' columns."""
    out = summarize(results)
    assert "| wanda" in out and "2:4 wikitext2" in out and "0.5 ptb" in out
    assert (results / "summary.csv").exists() and "- oom (1 run): CUDA out of memory" in out


def test_ppl_table_cells_status_best_and_dense_on_top(built):
    """The perplexity table has dense first, numbers, status strings and the best pruned value in bold."""
    md = (_tables(built) / "ppl__tiny-opt__smoke__s64__w4.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert lines[2].startswith("| dense")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    header = [c.strip() for c in lines[0].split("|")[2:-1]]
    col = {name: i for i, name in enumerate(header)}
    # c4 is unavailable in every run: no column, one note under the table saying why
    assert header == ["0.5 wikitext2", "0.5 ptb", "2:4 wikitext2", "2:4 ptb"]
    assert md.count("c4 validation: not found offline") == 1
    assert "- `c4` is left out of the table and plots: unavailable in every run (c4 validation: not found offline)." in md
    assert rows["dense"][col["0.5 wikitext2"]] == "30.00" and rows["dense"][col["2:4 ptb"]] == "40.00"
    assert rows["wanda"][col["0.5 wikitext2"]] == "**35.00**"      # best pruned value, dense not ranked
    assert rows["magnitude"][col["0.5 wikitext2"]] == "50.00"
    assert rows["wanda"][col["2:4 ptb"]] == "nan" and rows["wanda"][col["2:4 wikitext2"]] == "**70.00**"
    assert rows["magnitude"][col["2:4 wikitext2"]] == "oom" and rows["magnitude"][col["2:4 ptb"]] == "oom"
    assert rows["sparsegpt"][col["0.5 ptb"]] == "error"
    assert list(rows) == ["dense", "magnitude", "wanda", "sparsegpt"]


def test_csv_and_latex_files_parse(built):
    """The CSV tables parse with the best marked by '*'; the LaTeX tables are balanced tabulars."""
    csv = pd.read_csv(_tables(built) / "ppl__tiny-opt__smoke__s64__w4.csv", dtype=str).set_index("pruner")
    assert csv.loc["wanda", "0.5 wikitext2"] == "35.00*" and csv.loc["magnitude", "2:4 ptb"] == "oom"
    assert float(csv.loc["dense", "0.5 wikitext2"]) == 30.0
    for tex in _tables(built).glob("*.tex"):
        text = tex.read_text()
        assert text.count("\\begin{tabular}") == text.count("\\end{tabular}") == 1, tex
        body = text[text.index("\\midrule"):text.index("\\bottomrule")]
        widths = {row.count("&") - row.count("\\&") for row in body.splitlines() if row.endswith("\\\\")}
        assert len(widths) == 1, tex
    tex = (_tables(built) / "ppl__tiny-opt__smoke__s64__w4.tex").read_text()
    assert "\\textbf{35.00}" in tex and "\\multicolumn{2}{c}{2:4}" in tex and "c4" not in tex.split("\\bottomrule")[0]


def test_zeroshot_table(built):
    """The zero-shot table lists tasks and their mean in %, highest accuracy marked, unavailable kept."""
    csv = pd.read_csv(_tables(built) / "zeroshot_acc__tiny-opt__smoke__s64__w4.csv", dtype=str).set_index("pruner")
    assert list(csv.columns) == ["arc_easy", "boolq", "mean"] and csv.index[0] == "dense"
    assert csv.loc["dense", "mean"] == "61.00" and csv.loc["wanda 0.5", "arc_easy"] == "55.00*"
    assert csv.loc["wanda 0.5", "boolq"] == "unavailable" and csv.loc["magnitude 0.5", "boolq"] == "52.00*"
    assert csv.loc["sparsegpt 0.5", "mean"] == "error" and csv.loc["magnitude 2:4", "arc_easy"] == "oom"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plots_and_report_md(built):
    """Plots are non-empty PNGs; report.md embeds tables and plots and states the protocol."""
    path = built / "report" / "report.md"
    plots = {p.name: p for p in (built / "report" / "plots").glob("*.png")}
    assert {"ppl__tiny-opt__smoke__s64__w4.png", "zeroshot__tiny-opt__smoke__s64__w4.png",
            "blocks__tiny-opt__smoke__s64__w4__0.5.png", "ppl__opt-1.3b__paper__s2048__wall.png"} <= set(plots)
    for p in plots.values():
        width, height = _png_size(p)
        assert width > 300 and height > 200 and p.stat().st_size > 5000
    text = path.read_text()
    assert "![perplexity vs sparsity](plots/ppl__tiny-opt__smoke__s64__w4.png)" in text
    assert "c4 4 x 64 tokens (`sparsegpt`, `wanda`); none (`magnitude`)" in text and "`first_half`" in text and "torch 2.13.0" in text
    assert "| **35.00**" in text and "[tex](tables/ppl__tiny-opt__smoke__s64__w4.tex)" in text
    assert "RuntimeError: boom" in text and "Comparison" not in text


def test_empty_store(tmp_path):
    """An empty store gives a one-line summary and no report."""
    assert summarize(tmp_path).startswith("no finished runs") and build_report(tmp_path) is None


def test_block_sparsity_option(results):
    """report.block_sparsity picks the sparsity of the per-block error plot."""
    main([f"results.dir={results}", "report.block_sparsity=2:4"])
    assert (results / "report" / "plots" / "blocks__tiny-opt__smoke__s64__w4__2-4.png").exists()
    with pytest.raises(SystemExit):
        main([f"results.dir={results}", "report.bogus=1"])


def test_comparison_pairs_matching_keys_only(results, tmp_path):
    """Only rows matching model/pruner/sparsity/layers/dataset (and seqlen when given) are paired."""
    ref = tmp_path / "ref.csv"
    ref.write_text("model,pruner,sparsity,layers,dataset,metric,value,eval_seqlen,source,table,protocol\n"
                   "opt-1.3b,sparsegpt,0.5,all,wikitext2,ppl,17.46,2048,paper A,T1,p\n"
                   "opt-1.3b,sparsegpt,0.5,all,ptb,ppl,25.47,4096,paper A,T1,other seqlen\n"
                   "opt-1.3b,sparsegpt,0.8,all,wikitext2,ppl,30.0,,paper A,T1,no such run\n"
                   "opt-1.3b,dense,0,first_half,wikitext2,ppl,14.62,,paper B,,dense ignores layers\n"
                   "tiny-opt,magnitude,2:4,all,wikitext2,ppl,10.0,,paper C,,failed run\n")
    pairs = compare(load_store(results).metrics, load_published(ref))
    got = {(r.pruner, r.sparsity, r.layers, r.dataset): (r.ours, r.ratio) for r in pairs.itertuples()}
    assert got == {("sparsegpt", "0.5", "all", "wikitext2"): ("17.50", f"{17.5 / 17.46:.3f}"),
                   ("dense", "0", "first_half", "wikitext2"): ("14.70", f"{14.7 / 14.62:.3f}"),
                   ("magnitude", "2:4", "all", "wikitext2"): ("oom", "oom")}
    main([f"results.dir={results}", "report.compare=true", f"report.reference={ref}"])
    table = pd.read_csv(_tables(results) / "comparison.csv", dtype=str)
    assert len(table) == 3 and "## Comparison with published numbers" in (results / "report" / "report.md").read_text()


def test_configurations_that_differ_in_a_setting_stay_apart(tmp_path):
    """Two epsilons of one allocation share the label wanda+alphapruning: their seeds must not be
    averaged together; the changed one reads ``wanda+alphapruning allocation.epsilon=0.1``, and the
    paired table compares each with uniform on its own."""
    from runners.reporting.aggregate import aggregate, paired_differences
    from runners.reporting.labels import normalize, row_labels

    r = tmp_path / "results"
    for seed, (uniform, default, changed) in enumerate([(100.0, 80.0, 60.0), (110.0, 90.0, 66.0)]):
        proto = {**SMOKE, "seed": seed}
        _write_run(r, "tiny-opt", "wanda", "0.7", [_ok("wikitext2", uniform)], proto)
        _write_run(r, "tiny-opt", "wanda+alphapruning", "0.7", [_ok("wikitext2", default)], proto)
        _write_run(r, "tiny-opt", "wanda+alphapruning", "0.7", [_ok("wikitext2", changed)], proto,
                   settings="allocation.epsilon=0.1")
    frame = normalize(store.load_metrics(r))
    labels = set(row_labels(frame))
    assert labels == {"wanda", "wanda+alphapruning", "wanda+alphapruning allocation.epsilon=0.1"}
    means = aggregate(frame).set_index(["pruner", "settings"])["mean"]
    assert means[("wanda+alphapruning", "")] == 85.0 and means[("wanda+alphapruning", "allocation.epsilon=0.1")] == 63.0
    pairs = paired_differences(frame).set_index(["A", "B"])
    assert pairs.loc[("wanda", "wanda+alphapruning"), "mean_diff"] == 20.0
    assert pairs.loc[("wanda", "wanda+alphapruning allocation.epsilon=0.1"), "mean_diff"] == 42.0
    assert (pairs["n"] == 2).all()


def test_committed_reference_has_published_numbers():
    """results/reference/published.csv holds the reference points of docs/methods.md with their sources."""
    ref = load_published(REFERENCE)
    key = ref.set_index(["model", "pruner", "sparsity", "layers", "dataset"])["value"]
    assert key[("opt-30b", "sparsellm", "3:4", "first_half", "wikitext2")] == 51.28
    assert key[("llama-2-7b", "wanda", "2:4", "all", "wikitext2")] == 11.02
    assert key[("opt-1.3b", "dense", "0", "all", "wikitext2")] == 14.62
    assert key[("llama-7b", "wanda+owl", "0.7", "all", "wikitext2")] == 24.55  # OWL's README
    assert key[("llama-2-7b", "sparsegpt+dlp", "0.7", "all", "wikitext2")] == 18.6
    assert (ref["source"] != "").all() and (ref["protocol"] != "").all() and not key.index.duplicated().any()
    ignored = subprocess.run(["git", "check-ignore", "-q", str(REFERENCE)], cwd=ROOT, capture_output=True)
    assert ignored.returncode != 0, "results/reference/published.csv must not be git-ignored"


@pytest.mark.parametrize("name,runs", [("smollm2_cpu", 28), ("sparsellm_opt", 64), ("sparsellm_llama2", 32)])
def test_experiment_presets_define_sweeps(name, runs):
    """Each experiment preset composes and its hydra.sweeper.params expand to the intended grid."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runners.cli import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    assert len(batch) == runs and set(params["pruner"].split(",")) == {"magnitude", "wanda", "sparsegpt", "sparsellm"}
    assert cfg.protocol_name == ("quick" if name == "smollm2_cpu" else "paper")
    assert cfg.prune.layers == ("all" if name == "smollm2_cpu" else "first_half")
    assert list(cfg.eval.datasets) == ["wikitext2", "ptb", "c4"]


@pytest.mark.subprocess
def test_notebook_executes(built, tmp_path, monkeypatch):
    """notebooks/report.ipynb runs clean on the venv's python against the synthetic store."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbconvert.preprocessors")
    kernels = tmp_path / "jupyter" / "kernels" / "llm-prune-bench-test"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({  # a kernel that runs this interpreter, found via JUPYTER_PATH
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "llm-prune-bench test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter") + os.pathsep + os.environ.get("JUPYTER_PATH", ""))
    monkeypatch.setenv("RESULTS_DIR", str(built))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(ROOT / "notebooks" / "report.ipynb", as_version=4)
    executor = nbclient.ExecutePreprocessor(timeout=120, kernel_name="llm-prune-bench-test")
    executor.preprocess(nb, {"metadata": {"path": str(ROOT / "notebooks")}})
    text = io.StringIO()
    for c in nb.cells:
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", out
            text.write(out.get("text", ""))
    assert f"python: {sys.executable}" in text.getvalue() and "runs in" in text.getvalue()
    assert "figures: ppl__" in text.getvalue()
    assert sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", [])) >= 3


def test_allocation_comparison_preset_is_the_issue_grid():
    """experiment=allocations_smollm2: uniform / OWL / AlphaPruning / DLP x Wanda / SparseGPT x 0.6,
    0.7, 0.8 x seeds 0, 1, 2 under the quick protocol, 72 runs, and every one passes validation."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runners.cli import CONF
    from runners.validate import check_command_line
    from tests.conftest import data_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=allocations_smollm2"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    assert len(batch) == 72 and cfg.protocol_name == "quick"
    assert {tuple(sorted(p.split("=")[0] for p in run)) for run in batch} == {
        ("allocation", "model", "pruner", "seed", "sparsity")}
    assert {p for run in batch for p in run if p.startswith("allocation=")} == {
        "allocation=uniform", "allocation=owl", "allocation=alphapruning", "allocation=dlp"}
    if data_dir() is not None:
        assert check_command_line(["-m", "experiment=allocations_smollm2", f"data.local_dir={data_dir()}"]) is None
