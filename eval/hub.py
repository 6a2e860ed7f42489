"""Is the Hugging Face hub reachable? Asked once, in seconds, before anything waits on it.

Without ``data.local_dir`` every dataset (and a hub model) loads from the hub. On a machine
that cannot reach it, ``datasets`` and ``huggingface_hub`` retry for minutes per dataset; a
TCP connect with a short timeout answers in seconds instead, and the error names the setting
that fixes it. ``HF_ENDPOINT`` is honoured (a mirror, or a blocked address in tests); with
``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set the libraries read only their local cache, so
no probe is made.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

HINT = ("set data.local_dir=<a folder laid out like shared/data> (or the environment variable "
        "LLM_PRUNE_DATA) to run offline")
TIMEOUT_S = 3.0


def offline_mode() -> bool:
    """True when the Hugging Face libraries are told to use their cache only."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@lru_cache(maxsize=4)
def _probe(endpoint: str) -> str | None:
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            return None
    except OSError as err:
        return f"{host}:{port} not reachable ({err.strerror or type(err).__name__})"


def hub_problem() -> str | None:
    """Why the hub cannot be used right now (one line), or None when it can (or cache-only mode)."""
    if offline_mode():
        return None
    return _probe(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
