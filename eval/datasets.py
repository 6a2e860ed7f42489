"""Evaluation text and calibration windows, from the hub or from a local folder.

Every dataset is declared once, as a :class:`Corpus` in ``CORPORA`` below: where its test and
train splits lie (a file of ``data.local_dir``, a folder laid out like ``../shared/data``, and the
hub location), how its rows are read and joined into the protocol's text (docs/methods.md,
"Perplexity"), and the metric it is scored with. Adding a dataset is one entry here; evaluation
(``eval.datasets``), calibration (``calib.dataset``), validation and the run id read it. Both
sources give the same rows, hence the same text:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .metrics import PPL, Metric

C4_VALIDATION = "en/c4-validation.00000-of-00008.json.gz"
C4_TRAIN = "en/c4-train.00000-of-01024.json.gz"

log = logging.getLogger(__name__)


class DatasetUnavailable(RuntimeError):
    """The dataset cannot be loaded here; the message is one line naming it and where we looked."""


# ---- how rows are read from a local file --------------------------------------------------


def wikitext2_rows(path: Path) -> list[str]:
    """Hub rows from ``wiki.*.raw``: a line ``l`` is the row ``l + "\\n"``, a blank line ``""``."""
    return [line + "\n" if line.strip() else "" for line in path.read_text(encoding="utf-8").splitlines()]


def ptb_rows(path: Path) -> list[str]:
    """Hub ``sentence`` rows from ``ptb.*.txt``: the hub builder ``strip()``s each line on both
    sides (the files carry one leading and one trailing space), so we do too."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def json_lines_text(path: Path) -> list[str]:
    """The ``text`` field of every line of a JSON-lines file, gzipped or not (C4 shards)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


# ---- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Where one split of a corpus lies: a file of ``data.local_dir`` and its hub location."""

    local: str                 # path in data.local_dir; for a shard (``shard=True``) the name without suffix
    hub_split: str             # the hub's split name
    hub_file: str | None = None  # a data file of the hub repo (C4 shards), else the config's split
    shard: bool = False        # local copy may be .json.gz, .jsonl or a .head* cut of the shard


@dataclass(frozen=True)
class Corpus:
    """One text dataset, declared once (see the module docstring)."""

    name: str                  # the value of eval.datasets / calib.dataset, and of metrics.csv's dataset column
    title: str                 # how the report names it
    splits: dict[str, Split]   # "test" (evaluation) and "train" (calibration)
    read_local: Callable[[Path], list[str]]
    separator: str             # rows join into the protocol's text with this
    hub_id: str
    hub_config: str | None = None
    hub_column: str = "text"
    hub_extra: dict = field(default_factory=dict)
    strip_hub_rows: bool = False  # the hub rows carry the spaces the local builder strips
    documents: bool = False    # calibration samples whole documents (C4), not windows of one text
    eval_documents: int | None = None  # evaluation reads only the first documents (C4: 1,100)
    eval_windows: int | None = None    # and keeps exactly this many windows (C4: 256)
    metric: Metric = PPL

    def local_file(self, local_dir: str | os.PathLike, split: str) -> Path | None:
        """The local copy of ``split``, or None when the folder lacks it."""
        where = self.splits[split]
        if where.shard:
            folder = Path(local_dir) / Path(where.local).parent
            found = sorted(folder.glob(Path(where.local).name + "*.json*")) if folder.is_dir() else []
            return found[0] if found else None
        path = Path(local_dir) / where.local
        return path if path.is_file() else None

    def looked_for(self, split: str) -> str:
        """What :meth:`local_file` looks for, relative to ``data.local_dir``."""
        where = self.splits[split]
        return f"{where.local}*.json[l][.gz]" if where.shard else where.local

    def source(self, local_dir: str | None, split: str) -> dict:
        """Where ``split`` comes from: the hub location, or the local file and its sha256
        (``sha256`` None when the file is missing). This enters the run id."""
        where = self.splits[split]
        if local_dir:
            return local_source(local_dir, self.local_file(local_dir, split), self.looked_for(split))
        if where.hub_file:
            found = {"source": "hub", "id": self.hub_id, "file": where.hub_file}
            if split == "test" and self.eval_documents:
                found["documents"] = self.eval_documents
            return found
        return {"source": "hub", "id": self.hub_id, "config": self.hub_config, "split": where.hub_split,
                **self.hub_extra}

    def rows(self, local_dir: str | None, split: str, label: str | None = None) -> list[str]:
        """The rows of ``split`` from ``local_dir`` when set, else from the hub."""
        label = label or self.name
        where = self.splits[split]
        if local_dir:
            path = self.local_file(local_dir, split)
            if path is None:
                raise DatasetUnavailable(f"{label}: no local copy in {local_dir} "
                                         f"(looked for {self.looked_for(split)})")
            rows = self.read_local(path)
        elif where.hub_file:
            rows = _hub(label, self.hub_id, data_files={where.hub_split: where.hub_file}, split=where.hub_split,
                        column=self.hub_column)
        else:
            args = (self.hub_id, self.hub_config) if self.hub_config else (self.hub_id,)
            rows = _hub(label, *args, split=where.hub_split, column=self.hub_column, **self.hub_extra)
            rows = [r.strip() for r in rows] if self.strip_hub_rows else rows
        return rows[: self.eval_documents] if split == "test" and self.eval_documents else rows

    def join(self, rows: list[str]) -> str:
        """The protocol's text from ``rows``."""
        return self.separator.join(rows)


CORPORA = {c.name: c for c in (
    Corpus("wikitext2", "WikiText-2", read_local=wikitext2_rows, separator="\n\n",
           splits={"test": Split("wikitext2/wiki.test.raw", "test"),
                   "train": Split("wikitext2/wiki.train.raw", "train")},
           hub_id="Salesforce/wikitext", hub_config="wikitext-2-raw-v1"),
    # The original `ptb_text_only` is a loading script that current `datasets` refuses; the
    # hub's Parquet conversion of the same data has identical rows.
    Corpus("ptb", "PTB", read_local=ptb_rows, separator=" ",
           splits={"test": Split("ptb/ptb.test.txt", "test"), "train": Split("ptb/ptb.train.txt", "train")},
           hub_id="ptb-text-only/ptb_text_only", hub_column="sentence",
           hub_extra={"revision": "refs/convert/parquet"}, strip_hub_rows=True),
    Corpus("c4", "C4", read_local=json_lines_text, separator=" ", documents=True,
           splits={"test": Split("c4/" + Path(C4_VALIDATION).name.removesuffix(".json.gz"), "validation",
                                 hub_file=C4_VALIDATION, shard=True),
                   "train": Split("c4/" + Path(C4_TRAIN).name.removesuffix(".json.gz"), "train",
                                  hub_file=C4_TRAIN, shard=True)},
           hub_id="allenai/c4", eval_documents=1100, eval_windows=256),
)}


def corpus(name: str, setting: str = "eval.datasets") -> Corpus:
    """The declared corpus ``name``; an unknown name is a one-line error naming the setting."""
    if name not in CORPORA:
        raise ValueError(f"{setting} has unknown {name!r}: accepted {list(CORPORA)}")
    return CORPORA[name]


def check_dataset_names(names) -> list[str]:
    """Validate ``eval.datasets``; raise naming the bad value and the accepted names."""
    names = list(names)
    bad = [n for n in names if n not in CORPORA]
    if bad:
        raise ValueError(f"eval.datasets has unknown {bad}: accepted {list(CORPORA)} (zero-shot tasks go in "
                         "eval.zeroshot.tasks)")
    return names


def check_local_dir(local_dir, setting: str = "data.local_dir") -> None:
    """``data.local_dir`` (when set) is a folder laid out like ``../shared/data``: it exists, is a
    folder, and holds at least one split of a corpus or a ``zeroshot/`` folder. Raises ValueError
    in one line otherwise. (A folder missing only some files is fine: those datasets are reported
    ``unavailable``, or, for calibration, rejected by ``calib.dataset``.)"""
    if local_dir is None or local_dir == "":
        return
    folder = Path(str(local_dir))  # read as the run reads it (no ~ expansion)
    accepted = "accepted a folder laid out like shared/data (docs/data.md), or null for the hub"
    if not folder.exists():
        raise ValueError(f"{setting}={str(local_dir)!r} does not exist: {accepted}")
    if not folder.is_dir():
        raise ValueError(f"{setting}={str(local_dir)!r} is a file, not a folder: {accepted}")
    if (folder / "zeroshot").is_dir():
        return
    if any(c.local_file(folder, split) is not None for c in CORPORA.values() for split in c.splits):
        return
    looked = ", ".join(c.looked_for(split) for c in CORPORA.values() for split in c.splits)
    raise ValueError(f"{setting}={str(local_dir)!r} holds none of the data files (looked for {looked}, "
                     f"zeroshot/): {accepted}")


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
    """Where evaluation set ``name`` comes from (:meth:`Corpus.source` of its test split)."""
    return corpus(name).source(local_dir, "test")


def eval_rows(name: str, local_dir: str | None) -> list[str]:
    """The rows of evaluation dataset ``name``, from ``local_dir`` when set, else the hub."""
    return corpus(name).rows(local_dir, "test")


def eval_text(name: str, local_dir: str | None) -> str:
    """The joined test text of ``name`` exactly as the SparseGPT/Wanda/SparseLLM protocol builds it."""
    return corpus(name).join(eval_rows(name, local_dir))


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
    """Token ids (1 x n) of the test text; C4 truncated to exactly ``eval_windows`` (256) windows of ``seqlen``."""

    def build():
        ids = torch.tensor([tokenizer(eval_text(name, local_dir)).input_ids], dtype=torch.long)
        windows = corpus(name).eval_windows
        return ids[:, : windows * seqlen] if windows else ids

    key = {"kind": f"eval-{name}", "source": eval_source(name, local_dir), "tok": tokenizer_id(tokenizer),
           "seqlen": seqlen if corpus(name).eval_windows else None}
    key["source"].pop("path", None)  # content, not location
    return cached(cache_dir, key, build)
