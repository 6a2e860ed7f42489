"""Evaluation text and calibration windows, from the hub or from a local folder.

Every dataset has one text construction (methods.md, "Perplexity") applied to rows that come
either from the hub or from ``data.local_dir`` (a folder laid out like ``../shared/data``);
both sources give the same rows, hence the same text:

* ``wikitext2``: ``wikitext-2-raw-v1`` test rows joined with ``"\\n\\n"``;
* ``ptb``: ``ptb_text_only`` test ``sentence`` rows joined with ``" "``;
* ``c4``: the first 1,100 documents of ``en/c4-validation.00000-of-00008.json.gz`` joined with
  ``" "`` (the caller keeps exactly 256 windows).

Calibration follows SparseGPT's sampler over the C4 train shard ``00000``: with Python's
``random`` seeded, draw documents until one tokenizes to more than ``seqlen`` tokens, then a
random window of ``seqlen`` tokens inside it. A dataset that cannot be had raises
``DatasetUnavailable`` with one line naming it and where it looked.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import torch

EVAL_DATASETS = ("wikitext2", "ptb", "c4")
C4_VALIDATION = "en/c4-validation.00000-of-00008.json.gz"
C4_TRAIN = "en/c4-train.00000-of-01024.json.gz"
C4_EVAL_DOCS = 1100
C4_EVAL_WINDOWS = 256


class DatasetUnavailable(RuntimeError):
    """The dataset cannot be loaded here; the message is one line naming it and where we looked."""


def check_dataset_names(names) -> list[str]:
    """Validate ``eval.datasets``; raise naming the bad value and the accepted names."""
    names = list(names)
    bad = [n for n in names if n not in EVAL_DATASETS]
    if bad:
        raise ValueError(f"eval.datasets has unknown {bad}: accepted {list(EVAL_DATASETS)}")
    return names


# ---- rows: local files ------------------------------------------------------------------


def wikitext2_rows_local(local_dir: Path) -> list[str]:
    """Hub rows from ``wiki.test.raw``: a line ``l`` is the row ``l + "\\n"``, a blank line ``""``."""
    path = local_dir / "wikitext2" / "wiki.test.raw"
    _require(path, "wikitext2")
    return [line + "\n" if line.strip() else "" for line in path.read_text(encoding="utf-8").splitlines()]


def ptb_rows_local(local_dir: Path) -> list[str]:
    """Hub ``sentence`` rows from ``ptb.test.txt``: each line without its leading space and newline."""
    path = local_dir / "ptb" / "ptb.test.txt"
    _require(path, "ptb")
    return [line[1:] if line.startswith(" ") else line for line in path.read_text(encoding="utf-8").splitlines()]


def _c4_local(local_dir: Path, hub_file: str, dataset: str) -> list[str]:
    """C4 documents from a local copy of ``hub_file`` (``.json.gz``, ``.jsonl`` or a ``.head*`` cut)."""
    stem = Path(hub_file).name.removesuffix(".json.gz")
    folder = local_dir / "c4"
    candidates = sorted(folder.glob(stem + "*.json*")) if folder.is_dir() else []
    if not candidates:
        raise DatasetUnavailable(f"{dataset}: no local copy of {hub_file} (looked for {folder}/{stem}*.json[l][.gz])")
    path = candidates[0]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def _require(path: Path, dataset: str) -> None:
    if not path.is_file():
        raise DatasetUnavailable(f"{dataset}: local file {path} not found")


# ---- rows: hub ----------------------------------------------------------------------------


def _hub(dataset: str, *args, column: str, **kwargs) -> list[str]:
    """Rows of one column from the hub; any failure (offline, renamed) becomes DatasetUnavailable."""
    try:
        from datasets import load_dataset

        return list(load_dataset(*args, **kwargs)[column])
    except Exception as err:  # offline, missing config, removed loading script ...
        where = " ".join(str(a) for a in args)
        raise DatasetUnavailable(f"{dataset}: could not load {where} from the hub ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err


def eval_rows(name: str, local_dir: str | None) -> list[str]:
    """The rows of evaluation dataset ``name``, from ``local_dir`` when set, else the hub."""
    if local_dir:
        folder = Path(local_dir)
        if name == "wikitext2":
            return wikitext2_rows_local(folder)
        if name == "ptb":
            return ptb_rows_local(folder)
        return _c4_local(folder, C4_VALIDATION, "c4")[:C4_EVAL_DOCS]
    if name == "wikitext2":
        return _hub(name, "Salesforce/wikitext", "wikitext-2-raw-v1", split="test", column="text")
    if name == "ptb":
        # The original `ptb_text_only` is a loading script that current `datasets` refuses;
        # the hub's Parquet conversion of the same data has identical rows.
        return _hub(name, "ptb-text-only/ptb_text_only", split="test", revision="refs/convert/parquet", column="sentence")
    return _hub(name, "allenai/c4", data_files={"validation": C4_VALIDATION}, split="validation", column="text")[:C4_EVAL_DOCS]


def eval_text(name: str, local_dir: str | None) -> str:
    """The joined test text of ``name`` exactly as the SparseGPT/Wanda/SparseLLM protocol builds it."""
    rows = eval_rows(check_dataset_names([name])[0], local_dir)
    return ("\n\n" if name == "wikitext2" else " ").join(rows)


def calibration_documents(local_dir: str | None) -> list[str]:
    """The C4 train shard 00000 documents (locally: the copy under ``c4/``, possibly a head)."""
    if local_dir:
        return _c4_local(Path(local_dir), C4_TRAIN, "c4 (calibration)")
    return _hub("c4 (calibration)", "allenai/c4", data_files={"train": C4_TRAIN}, split="train", column="text")


# ---- tokenization, cached ---------------------------------------------------------------


def _cached(cache_dir: str | None, key: dict, build):
    """Return ``build()``, memoized on disk under a hash of ``key`` (atomic write)."""
    if not cache_dir:
        return build()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir).expanduser() / "tokens" / f"{key['kind']}-{digest}.pt"
    if path.exists():
        return torch.load(path)
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{random.getrandbits(32)}")
    torch.save(value, tmp)
    tmp.replace(path)
    return value


def tokenizer_id(tokenizer) -> str:
    """A short fingerprint of a tokenizer, for cache keys."""
    probe = tokenizer("Pruning 123 lang\u00fcage models\n\n").input_ids
    return f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}:{probe}"


def eval_tokens(name: str, tokenizer, local_dir: str | None, seqlen: int, cache_dir: str | None = None) -> torch.Tensor:
    """Token ids (1 x n) of the test text; C4 truncated to exactly 256 windows of ``seqlen``."""

    def build():
        ids = torch.tensor([tokenizer(eval_text(name, local_dir)).input_ids], dtype=torch.long)
        return ids[:, : C4_EVAL_WINDOWS * seqlen] if name == "c4" else ids

    key = {"kind": f"eval-{name}", "source": str(local_dir or "hub"), "tok": tokenizer_id(tokenizer),
           "seqlen": seqlen if name == "c4" else None}
    return _cached(cache_dir, key, build)


def sample_windows(documents: list[str], tokenizer, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """SparseGPT's calibration sampler: ``nsamples`` windows of ``seqlen`` tokens (n x seqlen)."""
    rng = random.Random(seed)
    windows = []
    for _ in range(nsamples):
        for _attempt in range(100_000):
            ids = tokenizer(documents[rng.randint(0, len(documents) - 1)]).input_ids
            if len(ids) > seqlen:
                break
        else:
            raise DatasetUnavailable(f"calibration: no document longer than {seqlen} tokens among {len(documents)}")
        start = rng.randint(0, len(ids) - seqlen - 1)
        windows.append(ids[start : start + seqlen])
    return torch.tensor(windows, dtype=torch.long)


def calibration_tokens(tokenizer, local_dir: str | None, nsamples: int, seqlen: int, seed: int,
                       cache_dir: str | None = None) -> torch.Tensor:
    """Calibration windows (nsamples x seqlen) from C4, cached by everything that changes them."""
    key = {"kind": "calib-c4", "source": str(local_dir or "hub"), "tok": tokenizer_id(tokenizer),
           "n": nsamples, "seqlen": seqlen, "seed": seed}
    return _cached(cache_dir, key, lambda: sample_windows(calibration_documents(local_dir), tokenizer, nsamples, seqlen, seed))
