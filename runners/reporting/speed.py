"""The report's "speed and size" section: what each stored run's pruned model buys at inference.

Reads the ``speed.csv`` of every run measured with ``measure.speed=true`` (eval/speed/timing.py's
rows) and writes, per model and protocol, a table (tokens per second of prefill and of each decode
batch with the speed-up against the dense kernel on the same weights, the model's MB in memory in
that kernel's layout, the file's MB on disk: the sparse-bitmask file of a pruned run, the dense
file of the baseline) and a plot of perplexity against decode speed-up, the trade-off a reader
wants to see. Runs without speed.csv are left out; a kernel that could not run is listed under
the table with its reason.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from eval.metrics import PPL
from runners.execution.store import SPEED, atomic_write_text
from runners.reporting.labels import is_dense
from runners.reporting.plot_style import color, finish, log_y, new_figure, save, style_axes


def load_speed(results_dir: str | Path, run_ids) -> pd.DataFrame:
    """Every ``speed.csv`` of the given runs, with a ``run_id`` column (empty when none)."""
    frames = []
    for rid in run_ids:
        path = Path(results_dir) / "runs" / rid / SPEED
        if path.exists():
            frames.append(pd.read_csv(path).assign(run_id=rid))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def speed_table(speed: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One line per (run, kernel): pruner, sparsity, tokens/s and speed-up per phase, MB in memory and on disk."""
    who = metrics.drop_duplicates("run_id").set_index("run_id")[["pruner", "sparsity"]]
    lines = []
    timed = speed[(speed["status"] == "ok") & (speed["phase"] != "disk")]
    for (rid, kernel), part in timed.groupby(["run_id", "kernel"], sort=False):
        if rid not in who.index:
            continue
        line = {"pruner": who.loc[rid, "pruner"], "sparsity": who.loc[rid, "sparsity"], "kernel": kernel}
        for _, row in part.iterrows():
            phase = "prefill" if row["phase"] == "prefill" else f"decode b{int(row['batch'])}"
            line[f"{phase} tok/s"] = f"{row['tokens_per_s']:.1f} (x{row['speedup']:.2f})"
        line["model MB"] = round(float(part["model_mb"].iloc[0]), 1)
        disk = speed[(speed["run_id"] == rid) & (speed["phase"] == "disk")]
        kind = "dense_file" if is_dense(str(line["pruner"])) else "sparse-bitmask"
        size = disk[disk["kernel"] == kind]["bytes"]
        line["file MB"] = round(float(size.iloc[0]) / 2**20, 1) if len(size) else None
        line["run_id"] = rid
        lines.append(line)
    return pd.DataFrame(lines)


def tradeoff(speed: pd.DataFrame, metrics: pd.DataFrame, title: str):
    """Perplexity (log) against decode speed-up at batch 1 (the fastest kernel of each run) per
    dataset; one marker per run, coloured by pruner. None when nothing was measured."""
    decode = speed[(speed["status"] == "ok") & (speed["phase"] == "decode") & (speed["batch"] == 1)]
    if decode.empty:
        return None
    best = decode.groupby("run_id")["speedup"].max()
    ppl = metrics[(metrics["metric"] == PPL.name) & (metrics["status"] == "ok") & metrics["run_id"].isin(best.index)]
    datasets = list(dict.fromkeys(ppl["dataset"]))
    if not datasets:
        return None
    fig, axes = new_figure(len(datasets))
    entries = []
    for ax, dataset in zip(axes, datasets):
        rows = ppl[ppl["dataset"] == dataset]
        for _, row in rows.iterrows():
            handle = ax.scatter([best[row["run_id"]]], [row["value"]], color=color(str(row["pruner"])), zorder=3)
            dense = is_dense(str(row["pruner"]))
            ax.annotate("dense" if dense else str(row["sparsity"]), (best[row["run_id"]], row["value"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
            entries.append((handle, str(row["pruner"])))
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        log_y(ax)
        style_axes(ax, "decode speed-up, batch 1 (best kernel)", f"{dataset} perplexity",
                   dataset)
    return finish(fig, title, entries)


def speed_section(results_dir: str | Path, frame: pd.DataFrame, tables: Path, plot_dir: Path, slug: str,
                  title: str) -> list[str]:
    """report.md lines of one model and protocol (empty when none of its runs was timed)."""
    speed = load_speed(results_dir, frame["run_id"].drop_duplicates())
    if speed.empty:
        return []
    table = speed_table(speed, frame)
    text = table.drop(columns=["run_id"]).to_markdown(index=False) if not table.empty else "(no kernel ran)"
    atomic_write_text(tables / f"speed__{slug}.md", f"Speed and size: {title}\n\n{text}\n")
    atomic_write_text(tables / f"speed__{slug}.csv", speed.to_csv(index=False))
    lines = ["### Speed and size", "",
             "Tokens per second (speed-up against the dense kernel on the same weights) under each kernel "
             "(measure.speed=true; docs/speed.md), the model's MB in memory in that kernel's layout and its file's "
             "MB on disk (sparse-bitmask for a pruned run). Measured on the machine each run's manifest names.", "",
             text, ""]
    skipped = speed[speed["status"] != "ok"].drop_duplicates("message")
    lines += [f"- not timed: {message}" for message in skipped["message"]]
    fig = tradeoff(speed, frame, f"Perplexity vs decode speed-up: {title}")
    if fig is not None:
        save(fig, plot_dir / f"speed__{slug}.png")
        lines += ["", f"![perplexity vs speed-up](plots/speed__{slug}.png)"]
    links = " ".join(f"[{ext}](tables/speed__{slug}.{ext})" for ext in ("md", "csv"))
    return lines + ["", f"Files: {links}", ""]
