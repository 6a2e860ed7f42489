"""The layer-by-layer engine (SparseGPT's "sequential" protocol), for any pruner and family.

1. Capture the inputs of decoder block 0 for every calibration batch, and every block's own
   call arguments (masks, position ids, rotary tables), with ``core.walk.capture``.
2. Walk the blocks in order (``core.walk.walk``): if selected, let the pruner gather the
   statistics it needs (through ``BlockRun.collect``/``capture``) and prune; the block (now
   pruned) is run on the inputs to get the next block's inputs.

Only one block is on the accelerator at a time. A pruner that needs no calibration data
(magnitude) gets no calibration pass at all, unless per-block diagnostics are asked for.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from pruners import fallbacks
from pruners.magnitude import magnitude_prune
from pruners.base import BlockPruner, Captured, LinearGroup, MlpSpec, needs_calibration
from pruners.pattern import SparsityPattern

from core import experts
from core.families import FamilyAdapter
from core.walk import Batch, _Captured, capture, final_hidden, head_logits, run_block, walk

log = logging.getLogger(__name__)

@dataclass
class BlockRun:
    """The ``BlockContext`` the engine hands a pruner for one block (see pruners/base.py)."""

    index: int
    block: nn.Module
    pattern: SparsityPattern
    linears: dict[str, nn.Linear]
    groups: list[LinearGroup]
    mlp: MlpSpec
    batches: list[Batch]
    need_dense: bool = True
    dense_outputs: list[torch.Tensor] | None = None
    diagnostics: list[tuple[str, int | None, float]] = field(default_factory=list)
    linear_seconds: dict[str, float] = field(default_factory=dict)
    parts: dict[str, list[slice]] = field(default_factory=dict)
    routed: bool = False  # the block routes tokens to experts: a statistic's hook may not fire in a batch

    def __post_init__(self):
        self._dense_weights = self._fingerprint()

    def _fingerprint(self) -> list[float]:
        """Sum of |w| of every Linear: any pruning step changes it, and it costs one pass over the
        weights (nothing beside a block forward over the calibration tokens)."""
        return [float(linear.weight.detach().abs().sum(dtype=torch.float64)) for linear in self.linears.values()]

    def _still_dense(self) -> bool:
        """Whether the block's weights are those it came with (its outputs are the dense outputs)."""
        return self._fingerprint() == self._dense_weights

    def rows(self, name: str) -> list[slice]:
        """The row slices of ``name`` that are separate matrices (see ``BlockContext.rows``)."""
        return self.parts.get(name) or [slice(None)]

    def _run(self, stop_early: bool = False) -> None:
        """Run the block on every batch; keep the outputs of the first (dense) run when wanted.

        With ``stop_early`` a hook has raised ``_Captured`` once the last statistic was taken,
        so the rest of the block (e.g. the widest matmul, down_proj) is not computed at all.
        """
        if stop_early:
            with torch.no_grad():
                for b in self.batches:
                    try:
                        self.block(b.hidden, *b.args, **b.kwargs)
                    except _Captured:
                        pass
            return
        outputs = run_block(self.block, self.batches)
        if self.need_dense and self.dense_outputs is None and self._still_dense():
            self.dense_outputs = outputs

    def _wants_dense(self) -> bool:
        return self.need_dense and self.dense_outputs is None and self._still_dense()

    def _stat_hooks(self, make_stat, names, stop_early: bool):
        """One statistic per input group among ``names``, fed by a hook on the group's first Linear."""
        wanted = set(names)
        groups = [[n for n in g.names if n in wanted] for g in self.groups]
        groups = [g for g in groups if g]
        stats, handles = {}, []
        for index, members in enumerate(groups):
            first = self.linears[members[0]]
            stat = make_stat(first.in_features)
            stats.update({n: stat for n in members})
            last = stop_early and index == len(groups) - 1

            def hook(_m, args, stat=stat, last=last):
                stat.add(args[0].reshape(-1, args[0].shape[-1]))
                if last:  # every statistic is taken: skip the rest of the block
                    raise _Captured

            handles.append(first.register_forward_pre_hook(hook))
        return stats, handles

    def collect(self, make_stat, names=None):
        """Run the block as it is now; one statistic per Linear, shared within an input group."""
        # Stopping once the last group's statistic is taken needs every group reached in forward
        # order, which routing does not promise (an expert may see no token of a batch).
        stop_early = not self._wants_dense() and not self.routed
        stats, handles = self._stat_hooks(make_stat, names or list(self.linears), stop_early)
        try:
            self._run(stop_early)
        finally:
            for h in handles:
                h.remove()
        return stats

    def capture(self, inputs=(), outputs=(), make_stat=None, stat_names=()) -> Captured:
        """Run the block as it is now, once: the named Linears' inputs and outputs, and
        statistics of the inputs of ``stat_names`` (as ``collect``).

        Tensors are float32 (tokens x features) over the whole calibration set, written
        batch by batch into one preallocated buffer each (no second copy by concatenation).
        """
        tokens = sum(b.hidden.shape[:-1].numel() for b in self.batches)
        got = Captured()
        offsets: dict[tuple[str, str], int] = {}

        def store(kind, name, value):
            table = got.inputs if kind == "in" else got.outputs
            flat = value.reshape(-1, value.shape[-1])
            if name not in table:
                table[name] = torch.empty(tokens, flat.shape[1], dtype=torch.float32, device=flat.device)
            at = offsets.get((kind, name), 0)
            table[name][at : at + flat.shape[0]] = flat
            offsets[(kind, name)] = at + flat.shape[0]

        def hook(name, want_in, want_out):
            def fn(_m, args, out):
                if want_in:
                    store("in", name, args[0])
                if want_out:
                    store("out", name, out)
            return fn

        handles = [self.linears[n].register_forward_hook(hook(n, n in inputs, n in outputs))
                   for n in dict.fromkeys([*inputs, *outputs])]
        if make_stat is not None and stat_names:
            got.stats, stat_handles = self._stat_hooks(make_stat, stat_names, stop_early=False)
            handles += stat_handles
        try:
            self._run()
        finally:
            for h in handles:
                h.remove()
        for (kind, name), filled in offsets.items():  # a routed expert sees only its own tokens
            table = got.inputs if kind == "in" else got.outputs
            table[name] = table[name][:filled]
        return got

    def record(self, metric: str, value: float, step: int | None = None) -> None:
        """Attach a per-block diagnostic."""
        self.diagnostics.append((metric, step, float(value)))

    def record_linear(self, name: str, seconds: float) -> None:
        """Remember how long pruning one Linear took."""
        self.linear_seconds[name] = self.linear_seconds.get(name, 0.0) + seconds


def _relative_error(pruned: list[torch.Tensor], dense: list[torch.Tensor],
                    inputs: list[torch.Tensor] | None = None) -> float:
    """||pruned - dense|| / ||dense|| over all batches; with ``inputs`` (the block's inputs X),
    ||pruned - dense|| / ||dense - X||: the error relative to the block's own update f(X) - X,
    which the residual stream's scale (that dominates ||f(X)||) does not hide."""
    num = sum(float((p.float() - d.float()).pow(2).sum()) for p, d in zip(pruned, dense))
    if inputs is None:
        den = sum(float(d.float().pow(2).sum()) for d in dense)
    else:
        den = sum(float((d.float() - x.float()).pow(2).sum()) for d, x in zip(dense, inputs))
    return (num / den) ** 0.5 if den > 0 else float("nan")


@dataclass
class PruneReport:
    """Per-Linear rows (``layers.csv``), per-block diagnostic rows (``blocks.csv``) and the
    numerical fallbacks of the whole model (count per kind; per block in ``blocks``)."""

    layers: list[dict] = field(default_factory=list)
    blocks: list[dict] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)


@torch.no_grad()
def dense_measures(model, adapter: FamilyAdapter, inputs, selected: set[int], device: str,
                   allocation) -> dict[int, float]:
    """One pass of the calibration inputs through the dense model: ``allocation.measure`` of every
    selected block from its Linears' weights and input norms (for OWL: the outlier ratio).
    ``inputs`` (``core.walk.BlockInputs``) are left untouched for the pruning walk."""
    from pruners.wanda import InputNorms

    inputs = dataclasses.replace(inputs)  # the walk advances its own copy of the hidden states
    measures = {}
    for step in walk(model, adapter, inputs, device, last=max(selected), desc="dense pass (allocation)"):
        if step.index in selected:
            run = BlockRun(step.index, step.block, SparsityPattern(0.0), adapter.linears(step.block),
                           adapter.linear_groups(step.block), adapter.mlp, step.batches, need_dense=False)
            stats, handles = run._stat_hooks(InputNorms, list(run.linears), stop_early=False)
            try:
                step.outputs = run_block(step.block, step.batches)
            finally:
                for h in handles:
                    h.remove()
            measures[step.index] = allocation.measure({n: l.weight.data for n, l in run.linears.items()},
                                                      {n: stats[n].norms() for n in run.linears})
    return measures


def block_patterns(model, adapter: FamilyAdapter, pattern: SparsityPattern, selected: set[int], allocation,
                   inputs, device: str):
    """``(pattern of every selected block, the allocation's measure of each or None)`` under
    ``allocation`` (None: the same ``pattern`` everywhere)."""
    if allocation is None or not selected:
        return {i: pattern for i in selected}, None
    blocks = adapter.blocks(model)
    sizes = {i: sum(l.weight.numel() for l in adapter.linears(blocks[i]).values()) for i in selected}
    if allocation.needs_calibration:
        measures = dense_measures(model, adapter, inputs, selected, device, allocation)
    else:  # weights only (AlphaPruning): each block measured where it is, before any block is pruned
        measures = {i: allocation.measure({n: l.weight.data for n, l in adapter.linears(blocks[i]).items()}, None)
                    for i in sorted(selected)}
    return allocation.block_patterns(pattern, sizes, measures), measures


@torch.no_grad()
def prune_model(model: nn.Module, adapter: FamilyAdapter, pruner: BlockPruner, pattern: SparsityPattern,
                calib_tokens: torch.Tensor | None, layers: list[int], device: str,
                batch_size: int = 1, diagnostics: bool = True, allocation=None, refine=None) -> PruneReport:
    """Prune the selected ``layers`` of ``model`` in place, block by block; return the report.

    ``allocation`` (pruners/allocation.py; None: uniform) gives each block its own sparsity; one
    that needs calibration data first runs a dense pass over it. ``refine`` (pruners/refine.py;
    None: none) refines each pruned block's masks after its pruner, before the pruned pass."""
    need_inputs = needs_calibration(pruner, allocation, refine) or diagnostics
    if need_inputs and calib_tokens is None:
        raise ValueError(f"pruner {pruner.name!r} needs calibration tokens")
    with experts.split_experts(model):  # fused 3-D experts as Linears while pruning (core/experts.py)
        return _prune_blocks(model, adapter, pruner, pattern, calib_tokens, layers, device, batch_size,
                             diagnostics, allocation, refine, need_inputs)


def _prune_blocks(model, adapter, pruner, pattern, calib_tokens, layers, device, batch_size, diagnostics,
                  allocation, refine, need_inputs) -> PruneReport:
    """``prune_model`` with the experts split."""
    inputs = capture(model, adapter, calib_tokens, device, batch_size) if need_inputs else None
    selected, report = set(layers), PruneReport()
    patterns, measures = block_patterns(model, adapter, pattern, selected, allocation, inputs, device) \
        if allocation is not None else ({i: pattern for i in selected}, None)
    if allocation is not None:
        for i in sorted(selected):
            report.blocks.append({"block": i, "metric": "target_sparsity", "step": None, "value": patterns[i].ratio})
            if measures:
                report.blocks.append({"block": i, "metric": f"allocation:{allocation.metric}", "step": None,
                                      "value": measures[i]})
    if not (needs_calibration(pruner, refine=refine) or diagnostics):
        inputs = None  # only the allocation's dense pass needed them
    for step in walk(model, adapter, inputs, device, last=max(selected, default=-1), desc="prune blocks"):
        if step.index in selected:
            _prune_one(step, adapter, pruner, patterns[step.index], diagnostics, refine, report, allocation is not None)
    return report


def _prune_one(step, adapter: FamilyAdapter, pruner: BlockPruner, pattern: SparsityPattern, diagnostics: bool,
               refine, report: PruneReport, allocated: bool) -> None:
    """Prune one block of the walk (``step``), set its pruned outputs, and add its rows to ``report``."""
    i, block, batches = step.index, step.block, step.batches
    start = time.perf_counter()
    linears, groups = adapter.linears(block), adapter.linear_groups(block)
    moe = bool(experts.expert_paths(block))
    unrouted = _unrouted_experts(block, batches, groups, i, report) if moe else {}
    if needs_calibration(pruner, refine=refine) and unrouted:  # nothing to gather for them: pruned by magnitude
        hidden = {n for names in unrouted.values() for n in names}
        groups = [g for g in groups if not hidden.intersection(g.names)]
        routed = {n: l for n, l in linears.items() if n not in hidden}
    else:
        unrouted, routed = {}, linears
    run = BlockRun(i, block, pattern, routed, groups, adapter.mlp, batches or [],
                   need_dense=diagnostics, routed=moe,
                   parts={n: [s for _p, s in adapter.row_parts(n)] for n in linears if adapter.row_parts(n)})
    if diagnostics and not pruner.needs_calibration:
        run._run()
    state = refine.prepare(run) if refine is not None else None
    with fallbacks.collecting() as events:
        pruner.prune_block(run)
        for expert, names in unrouted.items():
            fallbacks.record("unrouted_expert_magnitude", f"block {i} {expert}: no calibration token is routed to "
                                                          f"it, so it is pruned by magnitude")
            for name in names:  # in place: an expert's weight is a view of the fused experts (core/experts.py)
                weight = linears[name].weight.data
                weight[...] = magnitude_prune(weight, None, pattern)
    if refine is not None:
        refine.apply(run, state)
        del state
    for kind, count in fallbacks.counts(events).items():
        report.blocks.append({"block": i, "metric": f"fallback:{kind}", "step": None, "value": count})
        report.fallbacks[kind] = report.fallbacks.get(kind, 0) + count
    outputs = step.outputs = run_block(block, batches) if batches is not None else None
    seconds = time.perf_counter() - start
    report.blocks.append({"block": i, "metric": "seconds", "step": None, "value": seconds})
    if diagnostics and run.dense_outputs is not None:
        err = _relative_error(outputs, run.dense_outputs)
        report.blocks.append({"block": i, "metric": "rel_output_error", "step": None, "value": err})
        update = _relative_error(outputs, run.dense_outputs, [b.hidden for b in batches])
        report.blocks.append({"block": i, "metric": "rel_update_error", "step": None, "value": update})
        log.info("block %d pruned in %.1fs, relative output error %.4g", i, seconds, err)
    report.blocks.extend({"block": i, "metric": m, "step": s, "value": v} for m, s, v in run.diagnostics)
    mine = []
    for name, linear in linears.items():
        zeros = int((linear.weight == 0).sum())
        mine.append({"block": i, "name": f"{adapter.blocks_path}.{i}.{name}",
                     "shape": "x".join(map(str, linear.weight.shape)), "zeros": zeros,
                     "numel": linear.weight.numel(), "sparsity": zeros / linear.weight.numel(),
                     "seconds": run.linear_seconds.get(name, 0.0)})
    report.layers.extend(mine)
    if allocated:  # measured block sparsity beside its target (the report's allocation table)
        report.blocks.append({"block": i, "metric": "sparsity", "step": None,
                              "value": sum(r["zeros"] for r in mine) / sum(r["numel"] for r in mine)})


@torch.no_grad()
def _unrouted_experts(block: nn.Module, batches, groups, index: int, report: PruneReport) -> dict[str, list[str]]:
    """The experts no calibration token reaches in the block as it enters pruning (one counting
    pass): expert path -> its Linears. Every expert's token count goes to ``blocks.csv`` (metric
    ``expert_tokens``, step = the expert's number, counted through the block's expert modules in
    order). Without calibration inputs there is nothing to count."""
    if batches is None:
        return {}
    expert_groups = [g for g in groups if g.role == "expert_in"]
    counts = [0] * len(expert_groups)
    handles = []
    for e, group in enumerate(expert_groups):
        def hook(_m, args, e=e):
            counts[e] += args[0].reshape(-1, args[0].shape[-1]).shape[0]
        handles.append(block.get_submodule(group.names[0]).register_forward_pre_hook(hook))
    try:
        run_block(block, batches)
    finally:
        for h in handles:
            h.remove()
    unrouted = {}
    for e, (group, count) in enumerate(zip(expert_groups, counts)):
        report.blocks.append({"block": index, "metric": "expert_tokens", "step": e, "value": count})
        if count == 0:
            expert = group.names[0].rpartition(".")[0]
            unrouted[expert] = [*group.names, f"{expert}.down_proj"]
    return unrouted


@torch.no_grad()
def forward_logits(model: nn.Module, adapter: FamilyAdapter, tokens: torch.Tensor, device: str) -> torch.Tensor:
    """Logits computed block by block through the engine's own walk (used to test the walk)."""
    inputs = final_hidden(model, adapter, tokens, device, batch_size=len(tokens))
    return list(head_logits(model, adapter, inputs.hidden, [tokens], device))[0]
