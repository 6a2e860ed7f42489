"""The pruner protocol (pruners/base.py ``BlockPruner``) and the rules defined once beside it: the
dense baseline, a layer-wise allocation, a refinement, "does this run read calibration data", run
labels taken apart, a config's builder settings."""
from __future__ import annotations

from collections.abc import Mapping

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pruners.allocation import Owl, Uniform, allocates
from pruners.base import needs_calibration
from pruners.cost import Cost
from pruners.dense import DENSE, DensePruner, is_dense
from pruners.magnitude import build as magnitude
from pruners.refine import NoRefine, refines
from pruners.refine_dsnot import DSnoT
from pruners.wanda import build as wanda
from runners import registry
from runners.cli import CONF, choices


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("name", choices("pruner"))
def test_every_pruner_states_the_whole_protocol(name):
    """What the engine, the job and the plan read, every pruner has (no ``getattr`` fallback)."""
    pruner = registry.build(_compose(f"pruner={name}").pruner)
    assert pruner.name == name and isinstance(pruner.label, str) and pruner.label.startswith(name)
    assert pruner.calib_nsamples is None or isinstance(pruner.calib_nsamples, Mapping)
    assert isinstance(pruner.needs_calibration, bool) and callable(pruner.prune_block)
    assert pruner.cost is None or isinstance(pruner.cost, Cost)
    builtin = (CONF / "pruner" / f"{name}.yaml").is_file()
    assert pruner.cost is not None or not builtin  # every built-in is priced by plan=true


def test_the_report_keys_are_not_builder_settings_and_not_identity():
    """``order`` and ``color`` of a pruner config reach neither the builder nor the run id."""
    from runners.execution.identity import prepare

    cfg = _compose("pruner=wanda", "model=tiny-llama", "data.local_dir=null")
    assert {"order", "color"} <= set(cfg.pruner) and not {"order", "color"} & set(registry.settings(cfg.pruner))
    assert "order" not in prepare(cfg).pruner_cfg
    assert registry.style("wanda") == registry.Style(20.0, "#ff7f0e")


def test_one_predicate_per_concept():
    assert is_dense(DENSE) and is_dense(DensePruner()) and is_dense({"name": "dense"}) and is_dense("dense")
    assert is_dense(OmegaConf.create({"_target_": "pruners.dense.build", "name": "dense"}))
    assert not is_dense(wanda()) and not is_dense({"name": "wanda"}) and not is_dense("wanda+dsnot")
    assert not allocates(None) and not allocates(Uniform()) and allocates(Owl())
    assert not refines(None) and not refines(NoRefine()) and refines(DSnoT())
    assert needs_calibration(wanda()) and not needs_calibration(magnitude())
    assert needs_calibration(magnitude(), Owl()) and needs_calibration(magnitude(), refine=DSnoT())
    assert not needs_calibration(magnitude(), Uniform(), NoRefine()) and not needs_calibration(DENSE)


@pytest.mark.parametrize("label, parts", [
    ("wanda", ("wanda", "wanda", None, None)),
    ("wanda+dsnot", ("wanda", "wanda", None, "dsnot")),
    ("wanda+owl+dsnot", ("wanda", "wanda", "owl", "dsnot")),
    ("ria+permute", ("ria", "ria+permute", None, None)),
    ("sparsellm+keep_best+owl", ("sparsellm", "sparsellm+keep_best", "owl", None)),
    ("random", ("random", "random", None, None)),
])
def test_labels_are_parsed_once(label, parts):
    got = registry.parse_label(label)
    assert (got.pruner, got.own, got.allocation, got.refine) == parts


def test_row_order_follows_the_configs():
    """Each pruner's config order; a variant after its pruner's plain runs; each refinement or
    allocation right after the label it applies to; plugins last."""
    from runners.reporting.labels import pruner_order

    labels = ["zzz", "sparsellm+keep_best", "sparsellm+dsnot", "sparsellm", "ria+permute+dsnot", "ria+permute",
              "ria", "dense device=cuda", "dense", "magnitude", "sparsellm_released", "wanda+owl", "wanda"]
    assert sorted(labels, key=pruner_order) == [
        "dense", "dense device=cuda", "magnitude", "wanda", "wanda+owl", "ria", "ria+permute", "ria+permute+dsnot",
        "sparsellm", "sparsellm+dsnot", "sparsellm+keep_best", "sparsellm_released", "zzz"]


def test_shapes_read_the_layout_from_the_family():
    """The block's Linears, input groups and learned positions come from core/families.py."""
    from pruners.cost import Shape

    opt = Shape.from_config({"hidden_size": 64, "ffn_dim": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
                             "vocab_size": 300, "max_position_embeddings": 128}, "opt")
    llama = Shape.from_config({"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300}, "llama")
    assert [n for n, _, _ in opt.mlp_linears()] == ["fc1", "fc2"] and opt.mlp_inputs == 1
    assert [n for n, _, _ in llama.mlp_linears()] == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert llama.mlp_inputs == 2 and llama.groups() == [64, 64, 64, 160]
    assert opt.tied and not llama.tied  # absent from the file: the family's config class default
    assert opt.position_rows == 130 and llama.position_rows == 0
