"""The dense baseline is a run of its own: its own configuration, stored once per model and
evaluation protocol, its own status; and the runs stored before that change keep their ids and values."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from runners import callbacks
from runners.cli import CONF
from runners.execution import job, store
from runners.execution.identity import dense_config, run_id
from tests.conftest import ROOT, data_dir
from tests.dense_ids import CONFIGS, FIXTURE, ids

BEFORE = ROOT / "tests" / "fixtures" / "store_before_dense"  # written at ab3167b (tests/dense_ids.py)
BEFORE_DENSE = "tiny-llama__dense__0__ec080b7253"
BEFORE_VALUES = {  # (run id, dataset) -> perplexity, as stored at ab3167b
    (BEFORE_DENSE, "wikitext2"): 48862.805618988736, (BEFORE_DENSE, "ptb"): 49450.137213855814,
    ("tiny-llama__magnitude__0.5__bb31b6c783", "wikitext2"): 48860.58055772035,
    ("tiny-llama__magnitude__0.5__bb31b6c783", "ptb"): 49226.63702116717,
    ("tiny-llama__wanda__0.5__7f49e35e70", "wikitext2"): 49131.58074684908,
    ("tiny-llama__wanda__0.5__7f49e35e70", "ptb"): 49434.38850736643,
}
BEFORE_SWEEP = ["model=tiny-llama", "protocol=smoke", "sparsity=0.5", "eval.datasets=[wikitext2,ptb]", "device=cpu"]
needs_data = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
TINY = ["model=tiny-llama", "protocol=smoke", "eval.datasets=[wikitext2]", "device=cpu"]
DENSE_PRUNER = {"_target_": "pruners.dense.build", "name": "dense", "order": 0, "color": "black"}  # conf/pruner/dense.yaml


def _cfg(*overrides, data=None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"data.local_dir={data or 'null'}", *overrides])


def _assert_dense_config(config: dict) -> None:
    assert config["pruner"] == DENSE_PRUNER
    assert config["sparsity"] == 0
    assert "allocation" not in config and "refine" not in config


def _sha256s(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- the dense configuration, without loading anything ----------------------------------------------


def test_dense_run_has_its_own_configuration_and_the_same_key():
    """From a pruned run with an allocation and a refinement: pruner dense, sparsity 0, neither of
    them; model, evaluation and seed as given; the pruned run's config is left as it was."""
    cfg = _cfg("pruner=wanda", "sparsity=0.7", "allocation=owl", "refine=dsnot", "seed=2", "device=cpu")
    run, _, _ = job.resolve(cfg)
    dense = run.dense()
    config = OmegaConf.to_container(dense.cfg, resolve=True)
    _assert_dense_config(config)
    assert dense.is_dense and dense.pruner_cfg == DENSE_PRUNER and not dense.allocates and not dense.refines
    assert dense.pattern.ratio == 0 and dense.allocation is None and dense.refine is None
    for key in ("model", "eval", "calib", "data", "protocol_name", "seed", "device"):
        assert config[key] == OmegaConf.to_container(cfg, resolve=True)[key], key
    assert cfg.pruner.name == "wanda" and cfg.sparsity == 0.7 and cfg.allocation.name == "owl"  # unchanged
    # the key of a dense baseline depends on nothing of the run that asked for it
    other, _, _ = job.resolve(_cfg("pruner=magnitude", "sparsity=2:4", "seed=2", "device=cpu"))
    assert dense.key(None) == other.dense().key(None) == dense.dense().key(None)
    assert OmegaConf.to_container(dense_config(dense.cfg)) == OmegaConf.to_container(dense.cfg)


def test_a_dense_job_is_stored_with_the_dense_configuration(tmp_path, monkeypatch):
    """``pruner=dense`` given with a sparsity and an allocation still records the dense configuration."""
    seen = {}

    def compute(cfg, run, pruner, key, rid, folder, outcome):
        seen.update(cfg=cfg, run=run)
        return "ok"

    monkeypatch.setattr(job, "_compute", compute)
    cfg = _cfg("pruner=dense", "sparsity=0.7", "allocation=owl", "device=cpu", f"results.dir={tmp_path}")
    assert job.run_job(cfg) == "ok"
    _assert_dense_config(OmegaConf.to_container(seen["cfg"], resolve=True))
    assert seen["run"].cfg is seen["cfg"]


@needs_data
@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_run_ids_are_those_of_before(index):
    """Each configuration's run id and dense run id are what the code of ab3167b computed."""
    before = json.loads(FIXTURE.read_text())["configs"][index]
    now = ids(before["overrides"], str(data_dir()))
    if now["data_source"] != before["data_source"]:
        pytest.skip("the offline data folder holds other files than the one the fixture was computed with")
    assert now == {k: before[k] for k in ("run", "dense", "data_source")}


# ---- a store written before -------------------------------------------------------------------------


def test_store_written_before_opens_unchanged(tmp_path):
    """The store written at ab3167b: every run complete under its id, the same values, the files untouched."""
    results = tmp_path / "results"
    shutil.copytree(BEFORE, results)
    before = _sha256s(results)
    folders = sorted((results / "runs").iterdir())
    assert [f.name for f in folders] == sorted({rid for rid, _ in BEFORE_VALUES})
    for folder in folders:
        assert store.check_run(folder) == ("complete", "")
        manifest = store.read_manifest(folder)
        assert run_id(manifest["run_key"]) == folder.name and manifest["status"] == "ok"
    metrics = store.load_metrics(results)
    got = {(r.run_id, r.dataset): r.value for r in metrics.itertuples()}
    assert got == BEFORE_VALUES  # exactly: the same floats
    assert _sha256s(results) == before


@needs_data
def test_a_sweep_over_the_store_written_before_finds_every_run(tmp_path):
    """The same sweep as the one that wrote the store, run again today, finds every run stored
    (the dense baseline too) and computes nothing."""
    results = tmp_path / "results"
    shutil.copytree(BEFORE, results)
    before = _sha256s(results)
    for pruner in ("magnitude", "wanda", "dense"):
        outcome = {}
        cfg = _cfg(*BEFORE_SWEEP, f"pruner={pruner}", f"results.dir={results}", data=data_dir())
        assert job.run_job(cfg, outcome) == "skipped:ok" and outcome == {}
    assert _sha256s(results) == before


# ---- end to end on the tiny model, in this process --------------------------------------------------


def _job(results, *overrides, outcome=None):
    return job.run_job(_cfg(*TINY, f"results.dir={results}", *overrides, data=data_dir()), outcome)


def _runs(results) -> dict:
    return {p.name: store.read_manifest(p) for p in (results / "runs").iterdir()}


@needs_data
def test_sweep_stores_the_dense_baseline_with_a_dense_configuration(tmp_path):
    """A sweep of magnitude at 0.5 and 2:4: the dense manifest records the dense configuration, and
    the baseline is stored once, by the first job."""
    results = tmp_path / "results"
    first, second = {}, {}
    assert _job(results, "pruner=magnitude", "sparsity=0.5", outcome=first) == "ok"
    assert _job(results, "pruner=magnitude", "sparsity=2:4", outcome=second) == "ok"
    runs = _runs(results)
    assert sorted(k.split("__")[1] for k in runs) == ["dense", "magnitude", "magnitude"]
    (dense_id,) = [k for k in runs if "__dense__" in k]
    dense = runs[dense_id]
    _assert_dense_config(dense["config"])
    assert dense["status"] == "ok" and dense["run_key"]["pruner"] == {"name": "dense"}
    assert first["dense"] == {"run_id": dense_id, "status": "ok"}
    assert second["dense"] == {"run_id": dense_id, "status": "skipped:ok"}
    sparse = runs[next(k for k in runs if "__magnitude__0.5__" in k)]
    assert sparse["config"]["pruner"]["name"] == "magnitude" and sparse["config"]["sparsity"] == 0.5
    metrics = pd.read_csv(results / "runs" / dense_id / "metrics.csv")
    assert list(metrics["pruner"]) == ["dense"] and list(metrics["sparsity"]) == [0]


@needs_data
def test_failed_dense_evaluation_is_the_dense_runs_status_only(tmp_path, monkeypatch):
    """The dense evaluation raises: the dense run is stored as error with the message; the pruned
    run still evaluates, stores its own numbers and ends ok; the next job finds the baseline done."""
    real = job.evaluate

    def evaluate(model, tokenizer, run):
        if run.is_dense:
            raise RuntimeError("dense evaluation broke")
        return real(model, tokenizer, run)

    monkeypatch.setattr(job, "evaluate", evaluate)
    results = tmp_path / "results"
    outcome = {}
    assert _job(results, "pruner=magnitude", "sparsity=0.5", outcome=outcome) == "ok"
    runs = _runs(results)
    (dense_id,) = [k for k in runs if "__dense__" in k]
    (sparse_id,) = [k for k in runs if "__magnitude__" in k]
    assert outcome["dense"] == {"run_id": dense_id, "status": "error"}
    dense, sparse = runs[dense_id], runs[sparse_id]
    assert dense["status"] == "error" and "dense evaluation broke" in dense["error"]
    _assert_dense_config(dense["config"])
    rows = pd.read_csv(results / "runs" / dense_id / "metrics.csv")
    assert list(rows["status"]) == ["error"] and "dense evaluation broke" in rows.loc[0, "message"]
    assert sparse["status"] == "ok" and "error" not in sparse
    rows = pd.read_csv(results / "runs" / sparse_id / "metrics.csv")
    assert list(rows["status"]) == ["ok"] and rows["value"].notna().all() and (rows["value"] > 0).all()
    again = {}
    assert _job(results, "pruner=magnitude", "sparsity=2:4", outcome=again) == "ok"
    assert again["dense"] == {"run_id": dense_id, "status": "skipped:error"}  # done, not recomputed


# ---- the sweep's exit code counts the dense baseline ------------------------------------------------


def _job_folder(sweep: Path, num: int, status: str, dense: dict | None) -> Path:
    folder = sweep / str(num)
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"status": status, **({"dense": dense} if dense else {})}))
    return folder


def test_dense_statuses_and_exit_code(tmp_path):
    """One status per dense baseline: the job that computed it wins over those that found it stored,
    a failure over a success; a failed baseline makes the sweep exit 1 though every pruned run is ok."""
    folders = [_job_folder(tmp_path, 0, "ok", {"run_id": "m__dense__0__a", "status": "error"}),
               _job_folder(tmp_path, 1, "ok", {"run_id": "m__dense__0__a", "status": "skipped:error"}),
               _job_folder(tmp_path, 2, "ok", {"run_id": "n__dense__0__b", "status": "skipped:ok"}),
               _job_folder(tmp_path, 3, "skipped:ok", None)]
    dense = callbacks.dense_statuses(folders)
    assert dense == {"m__dense__0__a": "error", "n__dense__0__b": "skipped:ok"}
    assert callbacks.job_statuses(folders) == ["ok", "ok", "ok", "skipped:ok"]
    assert callbacks.exit_code(callbacks.job_statuses(folders) + list(dense.values())) == 1
    ok = [_job_folder(tmp_path / "b", 0, "ok", {"run_id": "m__dense__0__a", "status": "ok"}),
          _job_folder(tmp_path / "b", 1, "ok", {"run_id": "m__dense__0__a", "status": "skipped:ok"})]
    assert callbacks.dense_statuses(ok) == {"m__dense__0__a": "ok"}
    retried = [_job_folder(tmp_path / "c", 0, "ok", {"run_id": "x", "status": "unavailable"}),
               _job_folder(tmp_path / "c", 1, "ok", {"run_id": "x", "status": "ok"})]
    assert callbacks.dense_statuses(retried) == {"x": "unavailable"}


BROKEN_DENSE = """
import runpy, sys
from runners.execution import job
real = job.evaluate
def evaluate(model, tokenizer, run):
    if run.is_dense:
        raise RuntimeError("dense evaluation broke")
    return real(model, tokenizer, run)
job.evaluate = evaluate
sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path("run.py", run_name="__main__")
"""


@pytest.mark.subprocess
@needs_data
def test_sweep_with_a_failing_dense_baseline_exits_1_with_its_pruned_runs_ok(tmp_path):
    """Through run.py: both pruned runs ok, the dense baseline error in its own manifest and in the
    jobs' status.json, one line naming it, exit code 1."""
    results = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", BROKEN_DENSE, "-m", *TINY, "pruner=magnitude", "sparsity=0.5,2:4",
                           f"results.dir={results}", f"data.local_dir={data_dir()}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    runs = _runs(results)
    (dense_id,) = [k for k in runs if "__dense__" in k]
    assert runs[dense_id]["status"] == "error"
    assert sorted(m["status"] for k, m in runs.items() if k != dense_id) == ["ok", "ok"]
    (sweep,) = (results / "hydra").glob("multirun-*")
    jobs = [json.loads((sweep / str(i) / "status.json").read_text()) for i in range(2)]
    assert [j["status"] for j in jobs] == ["ok", "ok"]
    assert [j["dense"] for j in jobs] == [{"run_id": dense_id, "status": "error"},
                                         {"run_id": dense_id, "status": "skipped:error"}]
    assert f"the dense baseline {dense_id} failed (error): exit code 1" in proc.stdout
    assert "runs failed" not in proc.stdout  # no pruned run failed
