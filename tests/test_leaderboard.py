"""The report's leaderboard (ranked by perplexity, dense on top, pruning time) and allocation table,
on a synthetic store."""
from __future__ import annotations

import math

from runners.execution import store
from runners.execution.job import BLOCK_COLUMNS, METRIC_COLUMNS
from runners.reporting.leaderboard import allocation_table, leaderboard
from runners.reporting.report import build_report, load_store

BASE = {"model": "m", "layers": "all", "protocol": "quick", "calib_dataset": "c4", "calib_nsamples": 8,
        "calib_seqlen": 512, "eval_seqlen": 512, "eval_max_windows": 12, "dtype": "float32", "device": "cpu",
        "data_source": "local:x"}


def _run(results, pruner, sparsity, seed, wiki, ptb, seconds, zs=None, blocks=None):
    rid = f"m__{pruner}__{sparsity}__s{seed}".replace(":", "-")
    folder = store.run_dir(results, rid)
    base = {**BASE, "run_id": rid, "pruner": pruner, "sparsity": sparsity, "seed": seed,
            "layers": "none" if pruner == "dense" else "all"}
    rows = [("wikitext2", "ppl", wiki, "ok" if math.isfinite(wiki) else "nan"), ("ptb", "ppl", ptb, "ok")]
    if zs is not None:
        rows.append(("zeroshot_mean", "acc", zs, "ok"))
    store.write_csv(folder / "metrics.csv", [{**base, "dataset": d, "metric": m, "value": v, "status": s,
                                              "message": ""} for d, m, v, s in rows], METRIC_COLUMNS)
    if blocks is not None:
        store.write_csv(folder / "blocks.csv", blocks, BLOCK_COLUMNS)
    store.write_json(folder / "manifest.json", {"status": "ok", "seed": seed, "config": {},
                                                "seconds": {"prune": seconds}, "run_key": {"calib": None}})


def _store(tmp_path):
    r = tmp_path / "results"
    _run(r, "dense", "0", 0, 20.0, 40.0, None, zs=60.0)
    for seed, (w, s) in enumerate([(100.0, 10.0), (140.0, 14.0)]):  # wanda: mean 120, 12 s
        _run(r, "wanda", "0.7", seed, w, 200.0, s, zs=40.0 + seed)
    _run(r, "sparsegpt", "0.7", 0, 90.0, 300.0, 30.0, zs=45.0)
    _run(r, "magnitude", "0.7", 0, math.nan, 900.0, 1.0, zs=33.0)  # no finite wikitext2: ranks last
    alloc = [{"block": b, "metric": m, "step": None, "value": v} for b, t in enumerate([0.65, 0.75])
             for m, v in (("target_sparsity", t), ("sparsity", t), ("outlier_ratio", 0.02 - 0.01 * b))]
    _run(r, "wanda+owl", "0.7", 0, 110.0, 210.0, 20.0, zs=41.0, blocks=alloc)
    _run(r, "wanda", "0.5", 0, 30.0, 50.0, 8.0, zs=55.0)
    return r


def test_ranked_by_perplexity_with_dense_on_top_and_pruning_time(tmp_path):
    results = _store(tmp_path)
    data = load_store(results)
    tables = leaderboard(data.metrics, data.manifests)
    assert list(tables) == ["0.5", "0.7"]
    t = tables["0.7"]
    assert list(t["pruner"]) == ["dense", "sparsegpt", "wanda+owl", "wanda", "magnitude"]
    assert t["rank"].iloc[0] is None and list(t["rank"].iloc[1:]) == [1, 2, 3, 4]
    wanda = t[t["pruner"] == "wanda"].iloc[0]
    assert wanda["wikitext2 ppl"] == 120.0 and wanda["prune s"] == 12.0 and wanda["zero-shot mean acc"] == 40.5
    assert t[t["pruner"] == "dense"].iloc[0]["wikitext2 ppl"] == 20.0
    assert math.isnan(t[t["pruner"] == "magnitude"].iloc[0]["wikitext2 ppl"])
    assert list(tables["0.5"]["pruner"]) == ["dense", "wanda"]


def test_report_shows_leaderboard_and_allocation(tmp_path):
    results = _store(tmp_path)
    text = build_report(results).read_text()
    board = text[text.index("### Leaderboard"):]
    assert board.index("| dense") < board.index("| 1      | sparsegpt") < board.index("| 2      | wanda+owl")
    table = allocation_table(results, load_store(results).metrics)
    assert list(table[("m wanda+owl 0.7", "target_sparsity")]) == [0.65, 0.75]
    assert "## Layer-wise allocation" in text and "m wanda+owl 0.7: target_sparsity" in text


def test_row_order_puts_each_refinement_after_its_pruner_and_plugins_last():
    """Tables and plots order rows dense, the built-in methods in the papers' order, each refined
    pruner right after its base (``wanda+dsnot`` after ``wanda``), and unknown plugins last."""
    from runners.reporting.labels import pruner_order
    from runners.reporting.plot_style import color
    names = ["random", "alps", "wanda+dsnot", "sparsegpt", "ria+dsnot", "dense", "ria", "wanda", "magnitude"]
    assert sorted(names, key=pruner_order) == ["dense", "magnitude", "wanda", "wanda+dsnot", "sparsegpt",
                                               "ria", "ria+dsnot", "alps", "random"]
    builtin = ["magnitude", "wanda", "sparsegpt", "ria", "alps", "sparsellm"]
    assert len({color(n) for n in builtin}) == len(builtin)  # every built-in method its own colour
