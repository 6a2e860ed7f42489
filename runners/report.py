"""Tables, plots and ``report.md`` from the results store, and the summary printed after a sweep.

Usage: ``python -m runners.report [results.dir=PATH] [report.compare=true]
[report.block_sparsity=0.7] [report.reference=PATH]``. Reads only the results store
(``<results.dir>/runs``) and, with ``report.compare=true``, the published reference numbers
(``results/reference/published.csv``); writes ``<results.dir>/summary.csv`` and
``<results.dir>/report/`` (``report.md``, ``tables/*.md|csv|tex``, ``plots/*.png``).
Table layout: rows = pruner (the dense baseline on top), columns = sparsity x dataset.
A cell shows the perplexity, or the run's status (``nan``, ``oom``, ``unavailable``,
``error``) when there is no valid number: a failed run never shows as a number.
"""
from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import plots
from .compare import REFERENCE, compare, comparison_table, load_published
from .store import atomic_write_text, load_metrics, read_manifest
from .tables import (GROUP, VARYING, Table, normalize, ppl_grid, ppl_table, sparsity_label, to_csv, to_latex,
                     to_markdown, zeroshot_grid)

IDENTITY = ["run_id", "model", "pruner", "sparsity", *VARYING, "protocol", "eval_seqlen", "eval_max_windows"]


def summarize(results_dir: str | Path) -> str:
    """Write ``<results_dir>/summary.csv``; return the Markdown tables (one per model/protocol)."""
    metrics = load_metrics(results_dir)
    if metrics.empty:
        return f"no finished runs in {Path(results_dir) / 'runs'}"
    metrics.to_csv(Path(results_dir) / "summary.csv", index=False)
    parts = []
    for key, frame in metrics.groupby(GROUP, dropna=False, sort=True):
        title = ", ".join(f"{k}={v}" for k, v in zip(GROUP, key))
        parts.append(f"### Perplexity ({title})\n\n{to_markdown(ppl_table(frame))}\n")
    notes = metrics[(metrics["status"] != "ok") & metrics["message"].notna() & (metrics["message"] != "")]
    if not notes.empty:
        parts.append("Notes:\n" + "\n".join(sorted({f"- {m}" for m in notes["message"]})))
    return "\n".join(parts)


@dataclass
class Store:
    """What a report reads: metric rows (normalized), per-block errors, and each run's manifest."""

    metrics: pd.DataFrame
    blocks: pd.DataFrame
    manifests: dict = field(default_factory=dict)

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
    """Read every complete run of ``<results_dir>/runs`` (metrics, blocks.csv errors, manifests)."""
    raw = load_metrics(results_dir)
    metrics = normalize(raw) if not raw.empty else raw
    manifests, frames = {}, []
    for folder in sorted((Path(results_dir) / "runs").glob("*")):
        manifest = read_manifest(folder)
        if manifest is None or not (folder / "metrics.csv").exists():
            continue
        manifests[folder.name] = manifest
        if (folder / "blocks.csv").exists():
            blocks = pd.read_csv(folder / "blocks.csv")
            frames.append(blocks[blocks["metric"] == "rel_output_error"].assign(run_id=folder.name))
    blocks = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["block", "metric", "value"])
    if not metrics.empty and frames:
        ids = metrics[IDENTITY].drop_duplicates("run_id")
        blocks = blocks.drop_duplicates(["run_id", "block"], keep="last").merge(ids, on="run_id")
    else:
        blocks = blocks.assign(**{c: pd.Series(dtype=object) for c in IDENTITY if c not in blocks})
    return Store(metrics, blocks, manifests)


def _join(values) -> str:
    return ", ".join(f"`{v}`" for v in dict.fromkeys(map(str, values)))


def protocol_lines(frame: pd.DataFrame, manifests: dict) -> list[str]:
    """Markdown bullets stating how every number of one model/protocol was obtained."""
    pruned = frame[frame["pruner"] != "dense"].drop_duplicates("run_id")
    first = frame.iloc[0]
    datasets = [d for d in frame.loc[frame["metric"] == "ppl", "dataset"].unique() if d != "all"]
    windows = "every window" if first["eval_max_windows"] == "all" else f"the first {first['eval_max_windows']} windows"
    lines = [f"- Evaluation: perplexity on {_join(datasets) or 'none'}, non-overlapping windows of "
             f"{first['eval_seqlen']} tokens, {windows} of each test set."]
    tasks = [d for d in frame.loc[frame["metric"] == "acc", "dataset"].unique() if d != "zeroshot_mean"]
    if tasks:
        lines.append(f"- Zero-shot (lm-eval, 0-shot): {_join(tasks)}; mean over the tasks that ran.")
    if not pruned.empty:  # the run key of a pruner that needs no calibration data has calib = None
        uses = pruned["run_id"].map(lambda r: (manifests.get(r, {}).get("run_key") or {}).get("calib", 1) is not None)
        calib = pruned[uses].groupby(["calib_dataset", "calib_nsamples", "calib_seqlen"], sort=True)["pruner"]
        parts = [f"{ds} {n} x {sl} tokens ({_join(p)})" for (ds, n, sl), p in calib.unique().items()]
        parts += [f"none ({_join(pruned.loc[~uses, 'pruner'])})"] if (~uses).any() else []
        lines.append("- Calibration: " + "; ".join(parts) + f"; seed {_join(pruned['seed'])}.")
        layers = pruned.groupby("layers", sort=True)["pruner"].unique()
        lines.append("- Pruned blocks (`layers`): " + "; ".join(f"`{k}` ({_join(p)})" for k, p in layers.items()))
    runs = [manifests[r] for r in frame["run_id"].unique() if r in manifests]
    statuses = pd.Series([m.get("status") for m in runs]).value_counts()
    lines.append(f"- Runs: {len(runs)} (" + ", ".join(f"{k} {v}" for k, v in statuses.items()) + ").")
    versions = pd.Series([", ".join(f"{k} {v}" for k, v in sorted((m.get("versions") or {}).items()) if v)
                          for m in runs]).value_counts()
    for text, count in versions.items():
        lines.append(f"- Packages ({count} run{'s' * (count != 1)}): {text or 'not recorded'}.")
    revs = {f"{(m.get('git') or {}).get('commit') or 'unknown'}"[:10]
            + (" (uncommitted changes)" if (m.get("git") or {}).get("dirty") else "") for m in runs}
    hw = {str((m.get("hardware") or {}).get("gpu") or (m.get("hardware") or {}).get("cpu")
              or (m.get("hardware") or {}).get("device")) for m in runs}
    lines.append(f"- Code revision: {_join(sorted(revs))}; hardware: {_join(sorted(hw))}.")
    return lines


def _write_table(table: Table, folder: Path, name: str) -> str:
    """Write ``name``.md/.csv/.tex; return the Markdown plus links to the three files."""
    md = to_markdown(table)
    atomic_write_text(folder / f"{name}.md", f"{table.title}\n\n{md}\n")
    atomic_write_text(folder / f"{name}.csv", to_csv(table))
    atomic_write_text(folder / f"{name}.tex", to_latex(table))
    links = " ".join(f"[{ext}](tables/{name}.{ext})" for ext in ("md", "csv", "tex"))
    return f"{md}\n\nFiles: {links}\n"


def _plot(fig, plot_dir: Path, name: str, alt: str) -> str:
    if fig is None:
        return ""
    plots.save(fig, plot_dir / f"{name}.png")
    return f"![{alt}](plots/{name}.png)\n"


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
           "each column (the dense baseline on top is not ranked). A run without a valid number shows its "
           "status (`nan`, `oom`, `unavailable`, `error`); `-` means not run.", ""]
    for title, slug, frame, blocks in store.groups():
        doc += [f"## {title}", "", "**Protocol**", "", *protocol_lines(frame, store.manifests), "",
                "### Perplexity", "", _write_table(ppl_grid(frame, f"Perplexity: {title}"), tables, f"ppl__{slug}"),
                _plot(plots.ppl_vs_sparsity(frame, f"Perplexity vs sparsity: {title}"), plot_dir, f"ppl__{slug}",
                      "perplexity vs sparsity")]
        for metric in ("acc", "acc_norm"):
            table = zeroshot_grid(frame, metric, f"Zero-shot {metric} (%): {title}")
            if table is not None:
                doc += [f"### Zero-shot {metric} (%)", "", _write_table(table, tables, f"zeroshot_{metric}__{slug}")]
        fig = plots.zeroshot_vs_sparsity(frame, "acc", f"Mean zero-shot acc vs sparsity: {title}")
        doc.append(_plot(fig, plot_dir, f"zeroshot__{slug}", "mean zero-shot accuracy vs sparsity"))
        sp = sparsity_label(block_sparsity) if block_sparsity else plots.default_block_sparsity(blocks)
        if sp is not None and not blocks.empty:
            fig = plots.block_errors(blocks, sp, f"Per-block relative output error at sparsity {sp}: {title}")
            if fig is not None:
                doc += [f"### Per-block relative output error at sparsity {sp}", "",
                        "On the calibration inputs: ||pruned block output - dense block output|| / "
                        "||dense block output||, each block fed the pruned model's inputs.", "",
                        _plot(fig, plot_dir, f"blocks__{slug}__{re.sub('[^0-9A-Za-z.]', '-', sp)}", "block errors")]
    if compare_published:
        no_calib = {r for r, m in store.manifests.items() if "calib" in (m.get("run_key") or {})
                    and m["run_key"]["calib"] is None}
        pairs = compare(store.metrics, load_published(reference), no_calib)
        doc += ["## Comparison with published numbers", "",
                f"Reference: `{reference}`. Paired on model, pruner, sparsity, layers, dataset, metric (and the "
                "published evaluation seqlen where given); ratio = ours / published.", ""]
        doc.append(_write_table(comparison_table(pairs), tables, "comparison") if not pairs.empty
                   else "No run matches a published number.\n")
    notes = store.metrics[(store.metrics["status"] != "ok") & (store.metrics["message"] != "")]
    if not notes.empty:
        doc += ["## Notes", "", *sorted({f"- `{r.run_id}` ({r.status}): {r.message}" for r in notes.itertuples()})]
    atomic_write_text(out / "report.md", "\n".join(doc).rstrip() + "\n")
    return out / "report.md"


def _flag(key: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise SystemExit(f"error: {key}={value!r} is not valid: accepted true, false")


def main(argv: list[str]) -> None:
    """``python -m runners.report [results.dir=PATH] [report.compare=true] [report.block_sparsity=S]``."""
    opts = {"results.dir": "results", "report.compare": "false", "report.block_sparsity": "",
            "report.reference": str(REFERENCE)}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in opts or not (value or key == "report.block_sparsity"):
            raise SystemExit(f"error: unknown argument {arg!r}: accepted " + ", ".join(f"{k}=..." for k in opts))
        opts[key] = value
    compare_published = _flag("report.compare", opts["report.compare"])
    if compare_published and not Path(opts["report.reference"]).exists():
        raise SystemExit(f"error: report.reference={opts['report.reference']!r}: no such file")
    print(summarize(opts["results.dir"]))
    path = build_report(opts["results.dir"], compare_published, opts["report.block_sparsity"] or None,
                        opts["report.reference"])
    if path is not None:
        print(f"\nreport written to {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
