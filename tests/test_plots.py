"""Figures for a paper, on a realistic synthetic store: no empty panel, no text outside the figure,
fonts >= 8 pt, one tick formatter per axis, layers as line styles, padded sparsity axis, reference lines."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from matplotlib.ticker import LogFormatterSciNotation, NullFormatter, ScalarFormatter

from runners.reporting import plots
from runners.reporting.plot_style import LogTicks, texts_outside
from runners.reporting.report import build_report, load_store
from tests.paper_store import COLUMNS, PROTO, paper_store


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """``(title, slug, frame, blocks)`` of the realistic store's one model/protocol."""
    (g,) = list(load_store(paper_store(tmp_path_factory.mktemp("paper") / "results")).groups())
    return g


def _figures(group) -> dict:
    title, _, frame, blocks = group
    return {"ppl": plots.ppl_vs_sparsity(frame, f"Perplexity vs sparsity: {title}"),
            "zeroshot": plots.zeroshot_vs_sparsity(frame, "acc", f"Mean zero-shot acc vs sparsity: {title}"),
            "blocks": plots.block_errors(blocks, "0.7", f"Per-block relative error at sparsity 0.7: {title}")}


def _tick_texts(axis) -> list[str]:
    from runners.reporting.plot_style import _drawn_ticklabels

    return [t.get_text() for t in _drawn_ticklabels(axis) if t.get_text()]


def test_no_text_outside_the_figure_and_fonts_readable(group):
    """Every drawn text (title, labels, ticks, legend, N:M labels) lies inside the figure, >= 8 pt."""
    for name, fig in _figures(group).items():
        assert fig is not None and texts_outside(fig) == [], name
        assert fig.get_size_inches()[0] <= 3 * 3.5 + 1e-9  # panels sized for a 3.5 in column


def test_texts_outside_catches_clipped_and_small_text():
    """The check itself: a label past the right edge and a 6 pt text are reported."""
    from runners.reporting.plot_style import new_figure

    fig, (ax,) = new_figure(1)
    ax.plot([0, 1], [0, 1])
    ax.text(1.3, 0.5, "3:4 clipped", transform=ax.transAxes, fontsize=9)
    ax.text(0.5, 0.5, "tiny", fontsize=6)
    bad = texts_outside(fig)
    assert any("3:4 clipped" in b and "outside" in b for b in bad) and any("tiny" in b and "6" in b for b in bad)


def test_one_formatter_per_axis(group):
    """Log axes: LogTicks (a LogFormatterSciNotation) as major and minor formatter, and the drawn labels
    all plain or all 10^k mathtext; linear axes: the scalar formatter, no minor labels."""
    for name, fig in _figures(group).items():
        texts_outside(fig)  # draws the figure: the tick labels exist
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                major, minor = axis.get_major_formatter(), axis.get_minor_formatter()
                if axis.get_scale() == "log":
                    assert type(major) is type(minor) is LogTicks and isinstance(major, LogFormatterSciNotation)
                    styles = {"\\times" in t or "^{" in t for t in _tick_texts(axis)}
                    assert len(styles) == 1, (name, _tick_texts(axis))
                else:
                    assert isinstance(major, ScalarFormatter) and isinstance(minor, NullFormatter), name
    ppl = _figures(group)["ppl"]
    assert all("^{" in t for t in _tick_texts(ppl.axes[0].yaxis))  # 20 ... 3.7e6: every label 10^k
    blocks = _figures(group)["blocks"]
    assert not any("^{" in t for t in _tick_texts(blocks.axes[0].yaxis))  # 0.03 ... 0.5: all plain


def test_no_empty_panel_and_reference_lines(group):
    """One panel per dataset with data (C4, unavailable everywhere, has none); dense and uniform-guess lines."""
    fig = _figures(group)["ppl"]
    assert [ax.get_title() for ax in fig.axes] == ["wikitext2", "ptb"]
    for ax in fig.axes:
        assert any(len(line.get_xdata()) > 1 for line in ax.get_lines())  # a data line, not only references
        ys = {round(float(line.get_ydata()[0]), 2) for line in ax.get_lines() if list(line.get_xdata()) == [0, 1]}
        assert 49152.0 in ys and ({21.61, 46.7} & ys)                      # axhline: uniform guess and dense
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "uniform guess (ppl = vocabulary size 49152)" in labels and "dense" in labels


def test_layers_scopes_have_their_own_line_style(group):
    """`sparsegpt layers=all` and `sparsegpt layers=first_half` share a colour but not a line style."""
    for name in ("ppl", "blocks"):
        ax = _figures(group)[name].axes[0]
        lines = [(c.get_label(), c.lines[0]) for c in ax.containers] + [(ln.get_label(), ln) for ln in ax.get_lines()]
        style = {label: (line.get_linestyle(), line.get_marker()) for label, line in lines
                 if label.startswith("sparsegpt") and len(line.get_xdata()) > 1}
        assert style["sparsegpt layers=all"] != style["sparsegpt layers=first_half"], name


def test_nm_labels_inside_the_axes(group):
    """The `2:4`/`3:4` labels lie inside their axes (the x-range is padded for them), once per panel."""
    fig = _figures(group)["ppl"]
    renderer = fig.canvas.get_renderer() if texts_outside(fig) == [] else None
    for ax in fig.axes:
        labels = [t for t in ax.texts if ":" in t.get_text()]
        assert sorted(t.get_text() for t in labels) == ["2:4", "3:4"]
        box = ax.get_window_extent(renderer)
        for t in labels:
            e = t.get_window_extent(renderer)
            assert box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1, t.get_text()


def test_one_sparsity_gets_a_sensible_x_range(tmp_path):
    """A single sparsity: ±0.1 around it with one tick there, not the ±0.01 of the error bars' shift."""
    from runners.execution import store
    for pruner, value in (("wanda", 35.0), ("sparsegpt", 33.0)):
        for seed in (0, 1):
            folder = store.run_dir(tmp_path, f"{pruner}{seed}")
            store.write_csv(folder / "metrics.csv", [{
                "run_id": f"{pruner}{seed}", "model": "tiny-llama", "pruner": pruner, "sparsity": "0.5",
                "layers": "all", **PROTO, "seed": seed, "dataset": "wikitext2", "metric": "ppl",
                "value": value + seed, "status": "ok", "message": ""}], COLUMNS)
            store.write_json(folder / "manifest.json", {"status": "ok", "run_key": {"calib": {}}})
    (_, _, frame, _), = list(load_store(tmp_path).groups())
    fig = plots.ppl_vs_sparsity(frame)
    lo, hi = fig.axes[0].get_xlim()
    assert (lo, hi) == (pytest.approx(0.4), pytest.approx(0.6)) and list(fig.axes[0].get_xticks()) == [0.5]
    assert texts_outside(fig) == []


def test_block_errors_two_panels_and_old_stores(group, tmp_path):
    """With rel_update_error: two panels (output, own update); a store without it: the output panel only."""
    fig = _figures(group)["blocks"]
    assert len(fig.axes) == 2 and "f(X)-X" in fig.axes[1].get_title()
    old = load_store(paper_store(tmp_path / "old", update_errors=False))
    (_, _, _, blocks), = list(old.groups())
    assert set(blocks["metric"]) == {"rel_output_error"}
    fig = plots.block_errors(blocks, "0.7")
    assert len(fig.axes) == 1 and texts_outside(fig) == []


def test_report_pngs_written_tight(group, tmp_path):
    """build_report writes the PNGs (cropped with bbox_inches='tight') and explains the update error."""
    results = paper_store(tmp_path / "r")
    text = build_report(results).read_text()
    pngs = sorted(p.name for p in (results / "report" / "plots").glob("*.png"))
    assert pngs == ["blocks__smollm2-135m__quick__s512__w40__0.7.png", "ppl__smollm2-135m__quick__s512__w40.png",
                    "zeroshot__smollm2-135m__quick__s512__w40.png"]
    assert "||f̂(X) − f(X)|| / ||f(X) − X||" in text
    assert all(math.isfinite(v) for v in pd.read_csv(results / "report" / "tables" / "aggregate.csv")["n"])
