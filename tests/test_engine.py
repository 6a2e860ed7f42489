"""The layer-by-layer engine reproduces the full model and prunes exactly what it is told."""
import copy

import pytest
import torch

from pruners.dense import DensePruner
from pruners.magnitude import build as magnitude
from pruners.pattern import SparsityPattern
from pruners.wanda import build as wanda
from core.families import adapter_for
from core.layers import resolve_layers
from core.walk import capture
from runners.execution.engine import forward_logits, prune_model
from tests.conftest import tiny_model


def _tokens(n=3, seqlen=24, vocab=1000):
    return torch.randint(0, vocab, (n, seqlen))


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_block_by_block_equals_full_forward(name):
    """Logits computed block by block (captured block-0 arguments) equal model(ids).logits."""
    model = tiny_model(name)
    ids = _tokens()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    torch.testing.assert_close(forward_logits(model, adapter_for(model), ids, "cpu"), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
@pytest.mark.parametrize("pruner", [wanda(), magnitude(), DensePruner()])
def test_sparsity_zero_leaves_model_unchanged(name, pruner):
    """Pruning at sparsity 0 through the engine changes no weight and no logit; block error is 0."""
    model = tiny_model(name)
    ids = _tokens()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    state = copy.deepcopy(model.state_dict())
    report = prune_model(model, adapter_for(model), pruner, SparsityPattern.parse(0), ids, [0, 1, 2], "cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
    errors = [r["value"] for r in report.blocks if r["metric"] == "rel_output_error"]
    assert errors == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_engine_prunes_selected_blocks_only(name):
    """Only the selected blocks are pruned, each Linear to the exact per-row count; others untouched."""
    model = tiny_model(name)
    adapter = adapter_for(model)
    original = copy.deepcopy(model)
    report = prune_model(model, adapter, wanda(), SparsityPattern.parse(0.5), _tokens(), [1], "cpu")
    for i, (block, ref) in enumerate(zip(adapter.blocks(model), adapter.blocks(original))):
        for lname, linear in adapter.linears(block).items():
            if i == 1:
                assert ((linear.weight == 0).sum(1) == linear.in_features // 2).all(), lname
            else:
                assert torch.equal(linear.weight, ref.get_submodule(lname).weight), lname
    assert {r["block"] for r in report.layers} == {1}
    assert len(report.layers) == len(adapter.linears(adapter.blocks(model)[1]))


def test_magnitude_runs_no_calibration_pass():
    """Magnitude without diagnostics never runs a block forward (it needs no data)."""
    model = tiny_model("tiny-llama")
    adapter = adapter_for(model)
    calls = []
    for block in adapter.blocks(model):
        block.register_forward_hook(lambda *a: calls.append(1))
    prune_model(model, adapter, magnitude(), SparsityPattern.parse(0.5), None, [0, 1, 2], "cpu", diagnostics=False)
    assert calls == []
    assert all(((b.mlp.up_proj.weight == 0).sum() == b.mlp.up_proj.weight.numel() // 2) for b in adapter.blocks(model))


def test_llama_block_receives_rotary_embeddings():
    """The captured block-0 arguments of a LLaMA model carry position_embeddings (cos, sin)."""
    model = tiny_model("tiny-llama")
    batches = capture(model, adapter_for(model), _tokens(2, 16), "cpu", batch_size=2).batches(0)
    cos, sin = batches[0].kwargs["position_embeddings"]
    assert cos.shape[-2] == 16 and sin.shape == cos.shape


@pytest.mark.parametrize("spec,expected", [("all", [0, 1, 2, 3]), ("first_half", [0, 1]), ("1-2", [1, 2]),
                                           ([3, 0], [0, 3]), (2, [2])])
def test_resolve_layers(spec, expected):
    """prune.layers forms resolve to the right block indices."""
    assert resolve_layers(spec, 4) == expected


@pytest.mark.parametrize("spec", ["half", "3-1", "0-9", [7], "x-y"])
def test_resolve_layers_rejects(spec):
    """Bad prune.layers values are one-line errors naming the value."""
    with pytest.raises(ValueError, match="prune.layers"):
        resolve_layers(spec, 4)


@pytest.mark.slow
def test_smollm2_engine_reproduces_logits(smollm2):
    """On SmolLM2, the engine's block-by-block path and dense pruning reproduce the full logits."""
    model, tokenizer = smollm2
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog. " * 6).input_ids[:64]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    adapter = adapter_for(model)
    torch.testing.assert_close(forward_logits(model, adapter, ids, "cpu"), expected, rtol=1e-4, atol=1e-4)
    pruned = copy.deepcopy(model)
    prune_model(pruned, adapter, wanda(), SparsityPattern.parse(0), ids, list(range(30)), "cpu")
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_statistics_pass_stopping_early_gives_same_weights(name):
    """Without diagnostics the statistics pass stops after the last statistic; the pruned weights are identical."""
    from pruners.sparsegpt import build as sparsegpt

    ids = _tokens()
    results = []
    for diagnostics in (True, False):
        model = tiny_model(name)
        prune_model(model, adapter_for(model), sparsegpt(), SparsityPattern.parse(0.6), ids, [0, 1, 2], "cpu",
                    diagnostics=diagnostics)
        results.append(model.state_dict())
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_capture_gives_inputs_outputs_and_statistics_in_one_pass(name):
    """capture() returns each Linear's inputs/outputs over all batches (as a plain hook sees them)
    and the same statistics collect() gathers, from one run of the block."""
    from pruners.sparsegpt import Hessian
    from runners.execution.engine import BlockRun

    model = tiny_model(name)
    adapter = adapter_for(model)
    batches = capture(model, adapter, _tokens(n=3), "cpu").batches(1)
    block = adapter.blocks(model)[1]
    linears, groups, mlp = adapter.linears(block), adapter.linear_groups(block), adapter.mlp
    run = BlockRun(1, block, SparsityPattern.parse(0.5), linears, groups, mlp, batches)
    seen = {"in": [], "out": []}
    handles = [linears[mlp.up].register_forward_hook(lambda m, a, o: seen["in"].append(a[0])),
               linears[mlp.down].register_forward_hook(lambda m, a, o: seen["out"].append(o))]
    calls = []
    counter = block.register_forward_pre_hook(lambda *a: calls.append(1))
    attn = [n for g in groups if g.role.startswith("attn") for n in g.names]
    got = run.capture(inputs=[mlp.up], outputs=[mlp.down], make_stat=Hessian, stat_names=attn)
    for h in handles:
        h.remove()
    assert len(calls) == len(batches)  # one run of the block
    counter.remove()
    expect_in = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen["in"]])
    expect_out = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen["out"]])
    assert torch.equal(got.inputs[mlp.up], expect_in) and torch.equal(got.outputs[mlp.down], expect_out)
    assert set(got.inputs) == {mlp.up} and set(got.outputs) == {mlp.down}
    reference = BlockRun(1, block, SparsityPattern.parse(0.5), linears, groups, mlp, batches).collect(Hessian, attn)
    assert set(got.stats) == set(attn)
    for n in attn:
        torch.testing.assert_close(got.stats[n].matrix, reference[n].matrix, rtol=0, atol=0)
    # One statistic object per input group (q, k, v share theirs).
    assert len({id(s) for s in got.stats.values()}) == len([g for g in groups if g.role.startswith("attn")])


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_rel_update_error_matches_independent_computation(name):
    """rel_update_error of each pruned block equals ||f̂(X) - f(X)|| / ||f(X) - X|| computed apart from
    the engine: X captured by hooks on the pruned model's own forward pass, f the dense block."""
    dense = tiny_model(name)
    model = copy.deepcopy(dense)
    adapter = adapter_for(model)
    ids = _tokens()
    report = prune_model(model, adapter, wanda(), SparsityPattern.parse(0.5), ids, [0, 1, 2], "cpu")
    seen = {}

    def hook(i):
        def fn(_m, args, kwargs, out):
            seen[i] = (args, kwargs, out[0] if isinstance(out, tuple) else out)
        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(adapter.blocks(model))]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
        for h in handles:
            h.remove()
        expected, expected_out = [], []
        for i, block in enumerate(adapter.blocks(dense)):
            args, kwargs, pruned_out = seen[i]
            x = args[0] if args else kwargs["hidden_states"]
            # the forward pass's KV cache already holds this block's keys: a second call must not append to it
            kwargs = {k: v for k, v in kwargs.items() if "cache" not in k and "past" not in k}
            out = block(*args, **kwargs)
            dense_out = out[0] if isinstance(out, tuple) else out
            expected.append(float((pruned_out - dense_out).norm() / (dense_out - x).norm()))
            expected_out.append(float((pruned_out - dense_out).norm() / dense_out.norm()))
    got = {r["metric"]: [] for r in report.blocks}
    for r in report.blocks:
        got[r["metric"]].append(r["value"])
    assert got["rel_update_error"] == pytest.approx(expected, rel=1e-4)
    assert got["rel_output_error"] == pytest.approx(expected_out, rel=1e-4)
    # the update is much smaller than the residual stream: the two ratios differ
    assert all(u > o for u, o in zip(got["rel_update_error"], got["rel_output_error"]))


class _RecordsFirst:
    """A pruner that records a Linear's time before it collects statistics or writes a weight
    (allowed by the protocol); it zeroes the first half of every Linear's columns after collecting."""

    name = label = "records-first"
    needs_calibration = True
    calib_nsamples = None

    def __init__(self, write_before_collect: bool = False):
        self.write_before_collect = write_before_collect

    def prune_block(self, block):
        from pruners.wanda import InputNorms

        for name in block.linears:
            block.record_linear(name, 0.0)
        if self.write_before_collect:
            for linear in block.linears.values():
                linear.weight.data[:, : linear.in_features // 2] = 0
        block.collect(InputNorms)
        for linear in block.linears.values():
            linear.weight.data[:, : linear.in_features // 2] = 0


def test_dense_outputs_are_taken_from_the_weights_not_from_the_pruners_records():
    """The block's dense outputs (rel_output_error) are the outputs of a run on unchanged weights:
    recording a Linear first does not lose them, and a run after a write is never taken as dense."""
    model = tiny_model("tiny-llama")
    ids = _tokens()
    reports = {}
    for write_first in (False, True):
        work = copy.deepcopy(model)
        reports[write_first] = prune_model(work, adapter_for(work), _RecordsFirst(write_first),
                                           SparsityPattern.parse(0.5), ids, [0, 1, 2], "cpu")
    errors = [r["value"] for r in reports[False].blocks if r["metric"] == "rel_output_error"]
    assert len(errors) == 3 and all(e > 0 for e in errors)
    assert not [r for r in reports[True].blocks if r["metric"] == "rel_output_error"]
