"""Tables, plots and ``report.md`` from the results store, and the summary printed after a sweep.

Usage: ``python -m runners.reporting.report [results.dir=PATH] [report.compare=true]
[report.block_sparsity=0.7] [report.reference=PATH]``. Reads only the results store
(``<results.dir>/runs``) and, with ``report.compare=true``, the published reference numbers
(``results/reference/published.csv``); writes ``<results.dir>/summary.csv`` and
``<results.dir>/report/`` (``report.md``, ``tables/*.md|csv|tex``, ``plots/*.png``).
Table layout: rows = pruner (the dense baseline on top), columns = sparsity x dataset.
A cell shows the perplexity (``mean ± std (n=3)`` over calibration seeds when several ran), or
the run's status (``nan``, ``oom``, ``unavailable``, ``error``) when there is no valid number:
a failed run never shows as a number. Also written: ``tables/aggregate.csv`` (every
configuration x dataset x metric: mean, std, n) and ``tables/paired_<group>.md|csv`` (paired
differences between pruners over common seeds, with 95% t-intervals).
"""
from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from eval.metrics import ACC, PPL, ZEROSHOT_NAMES
from runners.reporting import plots
from runners.reporting.aggregate import long_table, paired_differences, paired_text
from runners.reporting.compare import REFERENCE, compare, comparison_table, load_published, nearest_published
from runners.reporting.formatting import unavailable_everywhere, vocab_size
from runners.reporting.leaderboard import allocation_section, leaderboard_section
from runners.reporting.speed import speed_section
from runners.reporting.report_text import fallback_section, note_lines, protocol_lines  # noqa: F401  (protocol_lines: notebook)
from runners.execution.store import atomic_write_text, load_metrics, read_manifest
from runners.tool_config import Results, SettingError, Tool, parse, setting, valid_sparsity
from runners.reporting.tables import (GROUP, VARYING, Table, normalize, notes_markdown, ppl_grid, ppl_table, sparsity_label,
                     to_csv, to_latex, to_markdown, zeroshot_grid)

IDENTITY = ["run_id", "model", "pruner", "sparsity", *VARYING, "protocol", "eval_seqlen", "eval_max_windows",
            "seed"]
FALLBACK = "fallback:"  # blocks.csv metric prefix: ``fallback:<kind>``, value = count in that block
FALLBACK_COLUMNS = ["run_id", "block", "kind", "value"]
# Per-block diagnostics the report plots; stores from before rel_update_error have only the first.
BLOCK_METRICS = ("rel_output_error", "rel_update_error")


def with_vocab(metrics: pd.DataFrame, manifests: dict) -> pd.DataFrame:
    """The rows plus ``vocab_size`` and ``vocab_source`` per model (runners/formatting.vocab_size over
    that model's manifests), which mark collapsed perplexities in tables and plots."""
    if metrics.empty:
        return metrics
    found = {model: vocab_size(model, [manifests[r] for r in dict.fromkeys(g["run_id"]) if r in manifests])
             for model, g in metrics.groupby("model", sort=False)}
    return metrics.assign(vocab_size=metrics["model"].map(lambda m: found[m][0]),
                          vocab_source=metrics["model"].map(lambda m: found[m][1]))


def without_dropped(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows minus those of datasets unavailable in every run of their model/protocol: their
    message is already given once under the table they are left out of, not again in the notes."""
    if metrics.empty:
        return metrics
    keep = pd.Series(True, index=metrics.index)
    for _, g in metrics.groupby(GROUP, sort=False):
        for kind in ((PPL.name,), ZEROSHOT_NAMES):
            dropped = list(unavailable_everywhere(g, kind))
            keep[g.index[g["metric"].isin(kind) & g["dataset"].isin(dropped)]] = False
    return metrics[keep]


def summarize(results_dir: str | Path) -> str:
    """Write ``<results_dir>/summary.csv``; return the Markdown tables (one per model/protocol)."""
    metrics = load_metrics(results_dir)
    if metrics.empty:
        return f"no finished runs in {Path(results_dir) / 'runs'}"
    # the raw rows, one per run; atomic, so a kill or a full disk keeps the previous summary.csv
    atomic_write_text(Path(results_dir) / "summary.csv", metrics.to_csv(index=False))
    manifests = {f.name: m for f in sorted((Path(results_dir) / "runs").glob("*"))
                 if f.is_dir() and (m := read_manifest(f)) is not None}
    metrics = with_vocab(normalize(metrics), manifests)
    parts = []
    for key, frame in metrics.groupby(GROUP, dropna=False, sort=True):
        title = ", ".join(f"{k}={v}" for k, v in zip(GROUP, key))
        notes = notes_markdown(ppl_grid(frame))  # the collapsed marker and left-out datasets
        parts.append(f"### Perplexity ({title})\n\n{to_markdown(ppl_table(frame))}\n"
                     + (f"\n{notes}\n" if notes else ""))
    notes = note_lines(without_dropped(metrics), with_ids=False)
    if notes:
        parts.append("Notes:\n" + "\n".join(notes))
    return "\n".join(parts)


@dataclass
class Store:
    """What a report reads: metric rows (normalized, with each model's ``vocab_size``), per-block
    errors (``rel_output_error`` and, in newer stores, ``rel_update_error`` rows with each run's
    identity columns), numerical fallbacks per block (``run_id, block, kind, value``), and each
    run's manifest."""

    metrics: pd.DataFrame
    blocks: pd.DataFrame
    manifests: dict = field(default_factory=dict)
    fallbacks: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FALLBACK_COLUMNS))

    def groups(self):
        """``(title, slug, metric rows, block rows)`` per model and evaluation protocol."""
        if self.metrics.empty:
            return
        for key, frame in self.metrics.groupby(GROUP, sort=True):
            model, protocol, seqlen, windows = key
            title = f"{model}, protocol {protocol} (eval seqlen {seqlen}, {windows} windows)"
            slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}__{protocol}__s{seqlen}__w{windows}")
            blocks = self.blocks[self.blocks["run_id"].isin(frame["run_id"])] if not self.blocks.empty \
                else self.blocks
            yield title, slug, frame, blocks


def load_store(results_dir: str | Path) -> Store:
    """Read every complete run of ``<results_dir>/runs`` (metrics, blocks.csv errors and fallbacks, manifests)."""
    raw = load_metrics(results_dir)
    metrics = normalize(raw) if not raw.empty else raw
    manifests, frames, falls = {}, [], []
    for folder in sorted((Path(results_dir) / "runs").glob("*")):
        manifest = read_manifest(folder)
        if manifest is None or not (folder / "metrics.csv").exists():
            continue
        manifests[folder.name] = manifest
        if (folder / "blocks.csv").exists():
            blocks = pd.read_csv(folder / "blocks.csv")
            metric = blocks["metric"].astype(str)
            frames.append(blocks[metric.isin(BLOCK_METRICS)].assign(run_id=folder.name))
            fall = blocks[metric.str.startswith(FALLBACK)]
            falls.append(pd.DataFrame({"run_id": folder.name, "block": fall["block"].astype(int),
                                       "kind": fall["metric"].str[len(FALLBACK):],
                                       "value": pd.to_numeric(fall["value"], errors="coerce").fillna(0)}))
    blocks = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["block", "metric", "value"])
    if not metrics.empty and frames:
        ids = metrics[IDENTITY].drop_duplicates("run_id")
        blocks = blocks.drop_duplicates(["run_id", "block", "metric"], keep="last").merge(ids, on="run_id")
    else:
        blocks = blocks.assign(**{c: pd.Series(dtype=object) for c in IDENTITY if c not in blocks})
    fallbacks = pd.concat(falls, ignore_index=True) if falls else pd.DataFrame(columns=FALLBACK_COLUMNS)
    return Store(with_vocab(metrics, manifests), blocks, manifests, fallbacks)


def _write_table(table: Table, folder: Path, name: str, shown: set | None = None) -> str:
    """Write ``name``.md/.csv/.tex; return the Markdown (and its notes) plus links to the three files.
    The CSV holds the cells only (so it parses); the notes go under the Markdown and LaTeX tables.
    ``shown``: notes report.md already gives (e.g. under the acc table, for the acc_norm one), which
    the returned text leaves out; the ones it adds are put in it."""
    md = to_markdown(table)
    notes = notes_markdown(table)
    atomic_write_text(folder / f"{name}.md", f"{table.title}\n\n{md}\n" + (f"\n{notes}\n" if notes else ""))
    atomic_write_text(folder / f"{name}.csv", to_csv(table))
    atomic_write_text(folder / f"{name}.tex", to_latex(table))
    links = " ".join(f"[{ext}](tables/{name}.{ext})" for ext in ("md", "csv", "tex"))
    shown = set() if shown is None else shown
    new = [n for n in table.notes if n not in shown]
    shown.update(new)
    lines = "\n".join(f"- {n}" for n in new)
    return md + (f"\n\n{lines}" if lines else "") + f"\n\nFiles: {links}\n"


def _plot(fig, plot_dir: Path, name: str, alt: str) -> str:
    """Save ``fig`` as ``plots/<name>.png``; return its Markdown image line ("" when there is no figure)."""
    if fig is None:
        return ""
    plots.save(fig, plot_dir / f"{name}.png")
    return f"![{alt}](plots/{name}.png)\n"


PAIRED_NOTE = ("Per pair of pruners A, B at the same sparsity, layers, dataset and metric: the differences "
               "A - B over the calibration seeds both ran (the same seed gives both the same calibration "
               "windows), their mean and sample std, and the 95% t-interval mean ± t(0.975, n-1) · sd / √n "
               "(n/a with fewer than 2 seeds). Perplexity: negative means A is better; accuracy (in %): "
               "positive means A is better. **A difference whose interval includes 0 is not a result.**")


def _paired_section(frame: pd.DataFrame, folder: Path, slug: str, title: str) -> list[str]:
    """Write ``paired_<slug>.md|csv`` (the CSV with full-precision numbers); return the report.md lines."""
    pairs = paired_differences(frame)
    if pairs.empty:
        return []
    text = paired_text(pairs)
    table = Table(f"Paired differences over seeds: {title}", text,
                  pd.DataFrame(False, index=text.index, columns=text.columns), index_name=None)
    md = to_markdown(table)
    atomic_write_text(folder / f"paired_{slug}.md", f"{table.title}\n\n{PAIRED_NOTE}\n\n{md}\n")
    atomic_write_text(folder / f"paired_{slug}.csv", pairs.to_csv(index=False))
    links = " ".join(f"[{ext}](tables/paired_{slug}.{ext})" for ext in ("md", "csv"))
    head = ["### Paired differences between pruners over seeds", ""]
    if (pairs["n"] < 2).all():  # a single-seed sweep: nothing to test, so no table of n/a in report.md
        return head + ["No two pruners share two or more seeds here, so no difference can be tested "
                       f"(sweep `seed=0,1,2`). Files: {links}", ""]
    return head + [PAIRED_NOTE, "", md, "", f"Files: {links}", ""]


def build_report(results_dir: str | Path, compare_published: bool = False, block_sparsity: str | None = None,
                 reference: str | Path = REFERENCE) -> Path | None:
    """Write ``<results_dir>/report/`` (tables, plots, report.md); return report.md (None: empty store)."""
    store = load_store(results_dir)
    if store.metrics.empty:
        return None
    out = Path(results_dir) / "report"
    for sub in ("tables", "plots"):  # generated: redrawn from the store every time
        shutil.rmtree(out / sub, ignore_errors=True)
    tables, plot_dir = out / "tables", out / "plots"
    doc = ["# Pruning benchmark report", "",
           f"From {len(store.manifests)} runs in `{Path(results_dir) / 'runs'}`. Perplexity: lower is better; "
           "zero-shot accuracy in %: higher is better. **Bold** (`*` in CSV) marks the best pruned value of "
           "each column by its mean, among cells whose every seed gave a number (the dense baseline on top "
           "is not ranked). With several calibration seeds a cell reads `mean ± std (n=3)`: the mean and "
           "sample standard deviation over the n seeds with a valid number (`n=2; 1 nan` when one failed); "
           "one seed shows the plain value. A run without a valid number shows its status (`nan`, `oom`, "
           "`unavailable`, `error`); `-` means not run. Every configuration's mean, std and n: "
           "[tables/aggregate.csv](tables/aggregate.csv).", ""]
    tables.mkdir(parents=True, exist_ok=True)
    atomic_write_text(tables / "aggregate.csv", long_table(store.metrics).to_csv(index=False))
    for title, slug, frame, blocks in store.groups():
        shown: set = set()  # this group's notes report.md already gives (a dropped task: acc and acc_norm)
        doc += [f"## {title}", "", "**Protocol**", "", *protocol_lines(frame, store.manifests, store.fallbacks), "",
                "### Perplexity", "",
                _write_table(ppl_grid(frame, f"Perplexity: {title}"), tables, f"ppl__{slug}", shown),
                _plot(plots.ppl_vs_sparsity(frame, f"Perplexity vs sparsity: {title}"), plot_dir, f"ppl__{slug}",
                      "perplexity vs sparsity"), *_paired_section(frame, tables, slug, title),
                *leaderboard_section(frame, store.manifests),
                *speed_section(results_dir, frame, tables, plot_dir, slug, title)]
        for metric in ZEROSHOT_NAMES:
            table = zeroshot_grid(frame, metric, f"Zero-shot {metric} (%): {title}")
            if table is not None:
                doc += [f"### Zero-shot {metric} (%)", "",
                        _write_table(table, tables, f"zeroshot_{metric}__{slug}", shown)]
        fig = plots.zeroshot_vs_sparsity(frame, ACC.name, f"Mean zero-shot acc vs sparsity: {title}")
        doc.append(_plot(fig, plot_dir, f"zeroshot__{slug}", "mean zero-shot accuracy vs sparsity"))
        sp = sparsity_label(block_sparsity) if block_sparsity else plots.default_block_sparsity(blocks)
        if sp is not None and not blocks.empty:
            fig = plots.block_errors(blocks, sp, f"Per-block relative error at sparsity {sp}: {title}")
            if fig is not None:
                update = "" if not (blocks["metric"] == "rel_update_error").any() else (
                    " Right: relative to the block's own update, ||f̂(X) − f(X)|| / ||f(X) − X||, which removes "
                    "the scale of the residual stream X (that dominates ||f(X)||), so a jump shows where "
                    "pruning got worse, not where the residual norm changed.")
                doc += [f"### Per-block relative output error at sparsity {sp}", "",
                        "On the calibration inputs, each block fed the pruned model's inputs X, with f the dense "
                        "block and f̂ the pruned one: ||f̂(X) − f(X)|| / ||f(X)||." + update, "",
                        _plot(fig, plot_dir, f"blocks__{slug}__{re.sub('[^0-9A-Za-z.]', '-', sp)}", "block errors")]
    if compare_published:
        no_calib = {r for r, m in store.manifests.items() if "calib" in (m.get("run_key") or {})
                    and m["run_key"]["calib"] is None}
        pairs = compare(store.metrics, load_published(reference), no_calib)
        doc += ["## Comparison with published numbers", "",
                f"Reference: `{reference}`. Paired on model, pruner, sparsity, layers, dataset, metric (and the "
                "published evaluation seqlen where given); ours is the mean over seeds, ratio = mean / published. "
                "`sparsellm_released` is compared with the published SparseLLM numbers; `sparsellm+keep_best` "
                "is not.", ""]
        if not pairs.empty:
            doc.append(_write_table(comparison_table(pairs), tables, "comparison"))
        else:  # say what would match: the published points nearest to what was run
            near = nearest_published(store.metrics, load_published(reference))
            doc.append("No run matches a published number." + (
                "" if near.empty else " The nearest published points (same pruner and sparsity on another "
                "model, or the same model and pruner at another sparsity): run one of these configurations "
                "to compare.") + "\n")
            if not near.empty:
                doc.append(_write_table(comparison_table(near, "Nearest published points"), tables,
                                        "comparison_nearest"))
    doc += allocation_section(results_dir, store.metrics)
    doc += fallback_section(store.metrics, store.manifests, store.fallbacks)
    notes = note_lines(without_dropped(store.metrics))
    if notes:
        doc += ["## Notes", "", "Each message once, with the runs it applies to.", "", *notes]
    atomic_write_text(out / "report.md", "\n".join(doc).rstrip() + "\n")
    return out / "report.md"


def _block_sparsity(value: str | None) -> str | None:
    """None when ``report.block_sparsity`` is unset or a sparsity, else what is accepted."""
    problem = valid_sparsity(value) if value not in (None, "") else None
    return f"empty or null (the sparsity with the most runs), or {problem}" if problem else None


@dataclass
class ReportOptions:
    """The ``report.*`` settings."""

    compare: bool = setting(False, "also write tables/comparison.* against the published numbers")
    block_sparsity: Optional[str] = setting(None, "the sparsity of the per-block error plot (empty or null: the "
                                            "sparsity with the most runs)",
                                            accepted="a sparsity such as 0.7, 70% or 2:4, empty or null",
                                            check=_block_sparsity)
    reference: str = setting(str(REFERENCE), "the published numbers that report.compare=true reads",
                             accepted="a CSV file of published numbers")


@dataclass
class ReportSettings:
    """``python -m runners.reporting.report``'s settings (``--help`` lists them)."""

    results: Results = field(default_factory=Results)
    report: ReportOptions = field(default_factory=ReportOptions)


def _check(settings: ReportSettings) -> None:
    reference = settings.report.reference
    if settings.report.compare and not Path(reference).is_file():
        raise SettingError(f"report.reference={reference!r} is not a file: accepted a CSV file of published numbers "
                           "(default results/reference/published.csv)")


TOOL = Tool("python -m runners.reporting.report", ReportSettings,
            "Tables, plots and report.md from the results store: writes <results.dir>/summary.csv and "
            "<results.dir>/report/, and prints the tables.",
            ("python -m runners.reporting.report results.dir=results",
             "python -m runners.reporting.report report.compare=true report.block_sparsity=0.7"), _check)


def main(argv: list[str]) -> None:
    """``python -m runners.reporting.report [results.dir=PATH] [report.compare=true] [report.block_sparsity=S]
    [report.reference=FILE]`` (``TOOL``'s settings, read through Hydra: runners/tool_config.py)."""
    settings = parse(TOOL, argv)
    results_dir = settings.results.dir
    print(summarize(results_dir))
    path = build_report(results_dir, settings.report.compare, settings.report.block_sparsity or None,
                        settings.report.reference)
    if path is not None:
        print(f"\nreport written to {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
