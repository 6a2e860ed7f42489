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


# Every setting that names a thing, with a wrong name and a path of the wrong kind. Placeholders:
# {file} an existing file, {empty} an empty folder, {noweights} a folder with config.json and no
# weights, {badjson} a folder whose config.json is not JSON; for GOOD_NAMES {model} a model folder
# (config.json and a weights file) and {partial} a data folder holding only C4's train shard.
NAMES = [
    (["eval.zeroshot.tasks=[boolqq]"], "eval.zeroshot.tasks has unknown 'boolqq'"),
    (["eval.zeroshot.tasks=[arc_easy,hellaswg]"], "'hellaswg'"),
    (["eval.zeroshot.tasks=[wikitext2]"], "'wikitext2', a perplexity dataset"),
    (["eval.zeroshot.tasks=[mmlu]"], "'mmlu', an lm-eval group"),
    (["eval.zeroshot.tasks=[wikitext]"], "'wikitext', an lm-eval task scored by perplexity"),
    (["eval.datasets=[wikitext3]"], "eval.datasets has unknown ['wikitext3']"),
    (["eval.datasets=[boolq]"], "eval.datasets has unknown ['boolq']"),  # a task, not a dataset
    (["calib.dataset=books"], "calib.dataset='books'"),
    (["calib.dataset=ptb"], "calib.dataset='ptb'"),  # a dataset, but not held by the data folder
    (["data.local_dir=/nonexistent/folder"], "data.local_dir='/nonexistent/folder' does not exist"),
    (["data.local_dir={file}"], "data.local_dir='{file}' is a file, not a folder"),
    (["data.local_dir={empty}"], "data.local_dir='{empty}' holds none of the data files"),
    (["model=hub", "model.name_or_path=/nonexistent/model"], "model.name_or_path='/nonexistent/model' does not exist"),
    (["model=hub", "model.name_or_path=./no/such/model"], "model.name_or_path='./no/such/model' does not exist"),
    (["model=hub", "model.name_or_path=opt--125m"], "model.name_or_path='opt--125m' is neither"),
    (["model=hub", "model.name_or_path={file}"], "model.name_or_path='{file}' is a file, not a model folder"),
    (["model=hub", "model.name_or_path={empty}"], "model.name_or_path='{empty}' is a folder without config.json"),
    (["model=hub", "model.name_or_path={noweights}"], "'{noweights}' is a folder with config.json but no"),
    (["model=hub", "model.name_or_path={badjson}"], "'{badjson}' has a config.json that is not readable JSON"),
    (["model=opt-125m", "model.name_or_path={file}"], "model.name_or_path='{file}' is a file"),
    (["model.family=gpt"], "model.family='gpt'"),
    (["model=hub", "model.name_or_path=facebook/opt-125m", "model.family=gpt"], "model.family='gpt'"),
    (["results.dir={file}"], "results.dir='{file}' is a file, not a folder"),
    (["cache_dir={file}"], "cache_dir='{file}' is a file, not a folder"),
    (["save.model=true", "save.dir={file}"], "save.dir='{file}' is a file, not a folder"),
    (["save.dir={file}"], "save.dir='{file}' is a file, not a folder"),
    (["save.model=true", "save.dir=/proc/forbidden"], "save.dir='/proc/forbidden' is not writable"),
]
# ... and the right kind of thing is accepted, a hub id included (nothing is fetched).
GOOD_NAMES = [
    ["model=hub", "model.name_or_path=facebook/opt-125m"], ["model=hub", "model.name_or_path=gpt2"],
    ["model=hub", "model.name_or_path={model}"], ["model=opt-125m"],
    ["eval.zeroshot.tasks=[boolq,hellaswag,winogrande,piqa]"], ["eval.zeroshot.tasks=[sciq,lambada_openai]"],
    ["save.model=true", "save.dir={empty}"], ["data.local_dir={partial}"],  # a data folder with C4 train only
]


@pytest.fixture
def places(tmp_path, local_data):
    """The placeholders of NAMES and GOOD_NAMES, made in tmp_path."""
    from tests.conftest import broken_model_folder

    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text('{"model_type": "opt"}')
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{not json")
    (tmp_path / "badjson" / "model.safetensors").write_bytes(b"")
    c4 = next((local_data / "c4").glob("c4-train.*"))
    (tmp_path / "partial" / "c4").mkdir(parents=True)
    (tmp_path / "partial" / "c4" / c4.name).symlink_to(c4)
    return {"file": str(tmp_path / "a-file"), "empty": str(tmp_path / "empty"), "noweights": str(tmp_path / "noweights"),
            "badjson": str(tmp_path / "badjson"), "model": str(broken_model_folder(tmp_path / "model")),
            "partial": str(tmp_path / "partial"), "data": str(local_data)}


def _with_data(args, places):
    args = [a.format(**places) for a in args]
    return args if any(a.startswith("data.local_dir=") for a in args) else [*args, f"data.local_dir={places['data']}"]


@pytest.mark.parametrize("args,needle", NAMES, ids=[" ".join(a) for a, _ in NAMES])
def test_a_setting_that_names_a_thing_names_one_of_the_right_kind(args, needle, places):
    """A wrong name, a missing path or a path of the wrong kind (a file for a folder, a folder that
    is not a model or not a data folder) is rejected in one line naming the key and the value."""
    msg = check_command_line(_with_data(args, places))
    assert msg is not None, args
    assert "\n" not in msg and needle.format(**places) in msg and "accepted" in msg, msg


@pytest.mark.parametrize("args", GOOD_NAMES, ids=[" ".join(a) for a in GOOD_NAMES])
def test_the_right_kind_of_thing_is_accepted(args, places):
    assert check_command_line(_with_data(args, places)) is None


def test_every_key_that_names_a_thing_is_covered():
    """NAMES covers every key of the composed config whose value names a thing."""
    keys = {a.split("=")[0] for args, _ in NAMES for a in args if "=" in a and a.split("=")[0] not in ("model",)}
    assert {"eval.zeroshot.tasks", "eval.datasets", "calib.dataset", "data.local_dir", "model.name_or_path",
            "model.family", "results.dir", "cache_dir", "save.dir"} <= keys


@pytest.mark.subprocess
def test_run_py_exits_2_with_one_line_fast(tmp_path):
    """Through run.py itself, even with plan=true: exit code 2, exactly one stderr line, no
    traceback, within seconds (every other bad value is checked in-process above, through the same
    check_command_line that run.py calls first)."""
    start = time.perf_counter()
    (tmp_path / "a-file").write_text("x")
    result = subprocess.run([sys.executable, "run.py", "-m", "pruner=wanda,sparsegpt", "model=hub",
                             f"model.name_or_path={tmp_path / 'a-file'}", "plan=true", f"data.local_dir={data_dir()}",
                             f"results.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.name_or_path=") and "Traceback" not in result.stderr
    assert time.perf_counter() - start < 60 and not (tmp_path / "runs").exists()
