"""The pruner interface: block-level pruners, and the wrapper for per-Linear methods.

The engine (``runners/execution/engine.py``) walks the decoder blocks and hands each selected block to
``pruner.prune_block(block)`` as a ``BlockContext``. The context knows the block's Linears,
which of them share an input (``groups``), the sparsity target, and how to run the block on
the calibration inputs while gathering statistics. Pruners never move tensors between
devices and never read Hydra configs: their builders get plain arguments.

Per-Linear methods (magnitude, Wanda, SparseGPT) are plain functions
``(weight, stats, pattern) -> pruned weight`` wrapped once by ``PerLinearPruner``; block-level
methods (SparseLLM) implement ``prune_block`` themselves.
"""
from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn

from core.families import LinearGroup, MlpSpec  # noqa: F401  (part of the pruner interface)

from .cost import Cost
from .pattern import SparsityPattern


class Statistic(Protocol):
    """Input statistics of one Linear, accumulated over calibration tokens.

    ``add`` receives the Linear's input flattened to (tokens, in_features).
    """

    def add(self, x: torch.Tensor) -> None: ...


@dataclass
class Captured:
    """What ``BlockContext.capture`` returns: Linear inputs and outputs by name (2-D float32,
    tokens x features, over the whole calibration set), and input statistics by name."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, Statistic] = field(default_factory=dict)


class BlockContext(Protocol):
    """What the engine gives a pruner for one decoder block (see runners/execution/engine.py)."""

    index: int
    pattern: SparsityPattern
    linears: dict[str, nn.Linear]
    groups: list[LinearGroup]
    mlp: MlpSpec

    def collect(self, make_stat: Callable[[int], Statistic], names: list[str] | None = None) -> dict[str, Statistic]:
        """Run the block (as it is now) on the calibration inputs; return one statistic per Linear.

        Linears of one group share one statistic object. ``names`` limits which Linears are
        observed (default: all).
        """

    def capture(self, inputs: Sequence[str] = (), outputs: Sequence[str] = (),
                make_stat: Callable[[int], Statistic] | None = None,
                stat_names: Sequence[str] = ()) -> Captured:
        """Run the block as it is now, once; return the inputs of the Linears named in
        ``inputs``, the outputs of those in ``outputs``, and (with ``make_stat``) one statistic
        per input group of ``stat_names``, shared as in ``collect``."""

    def rows(self, name: str) -> list[slice]:
        """The row slices of Linear ``name`` that are separate matrices: one slice covering all
        rows for a plain Linear; q, k, v (gate, up) for a fused one (Phi-3's ``qkv_proj``).
        Selections that compare weights across rows (per matrix, per 128-column block,
        column sums) run on each slice alone, so fusion does not change the result."""

    def record(self, metric: str, value: float, step: int | None = None) -> None:
        """Attach a per-block diagnostic (e.g. ``objective`` at ``step`` 1) to the results."""

    def record_linear(self, name: str, seconds: float) -> None:
        """Record how long pruning one Linear took (the engine measures its sparsity)."""


class BlockPruner(Protocol):
    """A pruning method at the level of one decoder block: everything the engine, the job and the
    plan read from a pruner (they read nothing else, and never by ``getattr``).

    ``name`` is its config's name (``conf/pruner/<name>.yaml``); ``label`` names its runs in run ids
    and tables (``name``, or ``name+<variant>`` when a setting changes the method, as
    ``ria+permute``); ``calib_nsamples`` is its own calibration size per model family
    (``{"opt": 64, "llama": 32}``), or None for the protocol's ``calib.nsamples``;
    ``needs_calibration`` says whether it reads calibration data (without, and without a
    refinement or allocation that does, the engine runs no calibration pass); ``cost`` is its
    cost model (``pruners/cost.py``), or None: ``plan=true`` then says "not estimated".
    ``mlp_kinds`` names the MLP layouts (``MlpSpec.kind``) a method that optimizes the MLP as a
    whole needs, so a model of another family is refused before it loads; None: any model.
    ``PerLinearPruner`` and ``PrunerDefaults`` give the usual values."""

    name: str
    label: str
    calib_nsamples: Mapping[str, int] | None
    needs_calibration: bool
    cost: Cost | None
    mlp_kinds: Collection[str] | None

    def prune_block(self, block: BlockContext) -> None:
        """Prune ``block.linears`` in place to ``block.pattern``."""


class PrunerDefaults:
    """The protocol's usual values for a block-level pruner class: its label is its name, it takes
    the protocol's calibration size, and it declares no cost model."""

    calib_nsamples: Mapping[str, int] | None = None
    cost: Cost | None = None
    mlp_kinds: Collection[str] | None = None

    @property
    def label(self) -> str:
        return self.name


def needs_calibration(pruner, allocation=None, refine=None) -> bool:
    """Does pruning read calibration data: the pruner, the layer-wise allocation (its dense pass) or
    the refinement (None: not part of the run). The one definition of that rule."""
    return any(part is not None and part.needs_calibration for part in (pruner, allocation, refine))


def check_setting(ok: bool, key: str, value, accepted: str) -> None:
    """Builders' one-line rejection of a bad setting: ``pruner.<key>=<value> ... accepted ...``."""
    if not ok:
        raise ValueError(f"pruner.{key}={value!r} is not valid: accepted {accepted}")


LinearPruneFn = Callable[[torch.Tensor, object, SparsityPattern], torch.Tensor]


@dataclass
class PerLinearPruner:
    """Turns a per-Linear function ``(weight, stats, pattern) -> weight`` into a block pruner.

    ``make_stat`` builds the statistic the function needs from ``in_features`` (None: the
    method needs no calibration data, and the engine then runs no calibration pass).
    With ``sequential`` the statistics are gathered again before each group of Linears, so
    that e.g. ``o_proj`` sees the output of already pruned q/k/v. ``cost``: its cost model
    (``pruners/cost.py``; None: not estimated by the plan); ``calib_nsamples``: its own
    calibration size per family (None: the protocol's).
    """

    name: str
    prune_fn: LinearPruneFn
    make_stat: Callable[[int], Statistic] | None = None
    sequential: bool = False
    cost: Cost | None = None
    calib_nsamples: Mapping[str, int] | None = None
    mlp_kinds: Collection[str] | None = None

    @property
    def label(self) -> str:
        """Its name: a per-Linear method has no setting that makes it another method."""
        return self.name

    @property
    def needs_calibration(self) -> bool:
        return self.make_stat is not None

    def prune_block(self, block: BlockContext) -> None:
        groups = block.groups if self.sequential else [LinearGroup("all", list(block.linears))]
        stats: dict[str, object] = {}
        for group in groups:
            if self.make_stat is not None:
                stats = block.collect(self.make_stat, group.names)
            for name in group.names:
                linear = block.linears[name]
                block.pattern.check_columns(linear.in_features, name)
                start = time.perf_counter()
                for rows in block.rows(name):
                    pruned = self.prune_fn(linear.weight.data[rows], stats.get(name), block.pattern)
                    linear.weight.data[rows] = pruned.to(linear.weight.dtype)
                block.record_linear(name, time.perf_counter() - start)
