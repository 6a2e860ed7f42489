"""Evaluation text and calibration windows: local files give the hub's text, exactly."""
import random

import pytest
import torch

from eval.calibration import pool_documents, sample_windows
from eval.datasets import DatasetUnavailable, eval_rows, eval_text, eval_tokens
from eval.perplexity import windows


def test_wikitext2_local_rows_match_hub_layout(local_data):
    """Local WikiText-2 rows follow the hub's layout: text lines end in newline, blank lines are ''."""
    raw = (local_data / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")
    rows = eval_rows("wikitext2", str(local_data))
    assert len(rows) == 4358
    # independent construction: the hub rows are the file's lines with their newline, blanks emptied
    hub_like = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]
    assert rows == hub_like
    assert eval_text("wikitext2", str(local_data)) == "\n\n".join(hub_like)


def test_ptb_local_rows_match_hub_layout(local_data):
    """Local PTB rows are the file's lines stripped on both sides (the hub builder's line.strip())."""
    raw = (local_data / "ptb" / "ptb.test.txt").read_text(encoding="utf-8")
    rows = eval_rows("ptb", str(local_data))
    assert len(rows) == 3761
    assert all(r and r[0] != " " and r[-1] != " " for r in rows)
    # independent construction: drop the one leading and one trailing space of every line
    assert rows == [line[1:-1] if line.startswith(" ") and line.endswith(" ") else line.strip()
                    for line in raw.split("\n") if line]
    text = eval_text("ptb", str(local_data))
    assert text.startswith("no it was n't black monday but while") and "  " not in text


def test_c4_validation_unavailable_offline(local_data, tmp_path):
    """C4 validation is not in the local folder: a one-line DatasetUnavailable naming it and the place."""
    with pytest.raises(DatasetUnavailable) as info:
        eval_text("c4", str(local_data))
    msg = str(info.value)
    assert "c4" in msg and "c4-validation" in msg and str(local_data) in msg and "\n" not in msg


def test_hub_failure_is_unavailable(monkeypatch):
    """With no local folder and no network, a dataset is unavailable with a message, not a crash."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable, match="wikitext2"):
        eval_rows("wikitext2", None)


def test_unknown_dataset_rejected():
    """An unknown dataset name is rejected with the list of accepted names."""
    with pytest.raises(ValueError, match="accepted"):
        eval_text("wikitext103", None)


class _WordTokenizer:
    """A stand-in tokenizer: one id per whitespace word."""

    def __call__(self, text):
        return type("Enc", (), {"input_ids": [len(w) for w in text.split()]})()


def test_calibration_sampler_matches_reference_algorithm():
    """The sampler draws the same windows as SparseGPT's loop (global `random`, same order of draws)."""
    docs = [" ".join(["w" * (1 + (i * j) % 7) for j in range(10 + 13 * i)]) for i in range(40)]
    tok, n, seqlen, seed = _WordTokenizer(), 6, 50, 3
    ours = sample_windows(docs, tok, n, seqlen, seed)
    random.seed(seed)  # the reference: module-level random, redraw until longer than seqlen
    expected = []
    for _ in range(n):
        while True:
            ids = tok(docs[random.randint(0, len(docs) - 1)]).input_ids
            if len(ids) > seqlen:
                break
        i = random.randint(0, len(ids) - seqlen - 1)
        expected.append(ids[i : i + seqlen])
    assert torch.equal(ours, torch.tensor(expected))


def test_calibration_documents_local(local_data):
    """The local C4 train head loads as 1,000 documents."""
    docs = pool_documents("c4", str(local_data))
    assert len(docs) == 1000 and all(isinstance(d, str) and d for d in docs)


def test_windows_drop_the_tail():
    """Perplexity windows are non-overlapping, tail dropped, capped by max_windows."""
    ids = torch.arange(103).unsqueeze(0)
    assert windows(ids, 10).shape == (10, 10)
    assert windows(ids, 10, max_windows=3).tolist()[2] == list(range(20, 30))


@pytest.mark.slow
def test_ptb_token_count_smollm2(smollm2, local_data, tmp_path):
    """PTB test (rows stripped, joined with ' ') tokenizes to 97,930 SmolLM2 tokens: 47 windows of 2048."""
    ids = eval_tokens("ptb", smollm2[1], str(local_data), 2048, str(tmp_path))
    assert ids.shape == (1, 97_930)
    assert windows(ids, 2048).shape[0] == 47


@pytest.mark.slow
def test_wikitext2_token_count_smollm2(smollm2, local_data, tmp_path):
    """WikiText-2 test tokenizes to 304,986 SmolLM2 tokens, and the on-disk cache returns the same ids."""
    tokenizer = smollm2[1]
    ids = eval_tokens("wikitext2", tokenizer, str(local_data), 2048, str(tmp_path))
    assert ids.shape == (1, 304_986)
    assert torch.equal(eval_tokens("wikitext2", tokenizer, str(local_data), 2048, str(tmp_path)), ids)
