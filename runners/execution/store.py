"""The results store: one folder per run, written atomically, checked whenever it is read.

``<results.dir>/runs/<run_id>/`` holds

* ``metrics.csv``: long format, one row per dataset/task x metric (``model, pruner, sparsity,
  layers, ..., dataset, metric, value, status``);
* ``layers.csv``: one row per pruned matrix (name, shape, measured sparsity, seconds);
* ``blocks.csv``: per-block diagnostics (relative output error, objective per iteration);
* ``manifest.json``: provenance (resolved config, versions, git revision, hardware, seeds,
  times, peak memory), the run's status, its ``run_id``, the writer (host, pid) and the sha256
  of every table (``metrics_sha256``, ``sha256``). It is written last: a run folder without it
  is incomplete (killed) and is redone on the next sweep.
* ``.claim`` while a job computes the run (``runners.execution.claims``).

Every file is written to a temporary name in the same folder and renamed, so a crash or a kill
never leaves a half-written file behind and nothing already written is lost. ``check_run``
tells a finished run from a killed one and from a damaged one (a file changed or broken after
it was written); a damaged run is skipped by every reader with one warning and redone by the
next sweep. ``python -m runners.execution.store check [results.dir=PATH]`` lists what is not in order.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from runners.execution import claims
from runners.tool_config import Results, Tool, parse

log = logging.getLogger(__name__)

COMPLETE, INCOMPLETE, DAMAGED = "complete", "incomplete", "damaged"
ALWAYS_RETRY = ("unavailable",)  # tried again on every sweep: the data may be there now
FAILED = ("error", "oom", "nan")  # done, unless the sweep sets retry_failed=true
SPEED = "speed.csv"  # measure.speed=true: the run's tokens/s, memory and bytes on disk (eval/speed/)
TABLES = ("metrics.csv", "layers.csv", "blocks.csv", SPEED)
METRIC_KEYS = ("run_id", "dataset", "metric", "value", "status")  # what every metrics.csv must have
TEMP_NAME = re.compile(r"^\..+\.tmp(?P<pid>\d+)(?:\.(?P<host>[^/]+))?$")  # .<name>.tmp<pid>[.<host>]
TEMP_MAX_AGE = claims.STALE_SECONDS  # a temporary file this old is a leftover whoever wrote it
_warned: set[tuple[str, str]] = set()  # damaged runs already reported by this process


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename;
    return the sha256 of ``data``. On any failure the temporary file is removed and ``path`` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and host in the name: concurrent writers never share one, and a leftover can be told
    # from a file that a live writer is still filling (remove_temp_files).
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{claims.hostname()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sha256(data)


def atomic_write_text(path: Path, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the sha256 of the bytes written."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> str:
    """Atomically write ``rows`` as CSV (an empty table still gets its header); return its sha256."""
    return atomic_write_text(path, pd.DataFrame(rows, columns=columns).to_csv(index=False))


def write_json(path: Path, value: dict) -> str:
    """Atomically write ``value`` as indented JSON; return its sha256."""
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def run_dir(results_dir: str | os.PathLike, run_id: str) -> Path:
    """Folder of one run."""
    return Path(results_dir) / "runs" / run_id


def finish_run(folder: Path, rows: list[dict], columns: list[str], manifest: dict) -> None:
    """Write a run's ``metrics.csv``, then its ``manifest.json`` (last) recording the run id, the
    writer, and the sha256 of metrics.csv and of the other tables (``manifest["sha256"]``, filled
    by the caller for layers.csv/blocks.csv as they were written)."""
    digest = write_csv(folder / "metrics.csv", rows, columns)
    sums = {**(manifest.get("sha256") or {}), "metrics.csv": digest}
    write_json(folder / "manifest.json", {**manifest, "run_id": folder.name, "metrics_sha256": digest,
                                          "sha256": sums, "writer": {"host": claims.hostname(), "pid": os.getpid()}})


def clear_run(folder: Path) -> None:
    """Delete a run's files before it is computed again (the manifest first: a kill midway leaves
    an incomplete run, never old tables under a manifest)."""
    for name in ("manifest.json", *TABLES):
        (Path(folder) / name).unlink(missing_ok=True)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _parse_metrics(data: bytes, folder: Path) -> tuple[pd.DataFrame | None, str]:
    """metrics.csv as a table, or None and why it is not one."""
    if not data.strip():
        return None, "metrics.csv: empty"
    try:
        frame = pd.read_csv(io.StringIO(data.decode("utf-8")), keep_default_na=False, na_values=[""])
    except UnicodeDecodeError:
        return None, "metrics.csv: not text (binary content)"
    except Exception as err:  # pandas raises many kinds on garbage; a reader must never crash on one
        return None, f"metrics.csv: not a CSV table ({str(err).splitlines()[0][:80]})"
    missing = [c for c in METRIC_KEYS if c not in frame.columns]
    if missing:
        return None, f"metrics.csv: no column {', '.join(missing)}"
    if frame.empty:
        return None, "metrics.csv: no rows"
    ids = set(frame["run_id"].astype(str))
    if ids != {folder.name}:
        other = sorted(ids - {folder.name}) or ["(blank)"]
        return None, f"metrics.csv: rows of run {other[0]}, not {folder.name}"
    return frame, ""


def _check(folder: Path) -> tuple[str, str, dict | None, pd.DataFrame | None]:
    """``(state, reason, manifest, metrics)``: see ``check_run``; manifest and metrics only when complete."""
    data = _read_bytes(folder / "manifest.json")
    if data is None:
        return INCOMPLETE, "no manifest.json (killed, or still running)", None, None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return DAMAGED, "manifest.json: not text (binary content)", None, None
    except json.JSONDecodeError as err:
        return DAMAGED, f"manifest.json: not valid JSON ({err.msg} at byte {err.pos}; truncated?)", None, None
    if not isinstance(manifest, dict):
        return DAMAGED, f"manifest.json: holds a JSON {type(manifest).__name__}, not an object", None, None
    if not isinstance(manifest.get("status"), str):
        return DAMAGED, "manifest.json: no status", None, None
    if "run_id" in manifest and manifest["run_id"] != folder.name:  # runs before run_id was recorded pass
        return DAMAGED, f"manifest.json: names run {manifest['run_id']}, not its folder {folder.name}", None, None
    metrics = _read_bytes(folder / "metrics.csv")
    if metrics is None:
        return DAMAGED, "metrics.csv: missing (manifest.json is there)", None, None
    frame, why = _parse_metrics(metrics, folder)
    if frame is None:
        return DAMAGED, why, None, None
    sums = manifest.get("sha256") or {}
    if not isinstance(sums, dict):
        return DAMAGED, "manifest.json: sha256 is not an object", None, None
    sums = {**sums, **({"metrics.csv": manifest["metrics_sha256"]} if "metrics_sha256" in manifest else {})}
    for name, digest in sums.items():
        if name not in TABLES:
            continue
        got = metrics if name == "metrics.csv" else _read_bytes(folder / name)
        if got is None:
            return DAMAGED, f"{name}: missing (listed in manifest.json)", None, None
        if sha256(got) != digest:
            return DAMAGED, f"{name}: sha256 does not match manifest.json (changed or truncated)", None, None
    return COMPLETE, "", manifest, frame


def check_run(folder: str | os.PathLike) -> tuple[str, str]:
    """``(state, reason)`` of a run folder: ``complete`` (reason ""), ``incomplete`` (no manifest:
    killed or still running) or ``damaged`` (reason: one line naming the file and what is wrong).
    Complete means: manifest.json is a JSON object with a status, naming this folder's run id;
    metrics.csv parses, has rows, every row of this run id; and every table matches the sha256
    the manifest recorded (older manifests without run id or checksums pass on the rest)."""
    state, reason, _, _ = _check(Path(folder))
    return state, reason


def warn_damaged(folder: Path, reason: str, action: str = "skipped") -> None:
    """Log a damaged run in one line, once per process (the report reads the store twice)."""
    if (str(folder), reason) not in _warned:
        _warned.add((str(folder), reason))
        log.warning("damaged run %s: %s; %s", Path(folder).name, reason, action)


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a complete run, or None when the run never finished or is damaged."""
    return _check(Path(folder))[2]


def is_done(folder: Path, retry_failed: bool = False) -> bool:
    """True when the run need not be computed again: complete, with a final status. ``unavailable``
    is always retried; ``error``, ``oom`` and ``nan`` only with ``retry_failed``."""
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    status = manifest["status"]
    return status not in ALWAYS_RETRY and not (retry_failed and status in FAILED)


def is_complete(folder: Path) -> bool:
    """True when the run is done under the default rule (``is_done`` without retry_failed)."""
    return is_done(folder)


def load_metrics(results_dir: str | os.PathLike) -> pd.DataFrame:
    """All complete runs' metric rows in one long table (empty table if there are none); a damaged
    run is left out with one warning."""
    frames = []
    for folder in sorted((Path(results_dir) / "runs").glob("*")):
        if not folder.is_dir():
            continue
        state, reason, _, frame = _check(folder)
        if state == DAMAGED:
            warn_damaged(folder, reason)
        elif state == COMPLETE:
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _temp_files(results_dir: Path) -> list[Path]:
    """Temporary files of atomic writes and claims anywhere the harness writes in the store."""
    places = [results_dir, *sorted((results_dir / "runs").glob("*")), results_dir / "report",
              *sorted((results_dir / "report").glob("*"))]
    return [p for d in places if d.is_dir() for p in sorted(d.glob(".*")) if TEMP_NAME.match(p.name)]


def leftover(path: Path) -> bool:
    """True when a temporary file is a leftover: its writer (this host) is dead, or it is old.
    A live writer's file, here or on another host, is not."""
    match = TEMP_NAME.match(path.name)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > TEMP_MAX_AGE:
        return True
    host = match["host"] if match else None
    return bool(match) and host in (None, claims.hostname()) and not claims.pid_alive(int(match["pid"]))


def remove_temp_files(results_dir: str | os.PathLike) -> list[Path]:
    """Delete leftover temporary files (kills, a full disk) in the store; return those deleted."""
    removed = []
    for path in _temp_files(Path(results_dir)):
        if leftover(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def problems(results_dir: str | os.PathLike) -> list[str]:
    """One line per run that is not in order (damaged, incomplete, claimed, stale claim) and per
    leftover temporary file; empty for a clean store."""
    lines = []
    for folder in sorted((Path(results_dir) / "runs").glob("*")):
        if not folder.is_dir():
            continue
        state, reason = check_run(folder)
        claim = claims.read_claim(folder)
        if claim is not None:
            kind = "stale" if claims.is_stale(claim) else "claimed"
            what = f"{state} ({reason})" if reason else state
            lines.append(f"{kind:<10} {folder.name}: {what}, claim by {claims.describe(claim)}")
        elif state != COMPLETE:
            lines.append(f"{state:<10} {folder.name}: {reason}")
    lines += [f"{'temp':<10} {p}: leftover temporary file" for p in _temp_files(Path(results_dir)) if leftover(p)]
    return lines


@dataclass
class CheckSettings:
    """``python -m runners.execution.store check``'s settings (``--help`` lists them)."""

    results: Results = field(default_factory=Results)


TOOL = Tool("python -m runners.execution.store", CheckSettings,
            "Lists every run of the store that is not in order (damaged, incomplete, claimed, stale claim) "
            "and every leftover temporary file, one line each; exit code 0 when the store is clean, 1 otherwise.",
            ("python -m runners.execution.store check results.dir=results",), words=("check",))


def main(argv: list[str]) -> int:
    """``python -m runners.execution.store check [results.dir=PATH]``: print the store's problems; 0 when clean
    (``TOOL``'s settings, read through Hydra: runners/tool_config.py; a bad one exits 2)."""
    results_dir = parse(TOOL, argv).results.dir
    lines = problems(results_dir)
    for line in lines:
        print(line)
    total = sum(1 for p in (Path(results_dir) / "runs").glob("*") if p.is_dir())
    print(f"{total} runs in {Path(results_dir) / 'runs'}: " + ("clean" if not lines else f"{len(lines)} problems"))
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
