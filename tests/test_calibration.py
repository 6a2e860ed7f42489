"""Calibration pools: calib.dataset takes effect, the pool is described, caches follow the content."""
import json
import random
import subprocess
import sys

import pytest
import torch

from eval.calibration import calibration_source, calibration_tokens, pool_documents, sample_text
from eval.datasets import eval_tokens


class WordTokenizer:
    """A stand-in tokenizer: one id per whitespace word (the word's length)."""

    name_or_path = "words"

    def __len__(self):
        return 100

    def __call__(self, text):
        if isinstance(text, list):
            return type("Enc", (), {"input_ids": [self(t).input_ids for t in text]})()
        return type("Enc", (), {"input_ids": [len(w) for w in text.split()]})()


def test_text_sampler_matches_reference_algorithm():
    """WikiText-2/PTB windows: SparseGPT's loop (random.seed, start = randint(0, n - seqlen - 1))."""
    ids, n, seqlen, seed = list(range(1000)), 5, 40, 7
    random.seed(seed)
    expected = []
    for _ in range(n):
        i = random.randint(0, len(ids) - seqlen - 1)
        expected.append(ids[i : i + seqlen])
    assert torch.equal(sample_text(ids, n, seqlen, seed), torch.tensor(expected))


def test_calib_dataset_takes_effect(tmp_path):
    """calib.dataset=wikitext2 reads the local train split: every window is a slice of its token stream."""
    (tmp_path / "wikitext2").mkdir()
    words = [("w" * (1 + i % 9)) for i in range(3000)]
    (tmp_path / "wikitext2" / "wiki.train.raw").write_text(" ".join(words[:1500]) + "\n\n" + " ".join(words[1500:]) + "\n")
    got = calibration_tokens(WordTokenizer(), "wikitext2", str(tmp_path), 4, 30, 0, None)
    stream = WordTokenizer()(pool_documents("wikitext2", str(tmp_path))[0]).input_ids
    text = " ".join(map(str, stream))
    assert got.tokens.shape == (4, 30)
    assert all(" ".join(map(str, w.tolist())) in text for w in got.tokens)
    assert got.pool["dataset"] == "wikitext2" and got.pool["source"] == "local"
    assert len(got.pool["files"][0]["sha256"]) == 64
    with pytest.raises(ValueError, match="calib.dataset='ptb'.*ptb.train.txt.*accepted here: wikitext2"):
        calibration_source("ptb", str(tmp_path))


def test_c4_pool_is_described(local_data):
    """The C4 pool: documents, documents longer than seqlen, distinct documents drawn, and the warning."""
    tok, seqlen, n = WordTokenizer(), 900, 16
    got = calibration_tokens(tok, "c4", str(local_data), n, seqlen, 0, None)
    lengths = [len(json.loads(line)["text"].split())
               for line in open(next((local_data / "c4").glob("c4-train*")), encoding="utf-8") if line.strip()]
    pool = got.pool
    assert pool["documents"] == 1000 and pool["eligible_documents"] == sum(k > seqlen for k in lengths)
    assert 1 <= pool["distinct_documents_drawn"] <= min(n, pool["eligible_documents"])
    assert (pool["warning"] is not None) == (pool["distinct_documents_drawn"] < n)
    if pool["warning"]:
        assert "distinct documents" in pool["warning"] and "\n" not in pool["warning"]


def test_token_cache_follows_content_and_survives_corruption(tmp_path, caplog):
    """Changing a data file in place re-tokenizes it; a corrupt cache file is deleted and rebuilt."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    (data / "wikitext2").mkdir(parents=True)
    path = data / "wikitext2" / "wiki.test.raw"
    path.write_text(" = title = \n one two three \n")
    first = eval_tokens("wikitext2", WordTokenizer(), str(data), 8, str(cache))
    path.write_text(" = title = \n one two three four \n")
    second = eval_tokens("wikitext2", WordTokenizer(), str(data), 8, str(cache))
    assert second.numel() == first.numel() + 1
    (cached,) = [p for p in (cache / "tokens").glob("*.pt") if p.stat().st_mtime_ns == max(
        q.stat().st_mtime_ns for q in (cache / "tokens").glob("*.pt"))]
    cached.write_bytes(b"not a torch file")
    with caplog.at_level("WARNING"):
        again = eval_tokens("wikitext2", WordTokenizer(), str(data), 8, str(cache))
    assert torch.equal(again, second) and str(cached) in caplog.text
    assert torch.equal(torch.load(cached, weights_only=True), second)


def test_offline_c4_pool_at_2048_gpt2_bpe(local_data, tmp_path):
    """With the GPT-2/OPT BPE, 28 of the 1,000 offline C4 documents exceed 2,048 tokens (the issue's figure)."""
    from transformers import GPT2TokenizerFast

    folder = local_data / "tokenizers" / "gpt2"
    tok = GPT2TokenizerFast(vocab=str(folder / "encoder.json"), merges=str(folder / "vocab.bpe"))
    got = calibration_tokens(tok, "c4", str(local_data), 32, 2048, 0, str(tmp_path))
    assert got.pool["eligible_documents"] == 28 and got.pool["distinct_documents_drawn"] <= 28


@pytest.mark.slow
def test_offline_c4_pool_at_2048_smollm2(smollm2, local_data, tmp_path):
    """With SmolLM2's tokenizer 32 of the 1,000 offline C4 documents exceed 2,048 tokens (28 with GPT-2's BPE);
    128 windows then repeat them, and the pool says so."""
    got = calibration_tokens(smollm2[1], "c4", str(local_data), 128, 2048, 0, str(tmp_path))
    assert got.pool["eligible_documents"] == 32 and got.pool["documents"] == 1000
    assert got.pool["distinct_documents_drawn"] <= 32 and "only" in got.pool["warning"]
    assert got.tokens.shape == (128, 2048)


@pytest.mark.subprocess
def test_paper_protocol_report_states_pool_and_warning(local_data, tmp_path):
    """A paper-protocol run (128 x 2048 C4 windows, offline) records its pool; report.md states it and warns."""
    from tests.conftest import ROOT

    results = tmp_path / "r"
    run = subprocess.run([sys.executable, "run.py", "model=tiny-llama", "pruner=wanda", "sparsity=0.5",
                          "protocol=paper", "eval.datasets=[wikitext2]", "eval.max_windows=2", "eval.zeroshot.tasks=[]",
                          f"results.dir={results}", f"data.local_dir={local_data}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    (folder,) = [p for p in (results / "runs").iterdir() if "__wanda__" in p.name]
    pool = json.loads((folder / "manifest.json").read_text())["calibration"]
    assert (pool["nsamples"], pool["seqlen"], pool["documents"], pool["eligible_documents"]) == (128, 2048, 1000, 32)
    report = subprocess.run([sys.executable, "-m", "runners.reporting.report", f"results.dir={results}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (results / "report" / "report.md").read_text()
    assert "c4-train.00000-of-01024.head1000.jsonl" in text and "1000 documents" in text
    assert pool["warning"] in text
