"""Run identity: everything that changes a number changes the run id, and nothing else is needed to tell runs apart."""
import dataclasses
import shutil

import pytest
from hydra import compose, initialize_config_dir

from runners.cli import CONF
from runners.execution.identity import prepare, run_id
from runners.execution.job import SettingsError, resolve
from runners.registry import build
from runners.validate import check_command_line
from tests.conftest import ROOT, data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")


def _cfg(*overrides, local=True):
    extra = [f"data.local_dir={data_dir()}"] if local else ["data.local_dir=null"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[*extra, *overrides])


def _id(*overrides, local=True):
    return run_id(resolve(_cfg(*overrides, local=local))[2])


def test_local_and_hub_runs_have_different_ids():
    """The same setting read from the local copies and from the hub gets two run ids (dense and pruned)."""
    for pruner in ("dense", "wanda"):
        assert _id(f"pruner={pruner}") != _id(f"pruner={pruner}", local=False)


def test_dtype_and_device_kind_enter_the_id():
    """float32 and bfloat16 differ; so do a CPU and a CUDA run of the same setting; the CUDA index does not."""
    assert _id("model.dtype=float32") != _id("model.dtype=bfloat16")
    run, pruner, _ = resolve(_cfg("pruner=sparsegpt"))
    cuda0, cuda1 = dataclasses.replace(run, device="cuda:0"), dataclasses.replace(run, device="cuda:1")
    assert run_id(run.key(pruner)) != run_id(cuda0.key(pruner)) == run_id(cuda1.key(pruner))
    assert run.key(pruner)["model"]["dtype"] == "float32"  # auto resolved: float32 on the CPU


def test_data_content_enters_the_id(tmp_path):
    """Two folders with the same files share an id; changing a file's content in place changes it."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir(), copy, ignore=shutil.ignore_patterns("zeroshot", "tokenizers"))
    base = _id("pruner=wanda")
    ours = _id("pruner=wanda", f"data.local_dir={copy}")
    assert ours == base
    with open(copy / "wikitext2" / "wiki.test.raw", "a", encoding="utf-8") as handle:
        handle.write(" one more line\n")
    assert _id("pruner=wanda", f"data.local_dir={copy}") != base


def test_labels_do_not_collide():
    """A block list is labelled as a list, not as the range it spans; close sparsities keep their digits."""
    run, pruner, key = resolve(_cfg("pruner=magnitude", "prune.layers=[0,3,5]"))
    assert key["layers"] == "0,3,5"
    assert resolve(_cfg("pruner=magnitude", "prune.layers=0-5"))[2]["layers"] == "0-5"
    a, b = _id("sparsity=0.1234567"), _id("sparsity=0.1234568")
    assert a != b and "0.1234567" in a and "0.1234568" in b


def test_calibration_settings_enter_the_id_only_when_used():
    """calib.dataset/nsamples change a calibrated run's id, not magnitude's or the dense baseline's."""
    assert _id("pruner=wanda", "calib.nsamples=4") != _id("pruner=wanda", "calib.nsamples=5")
    assert _id("pruner=magnitude", "calib.nsamples=4") == _id("pruner=magnitude", "calib.nsamples=5")
    assert _id("pruner=dense", "seed=0") == _id("pruner=dense", "seed=1")  # a real model's dense run: no seed
    tiny = ("pruner=dense", "model=tiny-llama")  # a tiny model's weights come from the seed
    assert _id(*tiny, "seed=0") != _id(*tiny, "seed=1")
    assert _id("pruner=wanda", "seed=0") != _id("pruner=wanda", "seed=1")


def test_keep_best_has_its_own_label():
    """SparseLLM returns the last iterate by default; keep_best=true is labelled apart in the id and tables."""
    _, pruner, key = resolve(_cfg("pruner=sparsellm"))
    assert pruner.keep_best is False and key["label"] == "sparsellm"
    _, pruner, key = resolve(_cfg("pruner=sparsellm", "pruner.keep_best=true"))
    assert key["label"] == "sparsellm+keep_best" and "__sparsellm+keep_best__" in run_id(key)


def test_missing_calibration_split_is_rejected_before_loading():
    """calib.dataset=ptb with a local folder lacking the PTB train split: one line naming the value and the place."""
    with pytest.raises(SettingsError) as info:
        resolve(_cfg("pruner=wanda", "calib.dataset=ptb"))
    msg = str(info.value)
    assert "calib.dataset='ptb'" in msg and "ptb.train.txt" in msg and "c4" in msg and "\n" not in msg
    with pytest.raises(SettingsError, match="calib.dataset='books'.*accepted c4, wikitext2, ptb"):
        resolve(_cfg("calib.dataset=books"))


def test_missing_calibration_split_is_rejected_before_anything_runs(tmp_path):
    """What run.py checks first (its one stderr line, exit code 2: tests/test_validation.py) names
    calib.dataset and where it looked; no model is loaded, nothing is written."""
    message = check_command_line(["pruner=wanda", "calib.dataset=ptb", f"data.local_dir={data_dir()}",
                                  f"results.dir={tmp_path / 'r'}"])
    assert message is not None and "\n" not in message
    assert "calib.dataset='ptb'" in message and "looked for" in message, message
    assert not (tmp_path / "r" / "runs").exists()


def test_seed_must_be_whole():
    """seed=1.5 is rejected instead of hashing as 1."""
    with pytest.raises(SettingsError, match="seed=1.5"):
        resolve(_cfg("seed=1.5"))


def test_prepare_resolves_without_loading():
    """prepare names the data each evaluation set is read from, with content hashes of the local files."""
    run = prepare(_cfg("eval.datasets=[wikitext2,ptb,c4]"))
    assert run.eval_sources["wikitext2"]["file"] == "wikitext2/wiki.test.raw"
    assert len(run.eval_sources["ptb"]["sha256"]) == 64
    assert run.eval_sources["c4"]["sha256"] is None  # not in the offline copies: reported unavailable later
    assert build(_cfg().pruner).name == "magnitude"
