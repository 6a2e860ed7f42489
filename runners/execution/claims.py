"""Claims: so that concurrent sweeps (one machine or many sharing one filesystem) never compute a run twice.

Before computing a run, a job takes a claim on its folder: the file ``<run folder>/.claim``
holding the holder's host, pid, start time and a random token. The file is created atomically
(written under a temporary name, then hard-linked to ``.claim``, which fails when the name
exists, also on NFS where ``O_EXCL`` has not always been reliable), so exactly one job can
hold it and a reader never sees it half-written. While held, a daemon thread touches the file
every ``HEARTBEAT_SECONDS``. The claim is deleted when the run is written or fails.

A claim is *stale* when its holder is gone: on this host, its pid is not alive; on any host,
its heartbeat (the file's mtime) is older than ``STALE_SECONDS``, so a node that died is
detected without trusting its pids. A stale claim is taken over atomically: of several takers,
only the one that creates ``.claim.takeover-<token of the stale claim>`` (an exclusive create)
may delete it, and only if ``.claim`` still is that claim; then every taker competes for a new
claim the normal way, so exactly one wins (``_take_over``).

What is guaranteed for jobs on different nodes sharing one filesystem (NFS included): at most
one live job holds a run's claim, so a run is computed once however many jobs start it; the
others log ``claimed by another job`` and end as ``skipped:claimed`` (the dense baseline,
which every job of a model and protocol checks, the same way). This rests on ``link`` being
atomic on the file server (NFSv2 onwards; a lost reply is caught by the link count), not on
``O_EXCL`` or ``flock``/``fcntl`` locks, which NFS has not always honoured. What is assumed:
the nodes' clocks agree to well under ``STALE_SECONDS`` (a heartbeat is the file's mtime, set
by the server, compared with the reader's clock), and a live holder is never silent that long
(a node frozen for 10 minutes can have its claim taken over and the run computed twice; the
store's atomic renames keep either result whole). A job killed with its claim held leaves the
run incomplete: the next sweep takes the claim over (at once on the same host, whose pids can
be checked; after ``STALE_SECONDS`` from another host) and computes it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CLAIM_NAME = ".claim"
HEARTBEAT_SECONDS = 30.0  # how often a holder touches its claim
STALE_SECONDS = 600.0  # a claim untouched this long is stale on any host (10 min >> heartbeat, tolerates clock skew)
TAKEOVER_SECONDS = 60.0  # a takeover takes milliseconds: a marker this old was left by a killed taker


def hostname() -> str:
    """This machine's name as used in claims and temporary file names (filename-safe)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()) or "host"


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host (a pid of another host means nothing here)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:  # beyond any pid this system can have
        return False
    return True


def read_claim(folder: Path) -> dict | None:
    """The claim on ``folder`` (``host, pid, started, token`` plus ``age``, seconds since its last
    heartbeat; only ``age`` when the file is unreadable), or None when there is no claim."""
    path = Path(folder) / CLAIM_NAME
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    return {**read_claim_file(path), "age": age}


def read_claim_file(path: Path) -> dict:
    """The JSON object in a claim file (``{}`` when missing or unreadable)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def is_stale(claim: dict) -> bool:
    """True when the holder of ``claim`` (as read by ``read_claim``) is gone and the claim may be taken over."""
    if claim.get("age", 0.0) > STALE_SECONDS:
        return True
    pid = claim.get("pid")
    # Only this host's pids can be checked; an unreadable claim waits for the heartbeat timeout.
    return claim.get("host") == hostname() and isinstance(pid, int) and not pid_alive(pid)


def describe(claim: dict) -> str:
    """One-line text of a claim: holder, start, last heartbeat."""
    return (f"host {claim.get('host', '?')} pid {claim.get('pid', '?')} since {claim.get('started', '?')}, "
            f"heartbeat {claim.get('age', 0.0):.0f}s ago")


@dataclass
class Claim:
    """A held claim on one run folder; ``release()`` deletes it (also usable as a context manager)."""

    folder: Path
    token: str
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def path(self) -> Path:
        return self.folder / CLAIM_NAME

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:  # taken over after all (we were silent too long): nothing to refresh
                pass

    def start(self) -> "Claim":
        threading.Thread(target=self._heartbeat, name=f"claim-heartbeat-{self.folder.name}", daemon=True).start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and delete the claim file if it is still ours."""
        self._stop.set()
        held = read_claim(self.folder)
        if held is not None and held.get("token") == self.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(folder: Path, token: str) -> bool:
    """Atomically create ``folder/.claim`` with our details; False when a claim is already there."""
    body = json.dumps({"host": hostname(), "pid": os.getpid(), "token": token,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"
    tmp = folder / f"{CLAIM_NAME}.tmp{os.getpid()}.{hostname()}"
    tmp.write_text(body, encoding="utf-8")
    try:
        os.link(tmp, folder / CLAIM_NAME)
        return True
    except FileExistsError:
        # On NFS a link whose reply was lost is retried by the client and then fails with EEXIST
        # although the first attempt made it; the temporary file's link count tells (open(2)).
        return _linked(tmp)
    except OSError:  # a filesystem without hard links: exclusive create instead
        if _linked(tmp):
            return True
        try:
            fd = os.open(folder / CLAIM_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _linked(tmp: Path) -> bool:
    """True when ``tmp`` has a second name (the link to ``.claim`` succeeded after all)."""
    try:
        return os.stat(tmp).st_nlink == 2
    except OSError:
        return False


def _take_over(folder: Path, stale: dict) -> None:
    """Remove the stale claim ``stale`` from ``folder`` unless another taker got there first.

    The right to remove claim ``T`` is the file ``.claim.takeover-T``, created exclusively, so
    only one taker holds it at a time. Its holder deletes ``.claim`` only if that still is ``T``
    (a slow taker finds a faster one's fresh claim there and leaves it); then every taker
    competes for a new claim the normal way, so exactly one wins."""
    token = re.sub(r"[^0-9A-Za-z]", "", str(stale.get("token", "")))
    marker = folder / f"{CLAIM_NAME}.takeover-{token}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:  # another taker is at it; a marker left by a killed taker expires
        try:
            if time.time() - marker.stat().st_mtime > TAKEOVER_SECONDS:
                marker.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return
    try:
        if read_claim_file(folder / CLAIM_NAME).get("token") == stale.get("token"):
            log.warning("run %s: taking over a stale claim (%s)", folder.name, describe(stale))
            (folder / CLAIM_NAME).unlink(missing_ok=True)
    finally:
        marker.unlink(missing_ok=True)


def remove_if_stale(folder: str | os.PathLike) -> None:
    """Delete a stale claim left on a run that is done (its job was killed between writing and releasing)."""
    held = read_claim(Path(folder))
    if held is not None and is_stale(held):
        _take_over(Path(folder), held)


def acquire(folder: str | os.PathLike) -> Claim | None:
    """Claim ``folder`` for this process: a held ``Claim`` (its heartbeat running), or None when a
    live job elsewhere holds it. A stale claim is taken over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    for _ in range(5):  # each pass either wins, sees a live holder, or removes a stale claim
        if _create(folder, token):
            return Claim(folder, token).start()
        held = read_claim(folder)
        if held is None:
            continue  # released in between: try again
        if not is_stale(held):
            return None
        _take_over(folder, held)
    return None
