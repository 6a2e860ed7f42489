"""Provenance of a run: package versions, the constraints file and how the installed versions
compare with it, git revision and hardware (peak memory: ``core.memory``, re-exported here)."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import re
import platform
import subprocess
from pathlib import Path

import torch

from core.memory import PeakMemory, rss_bytes  # noqa: F401  (the runners read them from here)

PACKAGES = ("torch", "transformers", "datasets", "hydra-core", "omegaconf", "lm_eval", "numpy", "pandas", "gguf")
ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"  # what `make install` installs with (pip install -c constraints.txt)
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)$")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that can change the numbers."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503: ``PyYAML`` = ``pyyaml``, ``lm_eval`` = ``lm-eval``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_constraints(path: str | os.PathLike = CONSTRAINTS) -> dict[str, tuple[str, str]]:
    """The pins of a constraints file: canonical name -> (name as written, version). Only
    ``name==version`` lines, comments and blank lines are accepted (ValueError naming the line)."""
    pins: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: {line!r} is not name==version")
        key = canonical(match["name"])
        if key in pins:
            raise ValueError(f"{path}:{number}: {match['name']} is pinned twice")
        pins[key] = (match["name"], match["version"])
    return pins


def _matches(installed: str, pinned: str) -> bool:
    """pip's ``==``: equal versions, a local label (``+cpu``) of the installed one ignored when the
    pin has none."""
    from packaging.version import InvalidVersion, Version

    try:
        have, want = Version(installed), Version(pinned)
    except InvalidVersion:
        return installed == pinned
    return have == want or (not want.local and have.public == want.public)


@functools.lru_cache(maxsize=None)
def _constraints(path: str) -> dict:
    data = Path(path).read_bytes()
    installed = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            installed.setdefault(canonical(name), dist.version)
    mismatched, missing = [], []
    for key, (name, version) in sorted(read_constraints(path).items()):
        if key not in installed:
            missing.append(name)
        elif not _matches(installed[key], version):
            mismatched.append({"name": name, "pinned": version, "installed": installed[key]})
    try:
        shown = str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        shown = str(path)
    return {"file": shown, "sha256": hashlib.sha256(data).hexdigest(), "pinned": len(read_constraints(path)),
            "matches": not mismatched, "mismatched": mismatched, "missing": missing}


def constraints(path: str | os.PathLike = CONSTRAINTS) -> dict:
    """The constraints file the project installs with and how this environment compares with it:
    ``file`` (relative to the project), ``sha256`` of its bytes, ``pinned`` (how many pins),
    ``matches`` (no installed distribution differs), ``mismatched`` (``{name, pinned, installed}``
    for each installed distribution at another version) and ``missing`` (pinned, not installed:
    an extra such as the dev tools). Without the file: ``sha256`` None and ``matches`` None."""
    path = Path(path)
    if not path.is_file():
        return {"file": str(path), "sha256": None, "pinned": 0, "matches": None, "mismatched": [], "missing": []}
    return _constraints(str(path))


def git_revision(folder: str | os.PathLike | None = None) -> dict[str, str | bool | None]:
    """Commit of the project checkout and whether it had uncommitted changes."""
    folder = folder or Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10)
        return {"commit": rev.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware(device: str) -> dict:
    """The machine a run used."""
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info
