"""The report's figures, drawn from the results store's tables (no pyplot state, Agg for PNG).

Each function takes the rows of one model and evaluation protocol (as ``report.load_store``
returns them) and returns a :class:`matplotlib.figure.Figure`; ``save`` writes it as PNG.
Sparsity axes place N:M patterns at their ratio (2:4 at 0.5, 3:4 at 0.75) with a hollow square
and their label, not joined to the unstructured line. Runs without a valid number (``nan``,
``oom``, ``error``, ...) are drawn as a grey ``x`` on the top edge and listed with their status
in the legend, never as a value. The dense baseline is a dashed black line (a grey ± std band
when it has several seeds); a dotted grey line marks the vocabulary size ("uniform guess": a
model that guesses uniformly has exactly that perplexity) when the data come within a factor 10
of it. ``layers`` scopes are line styles (``all`` solid). Every point is the mean over the
configuration's seeds (runners/reporting/aggregate.py) with an error bar of ± one sample standard deviation
where more than one seed ran; pruners' error bars at one sparsity are shifted slightly sideways
(``DODGE``). A dataset without any valid value gets no panel (one unavailable in every run is
also left out of the tables, with a note there). Style and layout: runners/reporting/plot_style.py.
"""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from eval.metrics import ACC, PPL, WHOLE_RUN, ZEROSHOT_MEAN
from runners.reporting.aggregate import aggregate, expand_failed
from runners.reporting.formatting import unavailable_everywhere
from runners.reporting.labels import dense_rows, is_dense, pruner_order, row_labels, sparsity_order, sparsity_ratio
from runners.reporting.plot_style import SIZES, color, finish, layer_styles, log_y, new_figure, style_axes
from runners.reporting.plot_style import save  # noqa: F401  (report.py and the notebook call plots.save)
from runners.reporting.tables import vocab_of

DODGE = 0.004  # sideways shift (in sparsity) between pruners' error bars at the same sparsity
UNIFORM_WITHIN = 10.0  # draw the uniform-guess line when the data reach vocab / UNIFORM_WITHIN
MAX_FAILED_LINES = 8  # failure lines in the legend; the tables list them all
SPARSITY_LABEL = "sparsity (fraction of zero weights)"


def _yerr(good: pd.DataFrame, scale: float, log: bool):
    """Error bar half-lengths (± std; 0 for a single seed), the lower one kept above 0 on a log axis."""
    mean = good["mean"].astype(float).to_numpy() * scale
    std = good["std"].astype(float).fillna(0.0).to_numpy() * scale
    lower = [min(s, 0.9 * m) if log else s for s, m in zip(std, mean)]
    return [lower, std]


def _x_range(ax, ratios: list[float], has_nm: bool) -> None:
    """Pad the sparsity axis so markers and N:M labels stay inside; one sparsity gets ±0.1 around it
    (not a zoom onto the error bars' sideways shift) and ticks only where something was run."""
    lo, hi = min(ratios), max(ratios)
    pad = max(0.04, 0.08 * (hi - lo))
    ax.set_xlim(lo - (0.1 if hi == lo else pad), hi + (0.1 if hi == lo else pad + 0.03 * has_nm))
    unique = sorted(set(round(r, 6) for r in ratios))
    if len(unique) <= 4:
        ax.set_xticks(unique)


def _sparsity_lines(ax, rows: pd.DataFrame, log: bool, scale: float = 1.0) -> tuple[list, list]:
    """Draw one line per row label against sparsity from aggregated rows (``mean, std, n, failed``):
    error bars where n > 1, dense as a horizontal line (and a ± std band), each N:M pattern labelled
    once. Returns the legend entries ``(handle, label)`` and the failure lines."""
    has_nm, failed, entries, top = False, [], [], {}  # top: N:M label -> highest point, labelled once
    labels = sorted(rows["row"].unique(), key=pruner_order)
    pruned = [lb for lb in labels if not is_dense(lb)]
    baseline = dense_rows(rows["row"])
    spread = bool((rows.loc[~baseline, "n"] > 1).any())  # any error bar in this panel
    styles = layer_styles(rows.loc[~baseline, "layers"])
    ratios = [sparsity_ratio(s) for s in rows.loc[~baseline, "sparsity"]] or [0.5]
    for label in labels:
        sub = rows[rows["row"] == label]
        # Error bars of pruners at the same sparsity would overlap: shift each a little sideways.
        dodge = (pruned.index(label) - (len(pruned) - 1) / 2) * DODGE if label in pruned and spread else 0.0
        good, bad = sub[sub["n"] > 0], sub[sub["failed"] != ""]
        failed += [f"{label}{'' if is_dense(label) else ' ' + r['sparsity']}: "
                   + (f"{r['failed']} (x on the top edge)" if r["n"] == 0 else
                      f"{r['failed']} of {r['runs']} seeds")  # e.g. "1 nan of 3 seeds": the mean is over the rest
                   for _, r in bad.drop_duplicates(["sparsity", "failed"]).iterrows()]
        if is_dense(label):
            for _, r in good.iterrows():
                y = float(r["mean"]) * scale
                entries.append((ax.axhline(y, color=color(label), linestyle="--", linewidth=1), label))
                if r["n"] > 1:
                    ax.axhspan(y - float(r["std"]) * scale, y + float(r["std"]) * scale, color=color(label),
                               alpha=0.08, linewidth=0)
            continue
        linestyle, marker = styles[str(sub["layers"].iloc[0])]
        common = {"color": color(label), "linestyle": linestyle, "label": label}
        unstructured = good[~good["sparsity"].str.contains(":")]
        if not unstructured.empty:
            unstructured = unstructured.assign(x=unstructured["sparsity"].astype(float)).sort_values("x")
            y = unstructured["mean"].astype(float) * scale
            if (good["n"] > 1).any():
                ax.errorbar(unstructured["x"] + dodge, y, yerr=_yerr(unstructured, scale, log), marker=marker,
                            capsize=3, markersize=4, **common)
            else:
                ax.plot(unstructured["x"] + dodge, y, marker=marker, markersize=4, **common)
            entries.append((Line2D([], [], marker=marker, markersize=4, **common), label))
        for _, r in good[good["sparsity"].str.contains(":")].iterrows():
            has_nm = True
            x, y = sparsity_ratio(r["sparsity"]) + dodge, float(r["mean"]) * scale
            style = {"marker": "s", "markerfacecolor": "none", "markersize": 6, "color": color(label),
                     "linestyle": "none"}
            if r["n"] > 1:
                ax.errorbar([x], [y], yerr=_yerr(r.to_frame().T, scale, log), capsize=3, label=label, **style)
            else:
                ax.plot([x], [y], label=label, **style)
            if unstructured.empty:
                entries.append((Line2D([], [], **style), label))
            high = y + (float(r["std"]) * scale if r["n"] > 1 else 0.0)  # above its error bar too
            top[r["sparsity"]] = max(top.get(r["sparsity"], high), high)
        for _, r in bad[bad["n"] == 0].iterrows():
            ax.plot([sparsity_ratio(r["sparsity"])], [0.97], marker="x", color="grey", linestyle="none",
                    transform=ax.get_xaxis_transform())
    for pattern, y in top.items():  # one label per pattern (four pruners' labels at one spot would overlap)
        # above the highest marker of the pattern, centred; the x-range is padded for it (_x_range)
        ax.annotate(pattern, (sparsity_ratio(pattern), y), textcoords="offset points", xytext=(0, 6),
                    ha="center", va="bottom", fontsize=SIZES["note"], color="dimgrey",
                    bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 0.3})
    if has_nm:
        ax.margins(y=0.12)  # headroom for a pattern label above the highest point
        entries.append((Line2D([], [], color="grey", marker="s", linestyle="none", markerfacecolor="none"),
                        "N:M pattern (at its ratio)"))
    if log:
        log_y(ax)
    _x_range(ax, ratios, has_nm)
    return entries, failed


def _uniform_guess(ax, rows: pd.DataFrame, vocab: float | None) -> list:
    """The vocabulary-size line when the panel's values come within ``UNIFORM_WITHIN`` of it (a line
    four decades above the data would only squash them); its legend entry, or none."""
    values = (rows["mean"].astype(float) + rows["std"].astype(float).fillna(0)).dropna()
    if vocab is None or values.empty or values.max() < vocab / UNIFORM_WITHIN:
        return []
    line = ax.axhline(vocab, color="dimgrey", linestyle=":", linewidth=1.2)
    return [(line, f"uniform guess (ppl = vocabulary size {int(vocab)})")]


def _failed_entry(failed: list[str]) -> list[tuple]:
    """One legend entry (grey x) listing the failed seeds, each line once, at most ``MAX_FAILED_LINES``."""
    lines = list(dict.fromkeys(failed))
    if not lines:
        return []
    shown = lines[:MAX_FAILED_LINES] + ([f"... and {len(lines) - MAX_FAILED_LINES} more (see the table)"]
                                        if len(lines) > MAX_FAILED_LINES else [])
    return [(Line2D([], [], color="grey", marker="x", linestyle="none"),
             "failed seeds:\n" + "\n".join(shown))]


def ppl_vs_sparsity(frame: pd.DataFrame, title: str = "") -> Figure | None:
    """Perplexity vs sparsity, one panel per dataset with at least one valid value, one line per
    pruner, log y, ± std error bars over seeds, dense and uniform-guess lines (None: no data)."""
    ppl = frame[frame["metric"] == PPL.name]
    dropped = unavailable_everywhere(ppl)
    ppl = ppl[~ppl["dataset"].isin(list(dropped))]
    datasets = [d for d in ppl["dataset"].unique() if d != WHOLE_RUN]
    if ppl.empty or not datasets:
        return None
    ppl = aggregate(expand_failed(ppl, [(ds, PPL.name) for ds in datasets]))
    datasets = [d for d in datasets if (ppl.loc[ppl["dataset"] == d, "n"] > 0).any()]  # no empty panel
    if not datasets:
        return None
    ppl["row"] = row_labels(ppl)
    vocab = vocab_of(frame)[0]
    fig, axes = new_figure(len(datasets))
    entries, failed = [], []
    for ax, ds in zip(axes, datasets):
        rows = ppl[ppl["dataset"] == ds]
        got, lost = _sparsity_lines(ax, rows, log=True)
        entries += got + _uniform_guess(ax, rows, vocab)
        failed += lost
        style_axes(ax, SPARSITY_LABEL, "perplexity (log scale)", ds)
    return finish(fig, title or "Perplexity vs sparsity", entries + _failed_entry(failed))


def zeroshot_vs_sparsity(frame: pd.DataFrame, metric: str = ACC.name, title: str = "") -> Figure | None:
    """Mean zero-shot accuracy (%) vs sparsity, one line per pruner, ± std error bars over seeds
    (None: no zero-shot rows)."""
    zs = frame[((frame["dataset"] == ZEROSHOT_MEAN) & (frame["metric"] == metric))
               | ((frame["dataset"] == WHOLE_RUN) & (frame["status"] != "ok"))]
    if not (zs["dataset"] == ZEROSHOT_MEAN).any():
        return None
    zs = aggregate(expand_failed(zs, [(ZEROSHOT_MEAN, metric)]))
    if not (zs["n"] > 0).any():
        return None
    zs["row"] = row_labels(zs)
    fig, (ax,) = new_figure(1)
    entries, failed = _sparsity_lines(ax, zs, log=False, scale=100.0)
    style_axes(ax, SPARSITY_LABEL, f"mean zero-shot {metric} (%)")
    return finish(fig, title or f"Mean zero-shot {metric} vs sparsity", entries + _failed_entry(failed))


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


# Per-block panels: metric, y label, panel title (the update panel only where the store has it).
BLOCK_PANELS = [("rel_output_error", "relative error", r"$\Vert\hat{f}(X)-f(X)\Vert\,/\,\Vert f(X)\Vert$"),
                ("rel_update_error", "relative error",
                 r"$\Vert\hat{f}(X)-f(X)\Vert\,/\,\Vert f(X)-X\Vert$ (own update)")]


def block_errors(blocks: pd.DataFrame, sparsity: str, title: str = "") -> Figure | None:
    """Relative error per decoder block at ``sparsity``, one line per pruner (``layers`` as line
    style): relative to the block output and, where recorded, to the block's own update f(X) - X.
    The mean over seeds, ± std error bars where several seeds ran (None: no rows)."""
    sub = blocks[blocks["metric"].isin([m for m, _, _ in BLOCK_PANELS]) & (blocks["sparsity"] == sparsity)].copy()
    panels = [p for p in BLOCK_PANELS if (sub["metric"] == p[0]).any()]
    if sub.empty or not panels:
        return None
    sub["row"] = row_labels(sub)
    styles = layer_styles(sub["layers"])
    fig, axes = new_figure(len(panels))
    entries = []
    for ax, (metric, ylabel, panel) in zip(axes, panels):
        rows = sub[sub["metric"] == metric]
        positive = bool((rows.groupby(["row", "block"])["value"].mean() > 0).all())  # log axis only if all > 0
        for label in sorted(rows["row"].unique(), key=pruner_order):
            mine = rows[rows["row"] == label]
            per_block = mine.groupby("block")["value"]
            line = pd.DataFrame({"mean": per_block.mean(), "std": per_block.std(ddof=1), "n": per_block.count()})
            linestyle, marker = styles[str(mine["layers"].iloc[0])]
            common = {"marker": marker, "markersize": 3, "color": color(label), "linestyle": linestyle,
                      "label": label}
            if (line["n"] > 1).any():
                ax.errorbar(line.index, line["mean"], yerr=_yerr(line, 1.0, positive), capsize=2, **common)
            else:
                ax.plot(line.index, line["mean"], **common)
            entries.append((Line2D([], [], **common), label))
        if positive:
            log_y(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        style_axes(ax, "decoder block", ylabel + (" (log scale)" if positive else ""), panel)
    return finish(fig, title or f"Per-block relative error at sparsity {sparsity}", entries)
