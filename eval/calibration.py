"""Calibration windows: SparseGPT's samplers over C4, WikiText-2 or PTB (``calib.dataset``).

* ``c4``: the train shard ``en/c4-train.00000-of-01024.json.gz`` (locally ``c4/c4-train.00000-of-01024*``,
  possibly a head of it). With Python's ``random`` seeded: draw a document index until the
  tokenized document is longer than ``seqlen``, then a start ``j = randint(0, L - seqlen - 1)``
  and the window ``ids[j : j + seqlen]``; ``nsamples`` times.
* ``wikitext2`` / ``ptb``: the *train* split as one text (rows joined as the test text is),
  tokenized once; ``nsamples`` windows at ``i = randint(0, n - seqlen - 1)``. Locally
  ``wikitext2/wiki.train.raw`` and ``ptb/ptb.train.txt`` (not among the offline copies here).

``calibration_source`` checks that the pool can be had and fingerprints it before any model
loads (a missing local file is a ``ValueError`` naming ``calib.dataset`` and where it looked);
``calibration_tokens`` returns the windows with a description of the pool they came from
(documents, documents long enough at this seqlen, distinct documents drawn). With few eligible
documents (1,000 offline C4 documents hold only 28 longer than 2,048 SmolLM2 tokens, where the
papers draw from ~356,000) the windows repeat documents: that is recorded and warned about.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .datasets import CORPORA, DatasetUnavailable, cached, tokenizer_id

log = logging.getLogger(__name__)


def calibration_datasets() -> tuple[str, ...]:
    """Every corpus of eval/datasets.py, C4 first (the papers' calibration set, listed first in errors)."""
    return tuple(sorted(CORPORA, key=lambda name: name != "c4"))


def calibration_source(dataset: str, local_dir: str | None) -> dict:
    """Where the calibration pool of ``dataset`` comes from (hub id, or local file + sha256).

    Raises ``ValueError`` (one line: the setting, its value, where we looked) when the dataset
    is unknown or a local folder lacks it, so a run stops before its model loads.
    """
    if dataset not in CORPORA:
        raise ValueError(f"calib.dataset={dataset!r} is not valid: accepted {', '.join(calibration_datasets())}")
    found = CORPORA[dataset].source(local_dir, "train")
    if local_dir and found["sha256"] is None:
        looked = str(Path(local_dir) / CORPORA[dataset].looked_for("train"))
        raise ValueError(f"calib.dataset={dataset!r}: no local copy of its calibration split in "
                         f"data.local_dir (looked for {looked}); accepted here: "
                         f"{', '.join(d for d in calibration_datasets() if _has_local(d, local_dir)) or 'none'}")
    return found


def _has_local(dataset: str, local_dir: str) -> bool:
    return CORPORA[dataset].local_file(local_dir, "train") is not None


def pool_documents(dataset: str, local_dir: str | None) -> list[str]:
    """The pool: C4 documents, or the WikiText-2/PTB train text as a single document."""
    data = CORPORA[dataset]
    rows = data.rows(local_dir, "train", f"{dataset} (calibration)")
    return rows if data.documents else [data.join(rows)]


def sample_documents(documents: list[str], tokenizer, nsamples: int, seqlen: int,
                     seed: int) -> tuple[torch.Tensor, list[int]]:
    """SparseGPT's C4 sampler: ``nsamples`` windows (n x seqlen) and the document each came from."""
    rng = random.Random(seed)
    windows, sources, memo = [], [], {}
    for _ in range(nsamples):
        for _attempt in range(100_000):
            index = rng.randint(0, len(documents) - 1)
            if index not in memo:  # a redrawn document is not tokenized again (same draws, same windows)
                memo[index] = tokenizer(documents[index]).input_ids
            ids = memo[index]
            if len(ids) > seqlen:
                break
        else:
            raise DatasetUnavailable(f"calibration: no document longer than {seqlen} tokens among {len(documents)}")
        start = rng.randint(0, len(ids) - seqlen - 1)
        windows.append(ids[start : start + seqlen])
        sources.append(index)
    return torch.tensor(windows, dtype=torch.long), sources


def sample_windows(documents: list[str], tokenizer, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """The windows of :func:`sample_documents` only."""
    return sample_documents(documents, tokenizer, nsamples, seqlen, seed)[0]


def sample_text(ids: list[int], nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """SparseGPT's WikiText-2/PTB sampler: windows at uniform random starts of one token stream."""
    if len(ids) <= seqlen:
        raise DatasetUnavailable(f"calibration: the text has {len(ids)} tokens, not more than calib.seqlen={seqlen}")
    rng = random.Random(seed)
    starts = [rng.randint(0, len(ids) - seqlen - 1) for _ in range(nsamples)]
    return torch.tensor([ids[s : s + seqlen] for s in starts], dtype=torch.long)


@dataclass
class Calibration:
    """Calibration windows and the description of the pool they came from (for the manifest)."""

    tokens: torch.Tensor
    pool: dict


def _lengths(tokenizer, documents: list[str]) -> list[int]:
    """Token count of every document (batched for Hugging Face tokenizers)."""
    try:
        return [len(ids) for ids in tokenizer(documents).input_ids]
    except (TypeError, AttributeError):  # a plain callable taking one text
        return [len(tokenizer(d).input_ids) for d in documents]


def calibration_tokens(tokenizer, dataset: str, local_dir: str | None, nsamples: int, seqlen: int, seed: int,
                       cache_dir: str | None = None) -> Calibration:
    """Calibration windows (nsamples x seqlen), cached by the pool's content and every setting."""
    source = calibration_source(dataset, local_dir)
    content = {k: v for k, v in source.items() if k != "path"}
    key = {"kind": f"calib-{dataset}", "source": content, "tok": tokenizer_id(tokenizer), "n": nsamples,
           "seqlen": seqlen, "seed": seed}

    def build() -> dict:
        documents = pool_documents(dataset, local_dir)
        if CORPORA[dataset].documents:
            lengths = _lengths(tokenizer, documents)
            eligible = sum(n > seqlen for n in lengths)
            if eligible == 0:
                raise DatasetUnavailable(f"calibration: no {dataset} document longer than calib.seqlen={seqlen} "
                                         f"tokens among {len(documents)}")
            tokens, drawn = sample_documents(documents, tokenizer, nsamples, seqlen, seed)
        else:
            tokens, drawn, eligible = sample_text(tokenizer(documents[0]).input_ids, nsamples, seqlen, seed), [0], 1
        return {"tokens": tokens, "documents": len(documents), "eligible": eligible, "distinct": len(set(drawn))}

    got = cached(cache_dir, key, build)
    pool = {"dataset": dataset, "source": source["source"],
            "files": [{"path": source.get("path") or source.get("file"), "sha256": source.get("sha256")}]
            if source["source"] == "local" else [],
            "hub": None if source["source"] == "local" else {k: v for k, v in source.items() if k != "source"},
            "documents": int(got["documents"]), "eligible_documents": int(got["eligible"]),
            "distinct_documents_drawn": int(got["distinct"]), "nsamples": nsamples, "seqlen": seqlen,
            "seed": seed, "warning": None}
    if CORPORA[dataset].documents and pool["distinct_documents_drawn"] < nsamples:
        pool["warning"] = (f"calibration pool: {nsamples} windows of {seqlen} tokens came from only "
                           f"{pool['distinct_documents_drawn']} distinct documents ({pool['eligible_documents']} of "
                           f"{pool['documents']} {dataset} documents are longer than {seqlen} tokens; the papers "
                           f"draw from the full shard of ~356,000)")
        log.warning("%s", pool["warning"])
    return Calibration(got["tokens"], pool)
