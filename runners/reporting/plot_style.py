"""Paper style of the report's figures: font sizes, tick formatters, line styles, legend, layout, saving.

The figures are sized per panel for a 3.5 in column (``PANEL``) with fonts of at least 8 pt
(``SIZES``), set explicitly on every artist rather than through rcParams (tick labels are made
lazily, at draw time, when an ``rc_context`` would be gone). A log axis gets one formatter class,
:class:`LogTicks`, for its major and its minor ticks, so its labels are all plain (``20``,
``300``) or all ``10^k`` mathtext, never mixed. The legend is one figure legend under the panels
(``outside lower center``: constrained layout makes room for it), and titles are wrapped to the
figure's width, so no text leaves the figure; :func:`texts_outside` checks that, and :func:`save`
writes the PNG with ``bbox_inches="tight"``.
"""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text
from matplotlib.ticker import LogFormatterSciNotation

from runners import registry

PANEL = (3.5, 2.6)  # inches per panel: one column of a two-column paper
SIZES = {"title": 10.0, "panel": 9.5, "label": 9.0, "tick": 8.5, "legend": 8.5, "note": 8.0}
MIN_PT = 8.0
# ``layers`` scopes: all blocks solid with circles; the others dashed/dotted with other markers.
LAYER_STYLES = [("-", "o"), ((0, (5, 2)), "^"), (":", "v"), ("-.", "D")]
PLAIN_RANGE = (1e-3, 1e5)  # a log axis inside this range is labelled in plain numbers (as the tables)


def color(label: str) -> str:
    """A stable colour per pruner label (the first word of a row label): its pruner config's
    ``color``, else one from a cycle (runners/registry.py)."""
    return registry.color(label.split(" ")[0])


def layer_styles(values) -> dict:
    """``{layers value: (linestyle, marker)}``: ``all`` first (solid), the other scopes after it."""
    ordered = sorted(dict.fromkeys(map(str, values)), key=lambda v: (v != "all", v))
    return {v: LAYER_STYLES[i % len(LAYER_STYLES)] for i, v in enumerate(ordered)}


class LogTicks(LogFormatterSciNotation):
    """Matplotlib's choice of which log ticks to label, all in one style per axis: plain numbers
    (``60``, ``0.04``) when the axis' whole view lies in ``PLAIN_RANGE``, else ``10^k`` mathtext."""

    def __call__(self, x, pos=None):
        text = super().__call__(x, pos)
        lo, hi = sorted(self.axis.get_view_interval()) if self.axis is not None else (x, x)
        plain = PLAIN_RANGE[0] <= lo and hi < PLAIN_RANGE[1]
        return f"{x:g}" if text and plain else text


def log_y(ax) -> None:
    """Log y axis with :class:`LogTicks` as major and minor formatter (minor labelled on short ranges)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogTicks())
    ax.yaxis.set_minor_formatter(LogTicks(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def style_axes(ax, xlabel: str, ylabel: str, title: str = "") -> None:
    """Axis labels, panel title, tick label sizes and a light grid, all at the paper sizes."""
    ax.set_xlabel(xlabel, fontsize=SIZES["label"])
    ax.set_ylabel(ylabel, fontsize=SIZES["label"])
    if title:
        ax.set_title(title, fontsize=SIZES["panel"])
    ax.tick_params(axis="both", which="both", labelsize=SIZES["tick"])
    ax.grid(True, which="major", alpha=0.3)


def new_figure(panels: int, max_cols: int = 3) -> tuple[Figure, list]:
    """A constrained-layout figure with one ``PANEL``-sized axes per panel, up to ``max_cols`` a row."""
    cols = min(panels, max_cols)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)  # a canvas to measure text with (texts_outside) without pyplot
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]


def _wrap(text: str, width_in: float, size: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``size`` pt (about 0.55 em a character)."""
    per_line = max(20, int(width_in * 72 / (0.55 * size)))
    return "\n".join(textwrap.fill(part, per_line) for part in text.split("\n"))


def _legend_columns(labels: list[str], width_in: float) -> tuple[int, int]:
    """``(columns, entries per column)``: the most columns whose estimated width fits ``width_in``.
    A legend fills column by column; a column is as wide as its longest line (about 0.55 em a
    character at the legend size) plus the handle and padding (0.6 in)."""
    char = 0.55 * SIZES["legend"] / 72
    best = (1, len(labels))
    for ncols in range(1, len(labels) + 1):
        per_col = math.ceil(len(labels) / ncols)
        chunks = [labels[i:i + per_col] for i in range(0, len(labels), per_col)]
        total = sum(max(len(line) for lb in chunk for line in lb.split("\n")) * char + 0.6 for chunk in chunks)
        if total > width_in:
            break
        best = (len(chunks), per_col)
    return best


def finish(fig: Figure, title: str, entries: list[tuple]) -> Figure:
    """Add the wrapped title and one figure legend under the panels (``entries``: ``(handle, label)``
    pairs, the first handle of each label kept; a label may have several lines), then grow the
    figure's height by what the title and legend take, so the axes keep their size."""
    width, height = fig.get_size_inches()
    fig.suptitle(_wrap(title, width, SIZES["title"]), fontsize=SIZES["title"])
    seen = {}
    for handle, label in entries:
        seen.setdefault(label, handle)
    if seen:
        labels = list(seen)
        ncols, per_col = _legend_columns(labels, width)
        fig.legend(list(seen.values()), labels, loc="outside lower center", ncols=ncols,
                   fontsize=SIZES["legend"], frameon=False)
        lines = max(sum(lb.count("\n") + 1 for lb in labels[i:i + per_col]) for i in range(0, len(labels), per_col))
        title_lines = fig.get_suptitle().count("\n") + 1
        fig.set_size_inches(width, height + 0.17 * lines + 0.17 * title_lines)
    return fig


def _drawn_ticklabels(axis) -> list[Text]:
    """The tick labels matplotlib draws: those of ticks inside the view interval (a locator also
    returns ticks beyond it, whose labels keep stale positions and are never drawn)."""
    lo, hi = sorted(axis.get_view_interval())
    slack = 1e-9 * max(abs(lo), abs(hi), 1e-300)
    out = []
    for ticks, locs in ((axis.get_major_ticks(), axis.get_majorticklocs()),
                        (axis.get_minor_ticks(), axis.get_minorticklocs())):
        out += [t.label1 for t, loc in zip(ticks, locs) if lo - slack <= loc <= hi + slack]
    return out


def texts_outside(fig: Figure, tolerance: float = 1.0) -> list[str]:
    """Every drawn text (titles, labels, tick labels, legend, annotations) whose window extent is not
    inside the figure (by more than ``tolerance`` pixels), as ``'text' (x0, y0, x1, y1)``; also the
    texts smaller than ``MIN_PT``. Empty: nothing is clipped."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts, *_drawn_ticklabels(ax.xaxis),
                  *_drawn_ticklabels(ax.yaxis)]
    for legend in fig.findobj(Legend):
        texts += legend.get_texts()
    box, bad = fig.bbox, []
    for t in texts:
        if not isinstance(t, Text) or not t.get_visible() or not t.get_text().strip():
            continue
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - tolerance or e.y0 < box.y0 - tolerance or e.x1 > box.x1 + tolerance \
                or e.y1 > box.y1 + tolerance:
            bad.append(f"{t.get_text()!r} ({e.x0:.0f}, {e.y0:.0f}, {e.x1:.0f}, {e.y1:.0f}) outside {box.bounds}")
        if t.get_fontsize() < MIN_PT:
            bad.append(f"{t.get_text()!r}: {t.get_fontsize()} pt < {MIN_PT} pt")
    return bad


def save(fig: Figure, path: str | os.PathLike, dpi: int = 200) -> Path:
    """Write ``fig`` as PNG atomically (temporary name, then rename), cropped to its tight bounding box."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.04)
    os.replace(tmp, path)
    return path
