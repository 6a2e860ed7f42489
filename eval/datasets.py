"""Evaluation text and calibration windows, from the hub or from a local folder.

Every dataset has one text construction (methods.md, "Perplexity") applied to rows that come
either from the hub or from ``data.local_dir`` (a folder laid out like ``../shared/data``);
both sources give the same rows, hence the same text:

* ``wikitext2``: ``wikitext-2-raw-v1`` test rows joined with ``"\\n\\n"``;
* ``ptb``: ``ptb_text_only`` test ``sentence`` rows joined with ``" "``;
* ``c4``: the first 1,100 documents of ``en/c4-validation.00000-of-00008.json.gz`` joined with
  ``" "`` (the caller keeps exactly 256 windows).

Calibration windows are drawn in ``eval/calibration.py``. A dataset that cannot be had raises
``DatasetUnavailable`` with one line naming it and where it looked. ``eval_source`` names the
data a run reads (hub ids, or the local files with a content fingerprint) so that it can enter
the run id: a hub run and a local run, or runs on two different local copies, never collide.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import random
from pathlib import Path

import torch

EVAL_DATASETS = ("wikitext2", "ptb", "c4")
C4_VALIDATION = "en/c4-validation.00000-of-00008.json.gz"
C4_TRAIN = "en/c4-train.00000-of-01024.json.gz"
C4_EVAL_DOCS = 1100
C4_EVAL_WINDOWS = 256
# Where each evaluation set lives in a local folder laid out like ../shared/data.
LOCAL_TEST_FILES = {"wikitext2": "wikitext2/wiki.test.raw", "ptb": "ptb/ptb.test.txt"}

log = logging.getLogger(__name__)


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


def wikitext2_rows_local(local_dir: Path, file: str = LOCAL_TEST_FILES["wikitext2"]) -> list[str]:
    """Hub rows from ``wiki.*.raw``: a line ``l`` is the row ``l + "\\n"``, a blank line ``""``."""
    path = Path(local_dir) / file
    _require(path, "wikitext2")
    return [line + "\n" if line.strip() else "" for line in path.read_text(encoding="utf-8").splitlines()]


def ptb_rows_local(local_dir: Path, file: str = LOCAL_TEST_FILES["ptb"]) -> list[str]:
    """Hub ``sentence`` rows from ``ptb.*.txt``: the hub builder ``strip()``s each line on both
    sides (the files carry one leading and one trailing space), so we do too."""
    path = Path(local_dir) / file
    _require(path, "ptb")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def c4_local_file(local_dir: Path, hub_file: str) -> Path | None:
    """The local copy of C4 ``hub_file`` (``.json.gz``, ``.jsonl`` or a ``.head*`` cut), or None."""
    folder = Path(local_dir) / "c4"
    candidates = sorted(folder.glob(c4_stem(hub_file) + "*.json*")) if folder.is_dir() else []
    return candidates[0] if candidates else None


def c4_stem(hub_file: str) -> str:
    """``en/c4-train.00000-of-01024.json.gz`` -> ``c4-train.00000-of-01024``."""
    return Path(hub_file).name.removesuffix(".json.gz")


def _c4_local(local_dir: Path, hub_file: str, dataset: str) -> list[str]:
    """C4 documents from the local copy of ``hub_file``."""
    path = c4_local_file(local_dir, hub_file)
    if path is None:
        folder = Path(local_dir) / "c4"
        raise DatasetUnavailable(f"{dataset}: no local copy of {hub_file} (looked for {folder}/{c4_stem(hub_file)}*.json[l][.gz])")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def _require(path: Path, dataset: str) -> None:
    if not path.is_file():
        raise DatasetUnavailable(f"{dataset}: local file {path} not found")


# ---- rows: hub ----------------------------------------------------------------------------


def _hub(dataset: str, *args, column: str, **kwargs) -> list[str]:
    """Rows of one column from the hub; any failure (offline, renamed) becomes DatasetUnavailable.
    An unreachable hub fails in seconds with the setting that fixes it (eval/hub.py)."""
    from .hub import HINT, hub_problem

    problem = hub_problem()
    if problem:
        raise DatasetUnavailable(f"{dataset}: the Hugging Face hub cannot be reached ({problem}); {HINT}")
    try:
        from datasets import load_dataset

        return list(load_dataset(*args, **kwargs)[column])
    except Exception as err:  # offline, missing config, removed loading script ...
        where = " ".join(str(a) for a in args)
        raise DatasetUnavailable(f"{dataset}: could not load {where} from the hub ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err


# Hub locations: (dataset id, config or None, split, column, extra load_dataset arguments).
HUB = {
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "text", {}),
    # The original `ptb_text_only` is a loading script that current `datasets` refuses; the
    # hub's Parquet conversion of the same data has identical rows.
    "ptb": ("ptb-text-only/ptb_text_only", None, "sentence", {"revision": "refs/convert/parquet"}),
}


def hub_rows(name: str, split: str) -> list[str]:
    """Rows of WikiText-2 or PTB ``split`` from the hub (PTB rows stripped, as the builder does)."""
    path, config, column, extra = HUB[name]
    args = (path, config) if config else (path,)
    rows = _hub(name, *args, split=split, column=column, **extra)
    return [r.strip() for r in rows] if name == "ptb" else rows


def join_rows(name: str, rows: list[str]) -> str:
    """The protocol's text: WikiText-2 rows joined with blank lines, the others with a space."""
    return ("\n\n" if name == "wikitext2" else " ").join(rows)


def file_sha256(path: Path) -> str:
    """Content hash of a file, memoized on (path, size, mtime) within the process."""
    stat = Path(path).stat()
    memo = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_MEMO[memo] = digest.hexdigest()
    return _SHA_MEMO[memo]


_SHA_MEMO: dict[tuple, str] = {}


def local_source(local_dir: str | os.PathLike, path: Path | None, looked_for: str) -> dict:
    """Descriptor of one local file a dataset reads: its name in the folder and content hash."""
    if path is None or not Path(path).is_file():
        return {"source": "local", "file": looked_for, "sha256": None}
    return {"source": "local", "file": str(Path(path).relative_to(local_dir)), "sha256": file_sha256(path),
            "path": str(Path(path).resolve())}


def eval_source(name: str, local_dir: str | None) -> dict:
    """Where evaluation set ``name`` comes from: the hub id, or the local file and its sha256
    (``sha256`` None when the file is missing: the dataset will be reported unavailable)."""
    if not local_dir:
        if name == "c4":
            return {"source": "hub", "id": "allenai/c4", "file": C4_VALIDATION, "documents": C4_EVAL_DOCS}
        path, config, _, extra = HUB[name]
        return {"source": "hub", "id": path, "config": config, "split": "test", **extra}
    if name == "c4":
        found = c4_local_file(Path(local_dir), C4_VALIDATION)
        return local_source(local_dir, found, f"c4/{c4_stem(C4_VALIDATION)}*.json[l][.gz]")
    file = LOCAL_TEST_FILES[name]
    return local_source(local_dir, Path(local_dir) / file, file)


def eval_rows(name: str, local_dir: str | None) -> list[str]:
    """The rows of evaluation dataset ``name``, from ``local_dir`` when set, else the hub."""
    if local_dir:
        folder = Path(local_dir)
        if name == "wikitext2":
            return wikitext2_rows_local(folder)
        if name == "ptb":
            return ptb_rows_local(folder)
        return _c4_local(folder, C4_VALIDATION, "c4")[:C4_EVAL_DOCS]
    if name in HUB:
        return hub_rows(name, "test")
    return _hub(name, "allenai/c4", data_files={"validation": C4_VALIDATION}, split="validation", column="text")[:C4_EVAL_DOCS]


def eval_text(name: str, local_dir: str | None) -> str:
    """The joined test text of ``name`` exactly as the SparseGPT/Wanda/SparseLLM protocol builds it."""
    return join_rows(name, eval_rows(check_dataset_names([name])[0], local_dir))


# ---- tokenization, cached ---------------------------------------------------------------


def cached(cache_dir: str | None, key: dict, build):
    """Return ``build()``, memoized on disk under a hash of ``key`` (atomic write).

    ``key`` must name the source by content (``eval_source``), not by folder, so that a data
    file fixed in place is tokenized again. Values are tensors or dicts of tensors and plain
    numbers, loaded with ``weights_only=True``; a cache file that fails to load is deleted and
    rebuilt, with a log line naming it.
    """
    if not cache_dir:
        return build()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = Path(cache_dir).expanduser() / "tokens" / f"{key['kind']}-{digest}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception as err:  # truncated or foreign file: rebuild rather than fail every run
            log.warning("token cache %s is unreadable (%s): deleting and rebuilding it", path, type(err).__name__)
            path.unlink(missing_ok=True)
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

    key = {"kind": f"eval-{name}", "source": eval_source(name, local_dir), "tok": tokenizer_id(tokenizer),
           "seqlen": seqlen if name == "c4" else None}
    key["source"].pop("path", None)  # content, not location
    return cached(cache_dir, key, build)
