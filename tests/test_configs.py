"""Every config group option composes, and every pruner config instantiates a working pruner."""
import pytest
from hydra import compose, initialize_config_dir

from runners.cli import CONF, choices
from runners.execution.job import prepare
from runners.registry import build


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("model", choices("model"))
def test_every_model_config_validates(model):
    """Each model preset composes and passes validation (hub presets need no network for this)."""
    extra = ["model.name_or_path=some/model"] if model == "hub" else []
    run = prepare(_compose(f"model={model}", *extra))
    assert run.model.name


@pytest.mark.parametrize("pruner", choices("pruner"))
def test_every_pruner_config_instantiates(pruner):
    """Each pruner config builds an object with the block-pruner interface."""
    obj = build(_compose(f"pruner={pruner}").pruner)
    assert obj.name == pruner and isinstance(obj.needs_calibration, bool) and callable(obj.prune_block)


@pytest.mark.parametrize("protocol", choices("protocol"))
def test_every_protocol_sets_all_numbers(protocol):
    """Each protocol sets every calibration and evaluation number, each settable on its own."""
    cfg = _compose(f"protocol={protocol}", "calib.nsamples=3", "eval.max_windows=5")
    assert cfg.calib.nsamples == 3 and cfg.eval.max_windows == 5
    assert cfg.calib.seqlen > 0 and cfg.eval.seqlen > 0 and list(cfg.eval.datasets)


def test_paper_protocol_numbers():
    """The paper protocol is C4 128 x 2048 calibration, full test sets at seqlen 2048."""
    cfg = _compose("protocol=paper")
    assert (cfg.calib.nsamples, cfg.calib.seqlen, cfg.eval.seqlen, cfg.eval.max_windows) == (128, 2048, 2048, None)
    assert list(cfg.eval.datasets) == ["wikitext2", "ptb", "c4"]
