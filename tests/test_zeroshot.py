"""Tests for eval/zeroshot.py: local lm-eval tasks match lm-eval's own tasks, and an
end-to-end 0-shot run on a tiny random model returns tidy rows."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path

import pytest

from eval import zeroshot

DATA = Path(os.environ.get("LLM_PRUNE_DATA") or Path(__file__).parents[2] / "shared" / "data")
N_ROWS = 20
# lm-eval's own task folder for each local task (inside the installed lm_eval package).
ORIGINAL_DIRS = {"arc_easy": "arc", "arc_challenge": "arc", "boolq": "super_glue/boolq",
                 "rte": "glue/rte", "piqa": "piqa", "openbookqa": "openbookqa"}


def _need_data() -> None:
    if not (DATA / "zeroshot").is_dir():
        pytest.skip(f"local zero-shot data not found at {DATA / 'zeroshot'} (set LLM_PRUNE_DATA)")


@pytest.fixture(scope="module")
def original_tm():
    """A TaskManager that indexes only lm-eval's own YAMLs for the six tasks (fast)."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    root = Path(lm_eval.tasks.__file__).parent
    dirs = sorted({str(root / d) for d in ORIGINAL_DIRS.values()})
    return TaskManager(include_path=dirs, include_defaults=False), root


def _original_task(tm, root: Path, task: str, rows: list[dict]):
    """lm-eval's own task config for `task`, with the converted rows injected as its data."""
    from datasets import Dataset, DatasetDict

    entry = tm.task_index[task]
    assert root in Path(entry.yaml_path).resolve().parents  # really lm-eval's own YAML
    cfg = dict(entry.cfg)
    splits = {cfg.get(k) for k in ("training_split", "validation_split", "test_split")} - {None}
    data = DatasetDict({s: Dataset.from_list(rows) for s in splits})
    # custom_dataset replaces only the hub download; prompts/choices stay lm-eval's.
    cfg["custom_dataset"] = lambda **_: data
    return next(iter(tm.load([cfg])["tasks"].values()))


def _raw_gold_text(task: str, i: int) -> str:
    """The gold answer text read straight from the raw local file (independent of conversion)."""
    folder = DATA / "zeroshot"
    if task.startswith("arc"):
        r = json.loads((folder / f"{task}.test.jsonl").read_text().splitlines()[i])
        return next(c["text"] for c in r["question"]["choices"] if c["label"] == r["answerKey"])
    if task == "boolq":
        r = json.loads((folder / "boolq.validation.jsonl").read_text().splitlines()[i])
        return {"true": "yes", "false": "no"}[r["label"]]
    if task == "rte":
        r = json.loads((folder / "rte.validation.jsonl").read_text().splitlines()[i])
        return {"entailment": "True", "not_entailment": "False"}[r["label"]]
    if task == "piqa":
        r = json.loads((folder / "piqa.validation.jsonl").read_text().splitlines()[i])
        label = int((folder / "piqa.validation-labels.lst").read_text().split()[i])
        return [r["sol1"], r["sol2"]][label]
    with (folder / "openbookqa.test.tsv").open(newline="") as fh:
        r = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[i]
    return r["Complete Question"], r["Answer Key"]


@pytest.mark.parametrize("task", list(ORIGINAL_DIRS))
def test_local_task_matches_lm_eval_task(task, original_tm, tmp_path_factory):
    """The local task builds the same prompts, choices and gold as lm-eval's own task."""
    _need_data()
    tm, root = original_tm
    cache = tmp_path_factory.mktemp(f"zs_{task}")
    rows = zeroshot.convert_local(task, DATA)
    orig = _original_task(tm, root, task, rows)
    local = zeroshot.build_local_requests(task, DATA, N_ROWS, cache_dir=cache)
    assert len(local) == N_ROWS
    delim = orig.config.target_delimiter
    docs = orig.eval_docs
    for i, (ctx, conts, gold) in enumerate(local):
        doc = docs[i]
        assert ctx == orig.doc_to_text(doc)
        assert conts == [delim + c for c in orig.doc_to_choice(doc)]
        assert gold == orig.doc_to_target(doc)
        # The gold choice must also agree with the raw file, so a label flip in the
        # conversion (which both sides above would share) cannot pass.
        raw = _raw_gold_text(task, i)
        if task == "openbookqa":
            complete, key = raw
            assert f"({key}) {conts[gold][len(delim):]}" in complete
        else:
            assert conts[gold] == delim + raw


def test_conversion_row_counts_and_labels():
    """Converted datasets keep every row and use the hub label conventions."""
    _need_data()
    sizes = {"arc_easy": 2376, "arc_challenge": 1172, "boolq": 3270, "rte": 277,
             "piqa": 1838, "openbookqa": 500}
    for task, n in sizes.items():
        assert len(zeroshot.convert_local(task, DATA)) == n
    assert {r["label"] for r in zeroshot.convert_local("rte", DATA)} == {0, 1}
    obqa = zeroshot.convert_local("openbookqa", DATA)
    assert all(r["choices"]["label"] == ["A", "B", "C", "D"] for r in obqa)


def test_missing_local_file_is_reported(tmp_path):
    """A local task whose file is absent raises with the path it looked at."""
    with pytest.raises(FileNotFoundError, match="boolq.validation.jsonl"):
        zeroshot.convert_local("boolq", tmp_path)


def test_end_to_end_tiny_llama(tmp_path, caplog):
    """evaluate_zeroshot on a tiny random Llama gives acc rows and flags hellaswag unavailable."""
    _need_data()
    import torch
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    gpt2 = DATA / "tokenizers" / "gpt2"
    tok = GPT2TokenizerFast(vocab=str(gpt2 / "encoder.json"), merges=str(gpt2 / "vocab.bpe"))
    assert len(tok) == 50257
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    with caplog.at_level(logging.WARNING, logger="eval.zeroshot"):
        rows = zeroshot.evaluate_zeroshot(model, tok, ["arc_easy", "boolq", "hellaswag"], limit=5,
                                          local_dir=str(DATA), device="cpu", cache_dir=str(tmp_path))
    got = {(r["dataset"], r["metric"]): r for r in rows}
    for task in ("arc_easy", "boolq"):
        r = got[(task, "acc")]
        assert r["status"] == "ok" and 0.0 <= r["value"] <= 1.0
        # 5 docs: accuracy is a multiple of 1/5.
        assert abs(r["value"] * 5 - round(r["value"] * 5)) < 1e-9
    assert 0.0 <= got[("arc_easy", "acc_norm")]["value"] <= 1.0
    assert ("boolq", "acc_norm") not in got  # lm-eval's boolq reports acc only
    hs = [r for r in rows if r["dataset"] == "hellaswag"]
    assert len(hs) == 1 and hs[0]["status"] == "unavailable" and math.isnan(hs[0]["value"])
    assert "hellaswag" in hs[0]["message"] and str(DATA / "zeroshot") in hs[0]["message"]
    assert any(hs[0]["message"] in rec.getMessage() for rec in caplog.records)
    mean = got[("zeroshot_mean", "acc")]
    expect = (got[("arc_easy", "acc")]["value"] + got[("boolq", "acc")]["value"]) / 2
    assert mean["value"] == pytest.approx(expect)
    assert set(r["status"] for r in rows) <= {"ok", "unavailable"}


def test_harmless_lm_eval_warnings_are_dropped_and_real_ones_kept(caplog):
    """The four notices that describe what we ask for are dropped at lm-eval's loggers; any
    other lm-eval warning (and the same logger's other records) still comes through."""
    from eval.zeroshot import quiet_lm_eval

    quiet_lm_eval()
    quiet_lm_eval()  # idempotent: one filter per logger
    hf = logging.getLogger("lm_eval.models.huggingface")
    assert sum(type(f).__name__ == "HarmlessLmEvalWarnings" for f in hf.filters) == 1
    harmless = [
        ("lm_eval.models.huggingface", "`pretrained` model kwarg is not of type `str`. Many other model arguments may be ignored."),
        ("lm_eval.models.huggingface", "Passed an already-initialized model through `pretrained`, assuming single-process call"),
        ("lm_eval.evaluator", "Overwriting default num_fewshot of boolq_local from None to 0"),
        ("lm_eval.api.task", "[Task: rte_local] metric acc is defined, but aggregation is not. using default aggregation=mean"),
        ("lm_eval.api.task", "[Task: rte_local] metric acc_norm is defined, but higher_is_better is not. using default higher_is_better=True"),
    ]
    real = [
        ("lm_eval.evaluator", "Overwriting default num_fewshot of boolq_local from 5 to 0"),  # not our 0-shot default
        ("lm_eval.api.task", "[Task: rte_local] metric f1 is defined, but aggregation is not."),
        ("lm_eval.models.huggingface", "Failed to get model SHA for x"),
    ]
    with caplog.at_level(logging.WARNING):
        for name, msg in harmless + real:
            logging.getLogger(name).warning(msg)
    assert [r.getMessage() for r in caplog.records] == [msg for _, msg in real]
