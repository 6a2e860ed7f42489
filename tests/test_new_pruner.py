"""Acceptance: a new pruner is one module and one config, and nothing else.

A package written into a temporary folder (its module, its ``conf/pruner/<name>.yaml`` and an
entry point in the ``llm_prune_bench.pruners`` group, as an installed plugin has them: see
runners/execution/plugins.py and examples/llm-prune-random) gets a validated sweep run in-process
on a tiny model at ``protocol=smoke``, its ``plan=true`` line, its table row in the place its
config's ``order`` gives and its plot line in its config's ``color``, while every file of the
repository stays as it was. Its pruner declares no cost model, so its plan line says "not
estimated"; a second package's pruner declares one and is priced by it.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D

from runners.execution.plugins import GROUP
from tests.conftest import ROOT, compose_wanda_smoke, data_dir

TOY = '''
"""toy: prune the weights of smallest |W| x (column position)^power in each row (a test pruner)."""
import torch

from pruners.base import PerLinearPruner, check_setting
from pruners.pattern import select_mask


def build(name: str = "toy", power: float = 1.0) -> PerLinearPruner:
    check_setting(isinstance(power, (int, float)) and power >= 0, "power", power, "a number >= 0")

    def toy_prune(weight, stats, pattern):
        cols = torch.arange(1, weight.shape[1] + 1, dtype=torch.float32, device=weight.device) / weight.shape[1]
        return weight.masked_fill(select_mask(weight.abs().float() * cols ** power, pattern, per_row=True), 0)

    return PerLinearPruner(name=name, prune_fn=toy_prune)
'''

PRICED = '''
"""priced: magnitude's rule, with a cost model of its own (one pass, 50 ns per weight)."""
from pruners.base import PerLinearPruner
from pruners.cost import SelectionCost
from pruners.magnitude import magnitude_prune


def build(name: str = "priced") -> PerLinearPruner:
    return PerLinearPruner(name=name, prune_fn=magnitude_prune, cost=SelectionCost(seconds_per_weight=50e-9, passes=1))
'''


def _install(site: Path, name: str, module: str, config: str) -> None:
    """The package ``llm_prune_<name>`` with its module and config, and its dist-info with the entry point."""
    package = site / f"llm_prune_{name}"
    (package / "conf" / "pruner").mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(module).lstrip())
    (package / "conf" / "pruner" / f"{name}.yaml").write_text(textwrap.dedent(config).lstrip())
    dist = site / f"llm_prune_{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: llm-prune-{name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\n{name} = llm_prune_{name}:build\n")


@pytest.fixture
def plugins(tmp_path):
    """Two pruner packages on ``sys.path``: ``toy`` (order 15, its own colour, no cost model) and
    ``priced`` (no order or colour, a cost model); removed afterwards."""
    site = tmp_path / "site"
    _install(site, "toy", TOY, """
        _target_: llm_prune_toy.build
        name: toy
        power: 1.0
        order: 15
        color: "#123456"
        """)
    _install(site, "priced", PRICED, """
        _target_: llm_prune_priced.build
        name: priced
        """)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    yield site
    sys.path.remove(str(site))
    for module in ("llm_prune_toy", "llm_prune_priced"):
        sys.modules.pop(module, None)


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
def test_a_new_pruner_from_one_module_and_one_config(plugins, tmp_path, cache_dir):
    from runners import plan
    from runners.cli import sweep_points
    from runners.execution.job import run_job
    from runners.reporting import plots
    from runners.reporting.report import build_report, load_store
    from runners.reporting.tables import ppl_grid
    from runners.validate import check_command_line

    before = _git_status()
    results = tmp_path / "results"
    argv = ["-m", "model=tiny-llama", "pruner=toy,magnitude,wanda", "sparsity=0.5", "protocol=smoke",
            "eval.datasets=[wikitext2]", f"results.dir={results}", f"data.local_dir={data_dir()}",
            f"cache_dir={cache_dir}"]
    assert check_command_line(argv) is None

    # the sweep, run in-process: every point of the command line, then the dense baseline with them
    for point in sweep_points(argv):
        assert run_job(compose_wanda_smoke(results, cache_dir, *point)) == "ok"
    store = load_store(results)
    toy_runs = [p for p in (results / "runs").iterdir() if "__toy__" in p.name]
    assert len(toy_runs) == 1
    layers = (toy_runs[0] / "layers.csv").read_text().splitlines()
    assert len(layers) == 1 + 3 * 7 and all(",0.5," in line for line in layers[1:])  # exact per Linear

    # the plan: its line says it is not estimated; the others are priced as always
    rows, notes = plan.plan_rows(argv)
    by_pruner = {r["pruner"]: r for r in rows}
    assert set(by_pruner) == {"dense", "toy", "magnitude", "wanda"} and all(r["stored"] for r in rows)
    assert by_pruner["toy"]["estimate"] is None and by_pruner["wanda"]["estimate"] is not None
    text = plan.format_plan(rows, notes)
    toy_line = next(line for line in text.splitlines() if "__toy__" in line)
    assert toy_line.endswith("(pruner toy declares no cost model: not estimated)")

    # the table: its row, ranked by its config's order (15: after magnitude's 10, before wanda's 20)
    table = ppl_grid(store.metrics)
    assert list(table.text.index) == ["dense", "magnitude", "toy", "wanda"]
    assert table.text.loc["toy"].str.match(r"^\d").all()  # a perplexity, not a status
    report = build_report(results).read_text()
    assert "| toy " in report

    # the plot: its line, in its config's colour
    fig = plots.ppl_vs_sparsity(store.metrics)
    lines = [a for ax in fig.axes for a in ax.get_children() if isinstance(a, Line2D) and a.get_label() == "toy"]
    assert lines and {to_hex(line.get_color()) for line in lines} == {"#123456"}

    assert _git_status() == before  # not one file of the repository touched


def test_a_plugin_with_its_own_cost_model_is_priced_by_it_and_sorted_after_the_built_ins(plugins, tmp_path):
    """``priced`` declares a cost model (one pass, 50 ns per weight) and neither order nor colour:
    its plan line is its model's; its rows come after every built-in's, in a colour of the cycle."""
    from pruners.cost import PASS_RATE, pass_flops
    from runners import plan, registry
    from runners.reporting.labels import pruner_order
    from runners.reporting.plot_style import color

    argv = ["-m", "model=llama-2-7b", "pruner=priced,magnitude", "sparsity=0.5", "protocol=smoke",
            f"results.dir={tmp_path}", "data.local_dir=null"]
    rows, _ = plan.plan_rows(argv)
    by_pruner = {r["pruner"]: r["estimate"] for r in rows}
    shape = plan.Shape.from_config({"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                                     "num_attention_heads": 32, "vocab_size": 32000,
                                     "max_position_embeddings": 4096}, "llama")
    blocks = 3  # protocol=smoke prunes blocks 0-2
    own = blocks * (pass_flops(shape, 4 * 64, 64) / PASS_RATE + 50e-9 * shape.block_params)
    assert by_pruner["priced"].cpu_seconds - by_pruner["dense"].cpu_seconds == pytest.approx(own, rel=1e-9)
    assert "not estimated" not in plan.format_plan(rows, [])

    builtins = [p.stem for p in (ROOT / "conf" / "pruner").glob("*.yaml")]
    assert sorted(builtins + ["priced"], key=pruner_order)[-1] == "priced"
    assert registry.style("priced") == registry.Style() and color("priced") in registry.CYCLE
    assert color("toy") == "#123456" and registry.style("toy").order == 15
