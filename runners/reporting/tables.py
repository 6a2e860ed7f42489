"""Paper-layout tables from the results store's metric rows, rendered as Markdown, CSV and LaTeX.

A :class:`Table` holds the text of every cell (a number, or the run's status: ``nan``, ``oom``,
``unavailable``, ``error``; ``-`` where nothing was run) and a mask of the best value per
column. Cells aggregate the runs of every seed (runners/reporting/aggregate.py): ``35.00`` for one seed,
``35.00 ± 1.000 (n=3)`` (mean ± sample std over n seeds) for several, ``(n=2; 1 nan)`` when a seed
failed; every number has 4 significant digits, scientific at or above 1e5 (runners/reporting/formatting.py).
A perplexity above the model's vocabulary size ends in ``†`` (collapsed) and the table's notes
explain it; a dataset unavailable in every run has no column, and a note says why. "Best" is
taken by the mean among the pruned rows whose every seed gave a number (the
dense baseline would always win): the lowest perplexity, the highest accuracy. Markdown and
LaTeX (``$\\pm$``) show it in bold, CSV appends ``*`` to the cell. The label helpers live in
runners/reporting/labels.py and are re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from eval.metrics import ACC, METRICS, PPL, WHOLE_RUN, ZEROSHOT_MEAN, ZEROSHOT_NAMES
from runners.reporting.aggregate import aggregate, expand_failed
from runners.reporting.formatting import COLLAPSED, collapsed_note, dropped_note, is_collapsed, number, unavailable_everywhere
# GROUP, VARYING, normalize, sparsity_ratio: re-exported for code that imported them from here.
from runners.reporting.labels import (GROUP, VARYING, is_dense, normalize, pruner_order, row_labels,  # noqa: F401
                     sparsity_label, sparsity_order, sparsity_ratio)

MISSING = "-"


def cell(value: float, status: str) -> str:
    """Text of one single-run cell: the number when the row is ok, else its status."""
    return number(value) if status == "ok" and pd.notna(value) else str(status)


@dataclass
class Table:
    """Cell texts and best-value mask over the same rows and columns."""

    title: str
    text: pd.DataFrame   # strings; columns may be a two-level (group, column) MultiIndex
    best: pd.DataFrame   # bools, same shape
    index_name: str | None = "pruner"
    notes: list[str] = field(default_factory=list)  # footnotes: collapsed marker, left-out datasets


def _grid(entries: dict, rows: list[str], columns: list, lower_is_better: bool, scale: float,
          title: str, vocab: float | None = None) -> Table:
    """Build a Table from ``{(row, column): Stat}``; best (by mean) among pruned cells whose every seed
    is ok; a mean above ``vocab`` (perplexity tables only) gets the collapsed marker."""
    index = pd.MultiIndex.from_tuples(columns) if columns and isinstance(columns[0], tuple) else pd.Index(columns)
    text = pd.DataFrame(MISSING, index=pd.Index(rows, name="pruner"), columns=index, dtype=object)
    best = pd.DataFrame(False, index=text.index, columns=index)
    for (row, col), stat in entries.items():
        text.loc[row, col] = stat.text(scale, COLLAPSED if stat.n and is_collapsed(stat.mean, vocab) else "")
    for col in columns:
        good = {r: entries[(r, col)].mean for r in rows if not is_dense(r) and (r, col) in entries
                and entries[(r, col)].rankable}
        if good:
            target = min(good.values()) if lower_is_better else max(good.values())
            for r, v in good.items():
                best.loc[r, col] = v == target
    return Table(title, text, best)


def vocab_of(frame: pd.DataFrame) -> tuple[float | None, str, str]:
    """``(vocabulary size, model, where it came from)`` as report.load_store attached it to the rows
    (``vocab_size``/``vocab_source`` columns); ``(None, "", "")`` when it did not."""
    if "vocab_size" not in frame or frame["vocab_size"].isna().all():
        return None, "", ""
    first = frame[frame["vocab_size"].notna()].iloc[0]
    return float(first["vocab_size"]), str(first.get("model", "")), str(first.get("vocab_source", ""))


def ppl_grid(frame: pd.DataFrame, title: str = "Perplexity") -> Table:
    """One model/protocol: rows = pruner (dense on top), columns = (sparsity, dataset) perplexity,
    each cell aggregated over seeds (``mean ± std (n=3)``; the plain value for a single seed).
    Datasets unavailable in every run get no column (a note instead); a perplexity above the
    vocabulary size (``vocab_size`` column, see :func:`vocab_of`) is marked collapsed."""
    ppl = frame[frame["metric"] == PPL.name].copy()
    ppl["sparsity"], ppl["status"] = ppl["sparsity"].map(sparsity_label), ppl["status"].astype(str)
    dropped = unavailable_everywhere(ppl)
    ppl = ppl[~ppl["dataset"].isin(list(dropped))]
    datasets = [d for d in ppl["dataset"].unique() if d != WHOLE_RUN]
    agg = aggregate(expand_failed(ppl, [(ds, PPL.name) for ds in datasets]))  # a failed run fills its row
    agg["row"] = row_labels(agg)
    pruned = agg[~agg["pruner"].map(is_dense).astype(bool)]
    sparsities = sorted(pruned["sparsity"].unique(), key=sparsity_order) or ["0"]
    entries = {}
    for _, r in agg.iterrows():
        for sp in sparsities if is_dense(r["pruner"]) else [r["sparsity"]]:
            entries[(r["row"], (sp, r["dataset"]))] = r["stat"]
    rows = sorted(agg["row"].unique(), key=pruner_order)
    vocab, model, source = vocab_of(frame)
    table = _grid(entries, rows, [(sp, ds) for sp in sparsities for ds in datasets],
                  not PPL.higher_is_better, 1.0, title, vocab)
    if any(COLLAPSED in str(v) for v in table.text.to_numpy().ravel()):
        table.notes.append(collapsed_note(int(vocab), model, source))
    table.notes += [dropped_note(ds, msg) for ds, msg in dropped.items()]
    return table


def ppl_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Cell texts of :func:`ppl_grid` (no best marker), rows dense first then alphabetical."""
    text = ppl_grid(frame).text
    return text.loc[sorted(text.index, key=lambda name: (not is_dense(name), name))]


def _zeroshot_order(label: str) -> tuple:
    """Sort key of a zero-shot row label ``<pruner> <sparsity> ...``: pruner order, then sparsity."""
    head = label.split(" ")
    sp = sparsity_order(head[1]) if len(head) > 1 and not is_dense(label) else (0, 0.0, 0)
    return pruner_order(head[0]), sp, label  # the pruner word alone: its rank, then the sparsity


def zeroshot_grid(frame: pd.DataFrame, metric: str = ACC.name, title: str | None = None) -> Table | None:
    """Rows = pruner and sparsity (dense on top), columns = tasks then their mean, in %, aggregated
    over seeds (None: no tasks)."""
    dropped = unavailable_everywhere(frame, ZEROSHOT_NAMES)
    tasks = [d for d in frame.loc[frame["metric"].isin(ZEROSHOT_NAMES), "dataset"].unique()
             if d not in (ZEROSHOT_MEAN, WHOLE_RUN) and d not in dropped]
    if not tasks or not (frame["metric"] == metric).any():
        return None
    zs = frame[frame["dataset"].isin(tasks + [ZEROSHOT_MEAN]) | (frame["dataset"] == WHOLE_RUN)]
    zs = zs[(zs["metric"] == metric) | ((zs["dataset"] == WHOLE_RUN) & (zs["status"] != "ok"))]
    agg = aggregate(expand_failed(zs, [(t, metric) for t in tasks + [ZEROSHOT_MEAN]]))
    agg["row"] = row_labels(agg, with_sparsity=True)
    entries = {(r["row"], "mean" if r["dataset"] == ZEROSHOT_MEAN else r["dataset"]): r["stat"]
               for _, r in agg.iterrows()}
    rows = sorted(agg["row"].unique(), key=_zeroshot_order)
    table = _grid(entries, rows, tasks + ["mean"], not METRICS[metric].higher_is_better,
                  100.0 if METRICS[metric].percent else 1.0, title or f"Zero-shot {metric} (%)")
    table.notes += [dropped_note(ds, msg) for ds, msg in dropped.items()]
    return table


def _flat_columns(table: Table) -> list[str]:
    cols = table.text.columns
    return [" ".join(map(str, c)) for c in cols] if isinstance(cols, pd.MultiIndex) else [str(c) for c in cols]


def _marked(table: Table, mark) -> pd.DataFrame:
    out = table.text.copy()
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            if table.best.iat[i, j]:
                out.iat[i, j] = mark(out.iat[i, j])
    out.columns = _flat_columns(table)
    return out


def to_markdown(table: Table | pd.DataFrame) -> str:
    """Markdown with columns ``"<sparsity> <dataset>"``; best values in bold (the table only: the
    notes are rendered by :func:`notes_markdown`)."""
    if isinstance(table, pd.DataFrame):  # a plain cell-text table
        table = Table("", table, pd.DataFrame(False, index=table.index, columns=table.columns))
    out = _marked(table, lambda s: f"**{s}**")
    out = out.reset_index() if table.index_name else out
    # numparse off: tabulate would rewrite the cells' numbers (3.702e+06 -> 3.70222e+06, 30.00 -> 30)
    return out.to_markdown(index=False, disable_numparse=True)


def notes_markdown(table: Table) -> str:
    """The table's notes as Markdown lines ("" without notes)."""
    return "\n".join(f"- {n}" for n in table.notes)


def to_csv(table: Table) -> str:
    """CSV with flat ``"<sparsity> <dataset>"`` columns; best values get a trailing ``*``."""
    out = _marked(table, lambda s: f"{s}*")
    return out.reset_index().to_csv(index=False) if table.index_name else out.to_csv(index=False)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", COLLAPSED: r"$^\dagger$",
          "`": ""}


def latex_escape(text: object) -> str:
    """Escape LaTeX's special characters in a cell."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A booktabs ``tabular``; best values in ``\\textbf``; a two-level header for (sparsity, dataset)."""
    text = table.text
    cols, multi = text.columns, isinstance(text.columns, pd.MultiIndex)
    lead = [table.index_name] if table.index_name else []
    lines = [f"% {table.title}", "% needs \\usepackage{booktabs}",
             "\\begin{tabular}{" + "l" * len(lead) + "r" * len(cols) + "}", "\\toprule"]
    if multi:
        start, head, rules = 0, [], []
        for key in dict.fromkeys(c[0] for c in cols):
            width = sum(c[0] == key for c in cols)
            head.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(key)}}}")
            rules.append(f"\\cmidrule(lr){{{start + len(lead) + 1}-{start + len(lead) + width}}}")
            start += width
        lines += [" & ".join([""] * len(lead) + head) + " \\\\", " ".join(rules)]
        names = [c[1] for c in cols]
    else:
        names = list(cols)
    lines += [" & ".join(latex_escape(n) for n in lead + names) + " \\\\", "\\midrule"]
    for i, row in enumerate(text.index):
        cells = [latex_escape(v).replace("±", "$\\pm$") for v in text.iloc[i]]
        cells = [f"\\textbf{{{c}}}" if table.best.iat[i, j] else c for j, c in enumerate(cells)]
        lines.append(" & ".join(([latex_escape(row)] if lead else []) + cells) + " \\\\")
        if is_dense(str(row)) and i < len(text.index) - 1 and not is_dense(str(text.index[i + 1])):
            lines.append("\\midrule")
    lines.append("\\bottomrule")
    width = len(lead) + len(cols)  # footnotes span the whole table, under the rule
    lines += [f"\\multicolumn{{{width}}}{{l}}{{\\footnotesize {latex_escape(n)}}} \\\\" for n in table.notes]
    return "\n".join(lines + ["\\end{tabular}", ""])
