"""Which decoder blocks a run prunes (``prune.layers``), without torch: validation and the
command line read it before any model loads."""
from __future__ import annotations

LAYERS_ACCEPTED = "'all', 'first_half', a range 'A-B' (inclusive), or a list of block indices"


def resolve_layers(spec, n_blocks: int | None = None) -> list[int] | str:
    """Turn ``prune.layers`` into sorted block indices (or check its syntax when ``n_blocks`` is None)."""
    bad = ValueError(f"prune.layers={spec!r} is not valid: accepted {LAYERS_ACCEPTED}")
    if isinstance(spec, str) and spec in ("all", "first_half"):
        if n_blocks is None:
            return spec
        return list(range(n_blocks if spec == "all" else n_blocks // 2))
    if isinstance(spec, str):
        parts = spec.split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise bad
        first, last = int(parts[0]), int(parts[1])
        if first > last:
            raise bad
        indices = list(range(first, last + 1))
    elif isinstance(spec, int) and not isinstance(spec, bool):
        indices = [spec]
    else:
        try:
            indices = sorted({int(i) for i in spec})
        except (TypeError, ValueError):
            raise bad from None
    if not indices or min(indices) < 0 or (n_blocks is not None and max(indices) >= n_blocks):
        where = f" (the model has {n_blocks} blocks: 0-{n_blocks - 1})" if n_blocks is not None else ""
        raise ValueError(f"prune.layers={spec!r} selects no valid block{where}: accepted {LAYERS_ACCEPTED}")
    return indices
