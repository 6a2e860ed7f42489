"""Sparsity patterns and exact mask selection.

One value type, `SparsityPattern`, describes what a pruner must reach:

* unstructured: a fraction ``ratio`` of zeros (``0.7``, ``"70%"``);
* N:M: ``n_zero`` zeros in every ``m`` consecutive input weights of a row (``"2:4"``,
  ``"3:4"``). This is the pruning literature's convention (N counts *zeros*); NVIDIA's
  hardware notation counts kept weights instead, and the two agree only for 2:4.

The mask helpers select *exactly* the requested number of entries with a stable sort, so
ties (frequent in weights dequantized from a 4-bit grid) never over- or under-prune.
Every mask returned here is boolean with ``True`` meaning "prune this weight".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ACCEPTED = (
    "a fraction in [0, 1) such as 0.7, a percentage such as '70%', "
    "or an N:M pattern 'N:M' with 0 < N < M (N zeros in every M weights) such as 2:4 or 3:4"
)


@dataclass(frozen=True)
class SparsityPattern:
    """Target sparsity: unstructured (``n_zero``/``m`` are None) or N:M."""

    ratio: float
    n_zero: int | None = None
    m: int | None = None
    # True: the zero count is exact for every matrix, round(ratio * numel), and a pruner whose
    # comparison group is a row (or a column block) spreads the remainder over its groups
    # instead of flooring each one. Layer-wise allocations set it (their block ratios are
    # count / size, so flooring per row would lose up to one weight per row, and the overall
    # sparsity would drift from the target); the uniform protocol keeps the papers' per-row
    # floor. Not part of the label: a block's pattern never names a run.
    exact: bool = False

    def zeros(self, numel: int) -> int:
        """Zeros an unstructured matrix (or group) of ``numel`` weights gets: the papers'
        ``int(numel * ratio)``, or ``round(numel * ratio)`` when ``exact``."""
        return round(numel * self.ratio) if self.exact else int(numel * self.ratio)

    @property
    def is_nm(self) -> bool:
        """True for an N:M pattern."""
        return self.m is not None

    @property
    def label(self) -> str:
        """Canonical text form used in run ids and tables: ``0.7`` or ``2:4``. Twelve significant
        digits, so two sparsities a user can tell apart never share a label."""
        if self.is_nm:
            return f"{self.n_zero}:{self.m}"
        return f"{self.ratio:.12g}"

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, value: object) -> "SparsityPattern":
        """Parse ``0.7``, ``"0.7"``, ``"70%"``, ``"2:4"``; raise ValueError naming the value."""
        if isinstance(value, SparsityPattern):
            return value
        bad = ValueError(f"sparsity={value!r} is not valid: accepted {ACCEPTED}")
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            ratio = float(value)
        elif isinstance(value, str):
            text = value.strip()
            if ":" in text:
                parts = text.split(":")
                if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                    raise bad
                n_zero, m = int(parts[0]), int(parts[1])
                if not 0 < n_zero < m:
                    raise bad
                return cls(ratio=n_zero / m, n_zero=n_zero, m=m)
            try:
                ratio = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not (math.isfinite(ratio) and 0.0 <= ratio < 1.0):
            raise bad
        return cls(ratio=ratio)

    def check_columns(self, in_features: int, name: str = "weight") -> None:
        """Raise if an N:M pattern cannot tile a row of ``in_features`` inputs."""
        if self.is_nm and in_features % self.m:
            raise ValueError(
                f"sparsity={self.label} needs the input size of {name} to be a multiple of "
                f"{self.m}, got {in_features}"
            )


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of exactly the ``k`` lowest scores of the whole tensor; ties kept in flat index order.

    The same entries as the first ``k`` of a stable sort, without sorting: a stable sort of a
    million scores costs ~50 ms on a CPU core, selecting the k-th value several times less.
    Every score up to the k-th value is taken, then the surplus ties at that value are dropped
    from the end, so the first ties in index order stay.
    """
    flat = scores.reshape(-1)
    if k <= 0 or k >= flat.numel():
        return torch.full_like(scores, k > 0, dtype=torch.bool)
    kth = torch.kthvalue(flat, k).values
    mask = flat <= kth
    surplus = int(mask.sum()) - k  # 0 unless the k-th value ties
    if surplus:
        ties = torch.nonzero(flat == kth).squeeze(1)
        mask[ties[-surplus:]] = False
    return mask.view_as(scores)


def lowest_k_per_row_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of exactly the ``k`` lowest scores of every row (stable on ties)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.argsort(scores, dim=1, stable=True)
        mask.scatter_(1, order[:, :k], True)
    return mask


def spread_per_row_mask(scores: torch.Tensor, total: int) -> torch.Tensor:
    """Mask of exactly ``total`` entries with each row's lowest scores, row counts differing by at
    most one: every row gets ``total // rows``, and the ``total % rows`` rows whose next-lowest
    score is smallest get one more (the cheapest extra zeros, as a per-row criterion sees them)."""
    rows, cols = scores.shape
    base, extra = divmod(int(total), rows)
    if base >= cols:
        return torch.ones_like(scores, dtype=torch.bool)
    order = torch.argsort(scores, dim=1, stable=True)
    counts = torch.full((rows,), base, dtype=torch.long, device=scores.device)
    if extra:
        following = scores.gather(1, order[:, base : base + 1]).squeeze(1)
        counts[torch.argsort(following, stable=True)[:extra]] += 1
    ranks = torch.arange(cols, device=scores.device).expand(rows, cols)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order, ranks < counts.unsqueeze(1))
    return mask


def nm_mask(scores: torch.Tensor, n_zero: int, m: int) -> torch.Tensor:
    """Mask of the ``n_zero`` lowest scores in every group of ``m`` consecutive columns."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M pattern with M={m} needs a multiple of {m} columns, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.argsort(groups, dim=2, stable=True)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order[..., :n_zero], True)
    return mask.reshape(rows, cols)


def select_mask(scores: torch.Tensor, pattern: SparsityPattern, per_row: bool) -> torch.Tensor:
    """The pruning mask for ``scores`` under ``pattern``.

    Unstructured: ``int(numel * ratio)`` entries of the whole matrix, or ``int(cols * ratio)``
    of every row when ``per_row``; with ``pattern.exact``, ``round(numel * ratio)`` entries in
    all, spread over the rows when ``per_row`` (:func:`spread_per_row_mask`). N:M is always per
    row and group.
    """
    if pattern.is_nm:
        return nm_mask(scores, pattern.n_zero, pattern.m)
    if per_row and pattern.exact:
        return spread_per_row_mask(scores, pattern.zeros(scores.numel()))
    if per_row:
        return lowest_k_per_row_mask(scores, pattern.zeros(scores.shape[1]))
    return lowest_k_mask(scores, pattern.zeros(scores.numel()))
