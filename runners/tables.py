"""Paper-layout tables from the results store's metric rows, rendered as Markdown, CSV and LaTeX.

A :class:`Table` holds the text of every cell (a number, or the run's status: ``nan``, ``oom``,
``unavailable``, ``error``; ``-`` where nothing was run) and a mask of the best value per
column. "Best" is taken among the pruned rows only (the dense baseline would always win):
the lowest perplexity, the highest accuracy. Markdown and LaTeX show it in bold, CSV appends
``*`` to the cell.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

GROUP = ["model", "protocol", "eval_seqlen", "eval_max_windows"]
VARYING = ["layers", "calib_nsamples", "calib_seqlen", "seed"]
PRUNER_ORDER = ["dense", "magnitude", "wanda", "sparsegpt", "sparsellm"]
MISSING = "-"


def cell(value: float, status: str) -> str:
    """Text of one table cell: the number when the row is ok, else its status."""
    return f"{value:.2f}" if status == "ok" and pd.notna(value) else str(status)


def sparsity_label(value: object) -> str:
    """Canonical sparsity text (``0.5``, ``2:4``, ``0`` for dense) whatever pandas parsed it as."""
    text = str(value).strip()
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


def sparsity_ratio(label: str) -> float:
    """Fraction of zeros of a sparsity label: ``0.7`` -> 0.7, ``3:4`` -> 0.75."""
    if ":" in label:
        n, m = label.split(":")
        return int(n) / int(m)
    return float(label)


def sparsity_order(label: str) -> tuple:
    """Sort key: unstructured by ratio first, then N:M patterns by ratio."""
    return (1, sparsity_ratio(label), int(label.split(":")[1])) if ":" in label else (0, float(label), 0)


def pruner_order(name: str) -> tuple:
    """Sort key of a row label: dense first, then the methods in the papers' order, then the rest."""
    head = name.split(" ")[0]
    return (PRUNER_ORDER.index(head) if head in PRUNER_ORDER else len(PRUNER_ORDER), head, name)


def normalize(metrics: pd.DataFrame) -> pd.DataFrame:
    """Metric rows with canonical text for sparsity/layers/status and ``all`` for unlimited windows."""
    out = metrics.copy()
    out["sparsity"] = out["sparsity"].map(sparsity_label)
    for col in ("layers", "status", "dataset", "metric", "pruner", "model", "protocol"):
        out[col] = out[col].astype(str)
    out["eval_max_windows"] = out["eval_max_windows"].map(
        lambda v: "all" if pd.isna(v) or str(v) in ("", "None") else str(int(float(v))))
    out["message"] = out["message"].fillna("").astype(str) if "message" in out else ""
    return out


def row_labels(frame: pd.DataFrame, with_sparsity: bool = False) -> pd.Series:
    """Row label of every metric row: the pruner (and sparsity), plus whatever else varies."""
    pruned = frame[frame["pruner"] != "dense"]
    varying = [c for c in VARYING if pruned[c].astype(str).nunique() > 1]

    def label(r) -> str:
        if r["pruner"] == "dense":
            return "dense"
        text = r["pruner"] + (f" {r['sparsity']}" if with_sparsity else "")
        return text + "".join(f" {c}={r[c]}" for c in varying)
    return frame.apply(label, axis=1) if len(frame) else pd.Series(dtype=str)


@dataclass
class Table:
    """Cell texts and best-value mask over the same rows and columns."""

    title: str
    text: pd.DataFrame   # strings; columns may be a two-level (group, column) MultiIndex
    best: pd.DataFrame   # bools, same shape
    index_name: str | None = "pruner"


def _grid(entries: dict, rows: list[str], columns: list, lower_is_better: bool, scale: float,
          title: str) -> Table:
    """Build a Table from ``{(row, column): (value, status)}``; best among non-dense ok cells."""
    index = pd.MultiIndex.from_tuples(columns) if columns and isinstance(columns[0], tuple) else pd.Index(columns)
    text = pd.DataFrame(MISSING, index=pd.Index(rows, name="pruner"), columns=index, dtype=object)
    best = pd.DataFrame(False, index=text.index, columns=index)
    for (row, col), (value, status) in entries.items():
        ok = status == "ok" and pd.notna(value) and math.isfinite(float(value))
        text.loc[row, col] = f"{float(value) * scale:.2f}" if ok else str(status)
    for col in columns:
        good = {r: float(entries[(r, col)][0]) for r in rows if r != "dense" and (r, col) in entries
                and entries[(r, col)][1] == "ok" and pd.notna(entries[(r, col)][0])
                and math.isfinite(float(entries[(r, col)][0]))}
        if good:
            target = min(good.values()) if lower_is_better else max(good.values())
            for r, v in good.items():
                best.loc[r, col] = v == target
    return Table(title, text, best)


def ppl_grid(frame: pd.DataFrame, title: str = "Perplexity") -> Table:
    """One model/protocol: rows = pruner (dense on top), columns = (sparsity, dataset) perplexity."""
    ppl = frame[frame["metric"] == "ppl"].copy()
    ppl["sparsity"], ppl["status"] = ppl["sparsity"].map(sparsity_label), ppl["status"].astype(str)
    ppl["row"] = row_labels(ppl)
    pruned = ppl[ppl["pruner"] != "dense"]
    sparsities = sorted(pruned["sparsity"].unique(), key=sparsity_order) or ["0"]
    datasets = [d for d in ppl["dataset"].unique() if d != "all"]
    entries = {}
    for _, r in ppl.iterrows():
        for sp in sparsities if r["pruner"] == "dense" else [r["sparsity"]]:
            for ds in datasets if r["dataset"] == "all" else [r["dataset"]]:  # a failed run fills its row
                entries[(r["row"], (sp, ds))] = (r["value"], r["status"])
    rows = sorted(ppl["row"].unique(), key=pruner_order)
    return _grid(entries, rows, [(sp, ds) for sp in sparsities for ds in datasets], True, 1.0, title)


def ppl_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Cell texts of :func:`ppl_grid` (no best marker), rows dense first then alphabetical."""
    text = ppl_grid(frame).text
    return text.loc[sorted(text.index, key=lambda name: (not name.startswith("dense"), name))]


def zeroshot_grid(frame: pd.DataFrame, metric: str = "acc", title: str | None = None) -> Table | None:
    """Rows = pruner and sparsity (dense on top), columns = tasks then their mean, in % (None: no tasks)."""
    tasks = [d for d in frame.loc[frame["metric"].isin(["acc", "acc_norm"]), "dataset"].unique()
             if d not in ("zeroshot_mean", "all")]
    if not tasks or not (frame["metric"] == metric).any():
        return None
    zs = frame[frame["dataset"].isin(tasks + ["zeroshot_mean"]) | (frame["dataset"] == "all")]
    zs = zs[(zs["metric"] == metric) | (zs["status"] != "ok")].copy()
    zs["row"] = row_labels(zs, with_sparsity=True)
    columns = tasks + ["mean"]
    entries = {}
    for _, r in zs.iterrows():
        name = "mean" if r["dataset"] == "zeroshot_mean" else r["dataset"]
        for col in columns if r["dataset"] == "all" else [name]:
            entries[(r["row"], col)] = (r["value"], r["status"])
    rows = sorted(zs["row"].unique(), key=lambda n: (pruner_order(n)[:2], sparsity_order(n.split(" ")[1])
                                                     if " " in n else (0, 0.0, 0), n))
    return _grid(entries, rows, columns, False, 100.0, title or f"Zero-shot {metric} (%)")


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
    """Markdown with columns ``"<sparsity> <dataset>"``; best values in bold."""
    legacy = isinstance(table, pd.DataFrame)  # summarize's plain cell-text table: tabulate reformats numbers
    if legacy:
        table = Table("", table, pd.DataFrame(False, index=table.index, columns=table.columns))
    out = _marked(table, lambda s: f"**{s}**")
    out = out.reset_index() if table.index_name else out
    return out.to_markdown(index=False, disable_numparse=not legacy)


def to_csv(table: Table) -> str:
    """CSV with flat ``"<sparsity> <dataset>"`` columns; best values get a trailing ``*``."""
    out = _marked(table, lambda s: f"{s}*")
    return out.reset_index().to_csv(index=False) if table.index_name else out.to_csv(index=False)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


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
        cells = [latex_escape(v) for v in text.iloc[i]]
        cells = [f"\\textbf{{{c}}}" if table.best.iat[i, j] else c for j, c in enumerate(cells)]
        lines.append(" & ".join(([latex_escape(row)] if lead else []) + cells) + " \\\\")
        if row == "dense" and i < len(text.index) - 1:
            lines.append("\\midrule")
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}", ""])
