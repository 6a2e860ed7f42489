"""Run ids of the dense baseline and of the run that starts it, for a fixed list of configurations.

``tests/fixtures/run_ids_before_dense.json`` holds what :func:`ids` gave at commit ab3167b, before
the dense baseline got a configuration of its own (runners/execution/identity.py ``Run.dense``);
``tests/test_dense_baseline.py`` checks that the code of today gives the same ids, so runs stored
before that change are found again. Nothing here loads a model: only the settings are resolved.
"""
from __future__ import annotations

from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_ids_before_dense.json"

CONFIGS = [  # overrides of each configuration (the data folder and device=cpu are added to each)
    [],
    ["pruner=wanda", "sparsity=0.7"],
    ["pruner=wanda", "sparsity=2:4"],
    ["pruner=magnitude", "sparsity=3:4", "seed=1"],
    ["pruner=sparsegpt", "sparsity=0.7", "prune.layers=first_half"],
    ["pruner=wanda", "sparsity=0.7", "allocation=owl"],
    ["pruner=magnitude", "sparsity=0.5", "refine=dsnot"],
    ["pruner=wanda", "sparsity=0.7", "calib.nsamples=16"],
    ["pruner=dense"],
    ["pruner=wanda", "sparsity=0.7", "eval.blockwise=true"],
    ["protocol=smoke", "pruner=magnitude"],
    ["protocol=paper", "pruner=sparsegpt", "sparsity=2:4"],
    ["model=tiny-llama", "protocol=smoke", "pruner=magnitude", "sparsity=0.5", "eval.datasets=[wikitext2,ptb]"],
    ["model=tiny-llama", "protocol=smoke", "pruner=wanda", "sparsity=0.5", "eval.datasets=[wikitext2,ptb]"],
    ["model=tiny-llama", "protocol=smoke", "pruner=magnitude", "sparsity=0.5", "seed=1"],
    ["model=tiny-opt", "protocol=smoke", "pruner=wanda", "sparsity=2:4"],
]


def ids(overrides: list[str], data: str) -> dict:
    """``{"run": id, "dense": id of its dense baseline, "data_source": label}`` of one configuration."""
    from hydra import compose, initialize_config_dir

    from runners.cli import CONF
    from runners.execution.identity import data_source_label, run_id
    from runners.execution.job import resolve

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"data.local_dir={data}", "device=cpu", *overrides])
    run, _, key = resolve(cfg)
    return {"run": run_id(key), "dense": run_id(run.dense().key(None)), "data_source": data_source_label(run)}
