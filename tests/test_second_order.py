"""SparseGPT and SparseLLM through the real engine, on tiny OPT/LLaMA models and a SmolLM2 block."""
import copy

import pytest
import torch

from pruners.pattern import SparsityPattern
from pruners.sparsegpt import build as sparsegpt
from pruners.sparsellm import build as sparsellm
from core.families import adapter_for
from core.walk import capture, walk
from runners.execution.engine import BlockRun, prune_model
from tests.conftest import tiny_model


def expected_zeros(rows: int, cols: int, pattern: SparsityPattern, blocksize: int = 128) -> int:
    """SparseGPT's exact count: int(rows * block_cols * s) per column block, or N per M."""
    if pattern.is_nm:
        return rows * cols // pattern.m * pattern.n_zero
    return sum(int(rows * min(blocksize, cols - c) * pattern.ratio) for c in range(0, cols, blocksize))


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
@pytest.mark.parametrize("label", ["0.9", "3:4", "0.7"])
@pytest.mark.parametrize("build", [sparsegpt, sparsellm])
def test_exact_sparsity_and_finite(name, label, build):
    """Every Linear hits its exact count (N per M for N:M); weights, diagnostics and logits stay finite."""
    model = tiny_model(name)
    adapter, pattern = adapter_for(model), SparsityPattern.parse(label)
    tokens = torch.randint(0, 1000, (4, 32))
    report = prune_model(model, adapter, build(), pattern, tokens, [0, 1, 2], "cpu")
    for row in report.layers:
        rows, cols = map(int, row["shape"].split("x"))
        assert row["zeros"] == expected_zeros(rows, cols, pattern), row
    for block in adapter.blocks(model):
        for lname, linear in adapter.linears(block).items():
            assert torch.isfinite(linear.weight).all(), lname
            if pattern.is_nm:
                assert ((linear.weight == 0).view(linear.out_features, -1, 4).sum(-1) == 3).all(), lname
    assert all(torch.isfinite(torch.tensor(r["value"])) for r in report.blocks)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=tokens).logits).all()


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_sparsellm_objective_decreases(name):
    """On every block, SparseLLM's recorded objective after the last iteration is below the first."""
    model = tiny_model(name)
    report = prune_model(model, adapter_for(model), sparsellm(keep_best=False), SparsityPattern.parse(0.7),
                         torch.randint(0, 1000, (4, 32)), [0, 1, 2], "cpu")
    for block in range(3):
        objective = sorted((r["step"], r["value"]) for r in report.blocks
                           if r["block"] == block and r["metric"] == "objective")
        assert len(objective) == 4 and objective[-1][1] < objective[0][1], objective


def _mlp_error(model, adapter, index, tokens, pruner):
    """Relative MLP output error of block ``index`` after ``pruner``, against the dense MLP output."""
    work = copy.deepcopy(model)
    inputs = capture(work, adapter, tokens, "cpu")
    for _ in walk(work, adapter, inputs, "cpu", last=index - 1):
        pass
    block, batches = adapter.blocks(work)[index], inputs.batches(index)
    mlp = adapter.mlp
    run = BlockRun(index, block, SparsityPattern.parse(0.7), adapter.linears(block), adapter.linear_groups(block),
                   mlp, batches)
    dense = run.capture(inputs=[mlp.up], outputs=[mlp.down])
    x, y = dense.inputs[mlp.up], dense.outputs[mlp.down]
    pruner.prune_block(run)
    linears = adapter.linears(block)
    with torch.no_grad():
        gate = torch.nn.functional.silu(x @ linears[mlp.gate].weight.T)
        out = (gate * (x @ linears[mlp.up].weight.T)) @ linears[mlp.down].weight.T
    return float((out - y).norm() / y.norm())


@pytest.mark.slow
def test_sparsellm_beats_sparsegpt_on_smollm2_block(smollm2, local_data, cache_dir):
    """On a real SmolLM2 block with C4 calibration text at 70%, SparseLLM's MLP output error is lower."""
    from eval.calibration import calibration_tokens

    model, tokenizer = smollm2
    adapter = adapter_for(model)
    tokens = calibration_tokens(tokenizer, "c4", str(local_data), 8, 256, 0, cache_dir).tokens
    gpt = _mlp_error(model, adapter, 3, tokens, sparsegpt())
    llm = _mlp_error(model, adapter, 3, tokens, sparsellm())
    assert llm < gpt, (llm, gpt)


@pytest.mark.slow
def test_sparsellm_default_returns_the_last_iterate_on_smollm2(smollm2, local_data, cache_dir):
    """pruner=sparsellm at 0.7 (keep_best at its default): the weights written are the last iterate's,
    whose MLP error is the last recorded one; keep_best=true returns the lowest recorded one."""
    from eval.calibration import calibration_tokens
    from runners.execution.job import resolve
    from tests.test_identity import _cfg

    model, tokenizer = smollm2
    adapter = adapter_for(model)
    tokens = calibration_tokens(tokenizer, "c4", str(local_data), 4, 256, 0, cache_dir).tokens
    for keep_best in (False, True):
        pruner = resolve(_cfg("pruner=sparsellm", f"pruner.keep_best={str(keep_best).lower()}"))[1]
        assert pruner.keep_best is keep_best  # the config default is False
        recorded = []
        pruner_record = BlockRun.record

        def spy(self, metric, value, step=None):
            recorded.append((metric, step, value))
            pruner_record(self, metric, value, step)

        BlockRun.record = spy
        try:
            error = _mlp_error(model, adapter, 3, tokens, pruner)
        finally:
            BlockRun.record = pruner_record
        errors = [v for m, s, v in recorded if m == "mlp_rel_error"]
        best = dict((m, v) for m, s, v in recorded if m == "best_iteration")["best_iteration"]
        assert len(errors) == 4
        if keep_best:
            assert best == 1 + errors.index(min(errors)) and error == pytest.approx(min(errors), rel=1e-3)
        else:
            assert best == 4 and error == pytest.approx(errors[-1], rel=1e-3)
