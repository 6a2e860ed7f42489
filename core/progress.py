"""Progress for long stages: a bar on a terminal, plain log lines otherwise (CI, files)."""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("progress")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` showing progress: tqdm when stderr is a terminal, else one log line
    every ~10% so that logs stay readable."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, leave=False)
        return
    start, step = time.perf_counter(), max(1, (total or 10) // 10)
    for done, item in enumerate(items, 1):
        yield item
        if total is None or done % step == 0 or done == total:
            log.info("%s: %d/%s (%.0fs)", desc, done, total if total is not None else "?", time.perf_counter() - start)
