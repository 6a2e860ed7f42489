"""Every bad setting is rejected before anything loads: one line naming the key and the value."""
import subprocess
import sys
import time

import pytest
import torch

import runners.execution.job  # noqa: F401  (imported before the fixture patches load_model, so job keeps the real one)
import runners.execution.models
from runners.validate import check_command_line
from tests.conftest import ROOT, data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")

# (command line, text the one-line message must contain: the key and the value as given)
BAD = [
    (["seed=abc"], "seed='abc'"), (["seed=1.5"], "seed=1.5"), (["seed=-1"], "seed=-1"), (["seed=true"], "seed=True"),
    (["device=tpu"], "device='tpu'"), (["model.dtype=float8"], "model.dtype='float8'"),
    (["sparsity=1.2"], "sparsity='1.2'"), (["sparsity=5:4"], "sparsity='5:4'"), (["sparsity=0:4"], "sparsity='0:4'"),
    (["sparsity=abc"], "sparsity='abc'"), (["sparsity=-0.1"], "sparsity='-0.1'"), (["sparsity=nan"], "sparsity='nan'"),
    (["model=tiny-llama", "sparsity=2:3"], "sparsity=2:3"), (["model=tiny-opt", "sparsity=3:5"], "sparsity=3:5"),
    *([(["device=cuda"], "device='cuda'")] if not torch.cuda.is_available() else []),  # bad only without CUDA
    (["calib.nsamples=0"], "calib.nsamples=0"), (["calib.nsamples=-1"], "calib.nsamples=-1"),
    (["calib.nsamples=2.5"], "calib.nsamples=2.5"), (["calib.seqlen=0"], "calib.seqlen=0"),
    (["calib.seqlen=999999"], "calib.seqlen=999999"), (["model=tiny-llama", "calib.seqlen=4096"], "calib.seqlen=4096"),
    (["calib.dataset=books"], "calib.dataset='books'"), (["calib.dataset=ptb"], "calib.dataset='ptb'"),
    (["calib.dataset=wikitext2"], "calib.dataset='wikitext2'"),
    (["eval.seqlen=0"], "eval.seqlen=0"), (["eval.seqlen=100000"], "eval.seqlen=100000"),
    (["eval.max_windows=0"], "eval.max_windows=0"), (["eval.max_windows=-3"], "eval.max_windows=-3"),
    (["eval.batch_size=0"], "eval.batch_size=0"), (["eval.datasets=[]"], "eval.datasets=[]"),
    (["eval.datasets=[wikitext2,wikitext2]"], "eval.datasets=['wikitext2', 'wikitext2']"),
    (["eval.datasets=nope"], "eval.datasets='nope'"), (["eval.datasets=[wikitext2,wt103]"], "wt103"),
    (["eval.zeroshot.limit=0"], "eval.zeroshot.limit=0"), (["eval.zeroshot.limit=1.5"], "eval.zeroshot.limit=1.5"),
    (["eval.zeroshot.tasks=[boolq,boolq]"], "eval.zeroshot.tasks=['boolq', 'boolq']"),
    (["prune.layers=[99]"], "prune.layers=[99]"), (["prune.layers=half"], "prune.layers='half'"),
    (["prune.layers=5-2"], "prune.layers='5-2'"), (["model=tiny-opt", "prune.layers=5-6"], "prune.layers='5-6'"),
    (["prune.batch_size=0"], "prune.batch_size=0"), (["prune.diagnostics=maybe"], "prune.diagnostics='maybe'"),
    (["pruner=sparsegpt", "pruner.sequential=maybe"], "pruner.sequential='maybe'"),
    (["pruner=sparsegpt", "pruner.blocksize=1.5"], "pruner.blocksize=1.5"),
    (["pruner=sparsegpt", "pruner.blocksize=0"], "blocksize"), (["pruner=sparsegpt", "pruner.percdamp=nan"], "pruner.percdamp=nan"),
    (["pruner=sparsegpt", "pruner.percdamp=-1"], "percdamp"), (["pruner=sparsellm", "pruner.iterations=0"], "iterations"),
    (["pruner=sparsellm", "pruner.refit=svd"], "refit='svd'"), (["pruner=sparsellm", "pruner.storage_dtype=int8"], "int8"),
    (["pruner=wanda", "pruner.foo=1"], "pruner.foo='1'"), (["+pruner.foo=1"], "pruner.foo=1"),
    (["fooo=1"], "fooo='1'"), (["calib.foo=2"], "calib.foo='2'"), (["pruner=foo"], "pruner='foo'"),
    (["model=gpt5"], "model='gpt5'"), (["protocol=slow"], "protocol='slow'"),
    (["data.local_dir=/nonexistent/folder"], "data.local_dir='/nonexistent/folder'"),
    (["results.dir=/proc/forbidden"], "results.dir='/proc/forbidden'"),
    (["-m", "pruner=wanda,fooo"], "pruner='fooo'"), (["-m", "sparsity=0.5,1.5"], "sparsity='1.5'"),
    (["-m", "pruner=wanda,sparsegpt", "seed=0,1.5"], "seed=1.5"),
    (["-m", "model=tiny-llama,tiny-opt", "prune.layers=[2,3]"], "prune.layers=[2, 3]"),
]


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Validation must never load a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded during validation")
    monkeypatch.setattr(runners.execution.models, "load_model", refuse)


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_value_rejected_in_one_line(args, needle):
    """The command line is rejected with one line naming the key and value and what is accepted."""
    msg = check_command_line([*args, f"data.local_dir={data_dir()}"] if "data.local_dir" not in " ".join(args)
                             else args)
    assert msg is not None, args
    assert "\n" not in msg and needle in msg and ("accepted" in msg or "use " in msg), msg


def test_at_least_forty_distinct_bad_values():
    """The table above covers at least 40 distinct bad values over every group of keys."""
    assert len({tuple(a) for a, _ in BAD}) >= 40
    keys = {a.split("=")[0].lstrip("+").split(".")[0] for args, _ in BAD for a in args if "=" in a}
    assert {"seed", "device", "sparsity", "calib", "eval", "prune", "pruner", "model", "data", "results"} <= keys


@pytest.mark.parametrize("args", [
    ["-m", "pruner=magnitude,wanda", "sparsity=0.5,0.7,2:4,3:4", "protocol=quick"],
    ["-m", "experiment=smollm2_cpu"], ["model=tiny-opt", "pruner=sparsellm", "sparsity=3:4", "prune.layers=[0,2]"],
    ["pruner=sparsegpt", "pruner.percdamp=0", "calib.nsamples=1", "eval.max_windows=null", "seed=3"]])
def test_good_command_lines_pass(args):
    """Valid sweeps and presets pass every check."""
    assert check_command_line([*args, f"data.local_dir={data_dir()}"]) is None


@pytest.mark.parametrize("args", [["calib.nsamples=0"], ["eval.datasets=[]"], ["-m", "pruner=wanda", "seed=1.5"],
                                  ["pruner.sequential=maybe", "pruner=sparsegpt"], ["calib.seqlen=999999"]])
def test_run_py_exits_2_with_one_line_fast(args, tmp_path):
    """Through run.py itself: exit code 2, exactly one stderr line, no traceback, within seconds."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "run.py", *args, f"data.local_dir={data_dir()}",
                             f"results.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert time.perf_counter() - start < 60 and not (tmp_path / "runs").exists()
