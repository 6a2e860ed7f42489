"""Model families, datasets and metrics are declared once: one new entry is all a new one needs.

Each test adds an entry to the registry (``FAMILIES`` in core/families.py, ``CORPORA``
in eval/datasets.py) for the test only and runs the real code paths that read it: validation,
model building, evaluation text, calibration, the run and the report's tables.
"""
from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from eval import calibration, datasets
from eval.metrics import METRICS, PPL
from core import families as adapters
from runners.execution.job import METRIC_COLUMNS, run_job
from runners.execution.store import load_metrics
from runners.reporting.tables import normalize, ppl_grid, zeroshot_grid
from tests.conftest import compose_wanda_smoke


@pytest.fixture
def mini_corpus(tmp_path, monkeypatch):
    """A new corpus ``mini`` (PTB-style lines) in a data folder of its own, registered for the test."""
    folder = tmp_path / "data" / "mini"
    folder.mkdir(parents=True)
    words = " ".join(f"word{i % 97} and{i % 13}" for i in range(3000))
    (folder / "test.txt").write_text("\n".join(f" {words[k:k + 80]} " for k in range(0, len(words), 80)))
    (folder / "train.txt").write_text("\n".join(f" {words[k:k + 60]} " for k in range(0, len(words), 60)))
    mini = datasets.Corpus("mini", "Mini", read_local=datasets.ptb_rows, separator=" ", hub_id="nobody/mini",
                           splits={"test": datasets.Split("mini/test.txt", "test"),
                                   "train": datasets.Split("mini/train.txt", "train")})
    monkeypatch.setitem(datasets.CORPORA, "mini", mini)
    return tmp_path / "data"


def test_a_declared_corpus_is_read_evaluated_and_calibrated(mini_corpus):
    lines = (mini_corpus / "mini" / "test.txt").read_text().splitlines()
    assert datasets.check_dataset_names(["mini", "wikitext2"]) == ["mini", "wikitext2"]
    assert datasets.eval_text("mini", str(mini_corpus)) == " ".join(line.strip() for line in lines)
    source = datasets.eval_source("mini", str(mini_corpus))
    assert source["file"] == "mini/test.txt" and len(source["sha256"]) == 64
    assert "mini" in calibration.calibration_datasets()
    assert calibration.calibration_source("mini", str(mini_corpus))["file"] == "mini/train.txt"
    pool = calibration.pool_documents("mini", str(mini_corpus))
    assert len(pool) == 1 and pool[0].startswith("word0 and0")  # one text stream, like WikiText-2/PTB
    with pytest.raises(ValueError, match=r"eval.datasets has unknown \['wt103'\]: accepted \[.*'mini'\]"):
        datasets.check_dataset_names(["wt103"])


def test_a_declared_corpus_runs_end_to_end_and_reaches_the_tables(mini_corpus, tmp_path, cache_dir):
    """eval.datasets=[mini] calib.dataset=mini: the run evaluates it, the table has its column."""
    cfg = compose_wanda_smoke(tmp_path / "results", cache_dir, "model=tiny-llama", f"data.local_dir={mini_corpus}",
                              "eval.datasets=[mini]", "calib.dataset=mini", "calib.seqlen=32", "eval.seqlen=32")
    assert run_job(cfg) == "ok"
    frame = load_metrics(tmp_path / "results")
    mini = frame[(frame["dataset"] == "mini") & (frame["metric"] == PPL.name)]
    assert len(mini) == 2 and mini["value"].map(math.isfinite).all()  # the dense baseline and the Wanda run
    grid = ppl_grid(frame)
    assert list(grid.text.columns) == [("0.5", "mini")]


def test_a_declared_family_builds_tiny_models_and_validates(monkeypatch):
    """A family entry (here an OPT variant under a new name) is all that model building, the tiny
    tokenizer choice and validation's block shapes need."""
    twin = dataclasses.replace(adapters.OPT, family="opt_twin")
    monkeypatch.setitem(adapters.FAMILIES, "opt_twin", twin)
    from runners.execution.models import ModelSpec, _tiny_model
    from runners.validate import linear_input_widths, model_shape
    from omegaconf import OmegaConf

    spec = ModelSpec(name="tiny-twin", source="tiny", family="opt_twin",
                     tiny={"hidden_size": 16, "num_layers": 1, "ffn_dim": 24, "heads": 2})
    model = _tiny_model(spec, 0)
    assert adapters.adapter_for(model).linears(adapters.adapter_for(model).blocks(model)[0])["fc1"].in_features == 16
    cfg = OmegaConf.create({"model": {"name": "tiny-twin", "source": "tiny", "family": "opt_twin",
                                      "tiny": {"hidden_size": 16, "num_layers": 1, "ffn_dim": 24, "heads": 2}}})
    assert linear_input_widths(model_shape(cfg)) == {"q/k/v and MLP input": 16, "attention output": 16,
                                                    "MLP output": 24}
    with pytest.raises(ValueError, match=r"model.family \(tiny model\)='gpt5' is not valid: accepted opt, llama"):
        _tiny_model(dataclasses.replace(spec, family="gpt5"), 0)


def test_tables_take_direction_and_scale_from_the_declared_metrics():
    """The best marker follows Metric.higher_is_better and zero-shot cells Metric.percent."""
    rows = []
    for pruner, ppl, acc in (("dense", 10.0, 0.60), ("wanda", 20.0, 0.50), ("sparsegpt", 15.0, 0.40)):
        base = {**dict.fromkeys(METRIC_COLUMNS, ""), "model": "m", "pruner": pruner, "sparsity": "0" if pruner == "dense" else "0.5", "protocol": "p",
                "status": "ok", "message": "", "seed": 0, "run_id": pruner, "eval_max_windows": None}
        rows += [{**base, "dataset": "wikitext2", "metric": PPL.name, "value": ppl},
                 {**base, "dataset": "boolq", "metric": "acc", "value": acc},
                 {**base, "dataset": "zeroshot_mean", "metric": "acc", "value": acc}]
    frame = normalize(pd.DataFrame(rows))
    ppl = ppl_grid(frame)
    best_ppl = [r for r in ppl.text.index if ppl.best.loc[r].any()]
    assert best_ppl == ["sparsegpt"] and not PPL.higher_is_better  # lowest pruned perplexity
    zs = zeroshot_grid(frame, "acc")
    best_acc = [r for r in zs.text.index if zs.best.loc[r].any()]
    assert METRICS["acc"].higher_is_better and len(best_acc) == 1 and best_acc[0].startswith("wanda")
    assert zs.text.loc[best_acc[0], "boolq"].startswith("50.0")  # 0.50 shown in percent
