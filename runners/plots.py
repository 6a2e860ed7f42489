"""The report's figures, drawn from the results store's tables (no pyplot state, Agg for PNG).

Each function takes the rows of one model and evaluation protocol (as ``report.load_store``
returns them) and returns a :class:`matplotlib.figure.Figure`; ``save`` writes it as PNG.
Sparsity axes place N:M patterns at their ratio (2:4 at 0.5, 3:4 at 0.75) with a square
marker and their label, not joined to the unstructured line. Runs without a valid number
(``nan``, ``oom``, ``error``, ...) are drawn as a grey ``x`` on the top edge and listed with
their status in a corner note, never as a value. The dense baseline is a dashed horizontal line.
Every point is the mean over the configuration's seeds (runners/aggregate.py) with an error bar
of ± one sample standard deviation where more than one seed ran (a shaded band for dense);
pruners' error bars at one sparsity are shifted slightly sideways (``DODGE``) so they stay apart.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator

from .aggregate import aggregate, expand_failed
from .labels import PRUNER_ORDER, pruner_order, row_labels, sparsity_order, sparsity_ratio

DODGE = 0.004  # sideways shift (in sparsity) between pruners' error bars at the same sparsity
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def color(label: str) -> str:
    """A stable colour per pruner name (the first word of a row label)."""
    head = label.split(" ")[0]
    known = len(PRUNER_ORDER) - 1  # the named methods take the first colours, anything else the rest
    idx = PRUNER_ORDER.index(head) - 1 if head in PRUNER_ORDER[1:] else \
        known + sum(map(ord, head)) % (len(COLORS) - known)
    return COLORS[idx % len(COLORS)]


def _wrap(title: str) -> str:
    """Break a long title at its first ': ' so it fits a single-panel figure."""
    return title.replace(": ", ":\n", 1) if len(title) > 60 else title


class _PlainLog(LogFormatterSciNotation):
    """Matplotlib's choice of which log ticks to label, written 60 or 0.04 rather than 6x10^1."""

    def __call__(self, x, pos=None):
        text = super().__call__(x, pos)
        return f"{x:g}" if text and 1e-3 <= abs(x) < 1e5 else text


def _log_y(ax) -> None:
    """Log y axis with plain-number tick labels in the usual range, minor ticks labelled on short ranges."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLog())
    ax.yaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _yerr(good: pd.DataFrame, scale: float, log: bool):
    """Error bar half-lengths (± std; 0 for a single seed), the lower one kept above 0 on a log axis."""
    mean = good["mean"].astype(float).to_numpy() * scale
    std = good["std"].astype(float).fillna(0.0).to_numpy() * scale
    lower = [min(s, 0.9 * m) if log else s for s, m in zip(std, mean)]
    return [lower, std]


def _legend(ax, has_nm: bool) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if has_nm:
        handles.append(Line2D([], [], color="grey", marker="s", linestyle="none", markerfacecolor="none"))
        labels.append("N:M pattern (at its ratio)")
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="best")


def _sparsity_lines(ax, rows: pd.DataFrame, log: bool, scale: float = 1.0) -> None:
    """Draw one line per row label against sparsity from aggregated rows (``mean, std, n, failed``):
    error bars where n > 1, dense as a horizontal line (and a ± std band)."""
    has_nm, failed = False, []
    labels = sorted(rows["row"].unique(), key=pruner_order)
    pruned = [lb for lb in labels if lb != "dense"]
    spread = bool((rows.loc[rows["row"] != "dense", "n"] > 1).any())  # any error bar in this panel
    for label in labels:
        sub = rows[rows["row"] == label]
        # Error bars of pruners at the same sparsity would overlap: shift each a little sideways.
        dodge = (pruned.index(label) - (len(pruned) - 1) / 2) * DODGE if label in pruned and spread else 0.0
        good, bad = sub[sub["n"] > 0], sub[sub["failed"] != ""]
        failed += [f"{label}{'' if label == 'dense' else ' ' + r['sparsity']}: "
                   + (r["failed"] if r["n"] == 0 else f"{r['failed']} of {r['runs']} seeds")  # e.g. "1 nan of 3 seeds"
                   for _, r in bad.drop_duplicates(["sparsity", "failed"]).iterrows()]
        if label == "dense":
            for i, (_, r) in enumerate(good.iterrows()):
                y = float(r["mean"]) * scale
                ax.axhline(y, color="black", linestyle="--", linewidth=1, label="dense" if i == 0 else None)
                if r["n"] > 1:
                    ax.axhspan(y - float(r["std"]) * scale, y + float(r["std"]) * scale, color="black",
                               alpha=0.08, linewidth=0)
            continue
        legend = label
        bars = bool((good["n"] > 1).any())
        unstructured = good[~good["sparsity"].str.contains(":")]
        if not unstructured.empty:
            unstructured = unstructured.assign(x=unstructured["sparsity"].astype(float)).sort_values("x")
            y = unstructured["mean"].astype(float) * scale
            if bars:
                ax.errorbar(unstructured["x"] + dodge, y, yerr=_yerr(unstructured, scale, log), marker="o",
                            capsize=3, color=color(label), label=legend)
            else:
                ax.plot(unstructured["x"] + dodge, y, marker="o", color=color(label), label=legend)
            legend = None
        for _, r in good[good["sparsity"].str.contains(":")].iterrows():
            has_nm = True
            x, y = sparsity_ratio(r["sparsity"]) + dodge, float(r["mean"]) * scale
            style = {"marker": "s", "markerfacecolor": "none", "markersize": 8, "color": color(label),
                     "linestyle": "none", "label": legend}
            if r["n"] > 1:
                ax.errorbar([x], [y], yerr=_yerr(r.to_frame().T, scale, log), capsize=3, **style)
            else:
                ax.plot([x], [y], **style)
            legend = None
            ax.annotate(r["sparsity"], (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7,
                        color=color(label))
        for _, r in bad[bad["n"] == 0].iterrows():
            ax.plot([sparsity_ratio(r["sparsity"])], [0.97], marker="x", color="grey", linestyle="none",
                    transform=ax.get_xaxis_transform())
    if failed:
        ax.text(0.01, 0.01, "failed seeds (x on the top edge: no seed gave a value):\n" + "\n".join(failed),
                transform=ax.transAxes, fontsize=6, color="dimgrey", va="bottom", ha="left",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    if log:
        _log_y(ax)
    lo, hi = ax.get_xlim()
    if hi - lo < 0.1:  # one sparsity only: do not zoom onto the error bars' sideways shift
        mid = (lo + hi) / 2
        ax.set_xlim(mid - 0.05, mid + 0.05)
    ax.set_xlabel("sparsity (fraction of zero weights)")
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, has_nm)


def ppl_vs_sparsity(frame: pd.DataFrame, title: str = "") -> Figure | None:
    """Perplexity vs sparsity, one panel per dataset, one line per pruner, log y, ± std error bars
    over seeds (None: no rows)."""
    ppl = frame[frame["metric"] == "ppl"]
    datasets = [d for d in ppl["dataset"].unique() if d != "all"]
    if ppl.empty or not datasets:
        return None
    ppl = aggregate(expand_failed(ppl, [(ds, "ppl") for ds in datasets]))
    ppl["row"] = row_labels(ppl)
    fig = Figure(figsize=(5 * len(datasets), 4.2), layout="constrained")
    for i, ds in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), i + 1)
        rows = ppl[ppl["dataset"] == ds]
        _sparsity_lines(ax, rows, log=True)
        ax.set_ylabel(f"{ds} perplexity (log scale)")
        ax.set_title(ds)
    title = title or "Perplexity vs sparsity"
    fig.suptitle(_wrap(title) if len(datasets) == 1 else title, fontsize=11)
    return fig


def zeroshot_vs_sparsity(frame: pd.DataFrame, metric: str = "acc", title: str = "") -> Figure | None:
    """Mean zero-shot accuracy (%) vs sparsity, one line per pruner, ± std error bars over seeds
    (None: no zero-shot rows)."""
    zs = frame[((frame["dataset"] == "zeroshot_mean") & (frame["metric"] == metric))
               | ((frame["dataset"] == "all") & (frame["status"] != "ok"))]
    if not (zs["dataset"] == "zeroshot_mean").any():
        return None
    zs = aggregate(expand_failed(zs, [("zeroshot_mean", metric)]))
    zs["row"] = row_labels(zs)
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    _sparsity_lines(ax, zs, log=False, scale=100.0)
    ax.set_ylabel(f"mean zero-shot {metric} (%)")
    ax.set_title(_wrap(title or f"Mean zero-shot {metric} vs sparsity"), fontsize=10)
    return fig


def default_block_sparsity(blocks: pd.DataFrame) -> str | None:
    """The sparsity with the most runs that have per-block errors (ties: the lowest)."""
    if blocks.empty:
        return None
    errors = blocks[blocks["metric"] == "rel_output_error"] if "metric" in blocks else blocks
    if errors.empty:
        return None
    counts = errors.drop_duplicates("run_id")["sparsity"].value_counts()
    top = counts[counts == counts.max()].index
    return sorted(top, key=sparsity_order)[0]


def block_errors(blocks: pd.DataFrame, sparsity: str, title: str = "") -> Figure | None:
    """Relative output error per decoder block, one line per pruner, at ``sparsity``: the mean over
    seeds, ± std error bars where several seeds ran (None: no rows)."""
    sub = blocks[(blocks["metric"] == "rel_output_error") & (blocks["sparsity"] == sparsity)].copy()
    if sub.empty:
        return None
    sub["row"] = row_labels(sub)
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    positive = bool((sub.groupby(["row", "block"])["value"].mean() > 0).all())  # log axis only if all > 0
    for label in sorted(sub["row"].unique(), key=pruner_order):
        per_block = sub[sub["row"] == label].groupby("block")["value"]
        line = pd.DataFrame({"mean": per_block.mean(), "std": per_block.std(ddof=1), "n": per_block.count()})
        if (line["n"] > 1).any():
            ax.errorbar(line.index, line["mean"], yerr=_yerr(line, 1.0, positive), marker="o", markersize=3,
                        capsize=2, color=color(label), label=label)
        else:
            ax.plot(line.index, line["mean"], marker="o", markersize=3, color=color(label), label=label)
    if positive:
        _log_y(ax)
    ax.set_xlabel("decoder block")
    ax.set_ylabel("relative output error" + (" (log scale)" if positive else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(_wrap(title or f"Per-block relative output error at sparsity {sparsity}"), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def save(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, path)
    return path
