"""The results store: one folder per run, written atomically, read by every report.

``<results.dir>/runs/<run_id>/`` holds

* ``metrics.csv``: long format, one row per dataset/task x metric (``model, pruner, sparsity,
  layers, ..., dataset, metric, value, status``);
* ``layers.csv``: one row per pruned matrix (name, shape, measured sparsity, seconds);
* ``blocks.csv``: per-block diagnostics (relative output error, objective per iteration);
* ``manifest.json``: provenance (resolved config, versions, git revision, hardware, seeds,
  times, peak memory) and the run's status. It is written last: a run folder without it is
  incomplete (killed) and is redone on the next sweep.

Every file is written to a temporary name and renamed, so a crash or a kill never leaves a
half-written file behind and nothing already written is lost.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

RETRY_STATUSES = ("error", "unavailable")  # tried again on the next sweep (the data may be there now)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Atomically write ``rows`` as CSV (an empty table still gets its header)."""
    atomic_write_text(path, pd.DataFrame(rows, columns=columns).to_csv(index=False))


def write_json(path: Path, value: dict) -> None:
    """Atomically write ``value`` as indented JSON."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def run_dir(results_dir: str | os.PathLike, run_id: str) -> Path:
    """Folder of one run."""
    return Path(results_dir) / "runs" / run_id


def read_manifest(folder: Path) -> dict | None:
    """The run's manifest, or None when the run never finished."""
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_complete(folder: Path) -> bool:
    """True when the run finished with a final status (ok, nan, oom, ...), so it is skipped."""
    manifest = read_manifest(folder)
    return bool(manifest) and manifest.get("status") not in RETRY_STATUSES and (folder / "metrics.csv").exists()


def load_metrics(results_dir: str | os.PathLike) -> pd.DataFrame:
    """All complete runs' metric rows in one long table (empty table if there are none)."""
    frames = []
    for folder in sorted((Path(results_dir) / "runs").glob("*")):
        if read_manifest(folder) is not None and (folder / "metrics.csv").exists():
            frames.append(pd.read_csv(folder / "metrics.csv", keep_default_na=False, na_values=[""]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
