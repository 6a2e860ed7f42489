"""What pruning buys at inference (eval/speed/): each CPU kernel computes the dense model's logits
on the same pruned weights, the sparse-bitmask file reads back equal and has the size its
layout predicts, and the timing rows are what they say."""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from core.families import adapter_for
from eval.speed import bitmask
from eval.speed.kernels import KERNELS, SparseLinear, check_two_four, kernel, sparsify
from eval.speed.timing import SpeedSettings, disk, measure, tensor_bytes
from runners.execution import store
from runners.execution.identity import run_id
from runners.execution.job import resolve, run_job
from runners.execution.store import read_manifest
from runners.reporting.report import build_report
from runners.validate import check_command_line
from tests.conftest import compose_wanda_smoke, data_dir
from tests.test_families import VOCAB, build

CPU_KERNELS = ["csr", "bsr"]


def _prune_rows(model, fraction: float = 0.7, two_four: bool = False):
    """Zero the smallest weights of every Linear of the blocks, per row (independent of the pruners)."""
    for block in adapter_for(model).blocks(model):
        for module in block.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight.data
                if two_four:
                    groups = w.reshape(w.shape[0], -1, 4)
                    groups.scatter_(2, groups.abs().argsort(dim=2)[..., :2], 0.0)
                else:
                    w.scatter_(1, w.abs().argsort(dim=1)[:, : int(w.shape[1] * fraction)], 0.0)
    return model


def _blocks(model):
    return adapter_for(model).blocks(model)


@pytest.mark.parametrize("name", ["llama3", "gemma3", "phi3", "qwen3moe"])
@pytest.mark.parametrize("kernel_name", CPU_KERNELS)
def test_sparse_kernel_logits_equal_the_dense_ones(name, kernel_name):
    """Same pruned weights, the kernel's Linears instead of torch's: logits equal to 1e-5, and
    every Linear of the blocks was taken over (none left dense by mistake)."""
    model = _prune_rows(build(name))
    ids = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        linears = sum(isinstance(m, torch.nn.Linear) for b in _blocks(model) for m in b.modules())
        swapped = sparsify(model, _blocks(model), kernel(kernel_name))
        sparse = model(input_ids=ids).logits
    assert swapped == linears > 0
    assert not any(isinstance(m, torch.nn.Linear) for b in _blocks(model) for m in b.modules())
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == linears
    assert float((sparse - dense).abs().max()) < 1e-5


def test_csr_stores_only_the_nonzeros_with_int32_indices():
    """CSR holds exactly the nonzero values and int32 column indices; its bytes are what
    tensor_bytes counts (values + column indices + row pointers)."""
    w = torch.zeros(8, 16)
    w[torch.arange(8), torch.arange(8) * 2] = torch.arange(1.0, 9.0)
    linear = torch.nn.Linear(16, 8, bias=False)
    linear.weight.data.copy_(w)
    layer = SparseLinear(linear, kernel("csr"))
    assert layer.packed.values().numel() == 8 and layer.packed.col_indices().dtype == torch.int32
    assert tensor_bytes(layer) == 8 * 4 + 8 * 4 + 9 * 4
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), x @ w.T)


def test_bsr_refuses_a_blocksize_that_does_not_divide_the_weight():
    with pytest.raises(ValueError, match=r"bsr: weight \(8, 12\) .* 16x16"):
        kernel("bsr").pack(torch.ones(8, 12))


def test_kernel_names_and_unavailable_kernels_are_one_line():
    with pytest.raises(ValueError, match=r"kernel='cusparse' is not known: accepted dense, csr, bsr"):
        kernel("cusparse")
    assert "need a CUDA device" in KERNELS["semi_structured"].unavailable("cpu", torch.float16)
    assert "float16 or bfloat16" in KERNELS["semi_structured"].unavailable("cuda", torch.float32) or \
        not torch.cuda.is_available()
    assert KERNELS["csr"].unavailable("cpu", torch.float32) is None


def test_two_four_check_accepts_2_4_and_refuses_other_patterns():
    check_two_four(_prune_rows(build("llama3"), two_four=True).model.layers[0].mlp.up_proj.weight)
    w = torch.ones(4, 8)
    w[:, ::4] = 0  # one zero in every 4: 1:4, not 2:4
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        check_two_four(w)


def test_bitmask_layout_of_a_hand_built_matrix():
    """The four tensors of a 2 x 10 matrix, worked out by hand: values row by row, bits least
    significant first, row offsets."""
    w = torch.zeros(2, 10)
    w[0, 0], w[0, 9], w[1, 3], w[1, 8] = 1.0, 2.0, 3.0, -4.0
    parts = bitmask.compress(w)
    assert parts["compressed"].tolist() == [1.0, 2.0, 3.0, -4.0]
    # row 0: bits 0 and 9 -> bytes 0b00000001, 0b00000010; row 1: bits 3 and 8 -> 0b00001000, 0b00000001
    assert parts["bitmask"].tolist() == [[1, 2], [8, 1]]
    assert parts["shape"].tolist() == [2, 10] and parts["row_offsets"].tolist() == [0, 2]
    assert torch.equal(bitmask.decompress(parts), w)


@pytest.mark.parametrize("name", ["llama3", "gemma3"])
def test_bitmask_file_reads_back_equal_and_has_the_predicted_size(tmp_path, name):
    """Written and read back: every tensor equal (tied embeddings once); each compressed weight's
    bytes in the file are exactly nnz x 4 + rows x ceil(cols / 8) + 2 x 8 + rows x 8."""
    model = _prune_rows(build(name))
    model.config.tie_word_embeddings = True
    model.tie_weights()
    state = model.state_dict()
    targets = bitmask.sparse_weights(model, _blocks(model))
    assert targets and all("layers" in t for t in targets)
    path = bitmask.save(state, tmp_path, targets)
    back = bitmask.load(tmp_path)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    with safe_open(str(path), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert "lm_head.weight" not in stored  # tied: stored once
    for name_ in targets:
        w = state[name_]
        rows, cols = w.shape
        expected = int((w != 0).sum()) * 4 + rows * math.ceil(cols / 8) + 2 * 8 + rows * 8
        got = sum(stored[f"{name_}.{p}"].numel() * stored[f"{name_}.{p}"].element_size() for p in bitmask.PARTS)
        assert got == expected, name_
    rows = disk(model, _blocks(model), tmp_path / "disk")
    sizes = {r["kernel"]: r["bytes"] for r in rows}
    assert sizes[bitmask.FORMAT] < sizes["dense_file"]


def test_packbits_order_matches_an_independent_bit_loop():
    """The bitmask of a random matrix equals a bit-by-bit loop over its nonzeros."""
    w = torch.randn(3, 21)
    w[torch.rand_like(w) < 0.6] = 0
    packed = bitmask.compress(w)["bitmask"].numpy()
    loop = np.zeros((3, 3), dtype=np.uint8)
    for r in range(3):
        for c in range(21):
            if w[r, c] != 0:
                loop[r, c // 8] |= 1 << (c % 8)
    assert (packed == loop).all()


def test_measure_rows_time_every_phase_and_record_unavailable_kernels():
    """Each runnable kernel gives prefill and decode rows for every batch, with tokens / median as
    tokens per second and the dense kernel's median over its own as speed-up (dense: 1); the
    kernels that cannot run here are one ``unavailable`` row each."""
    model = _prune_rows(build("llama3"))
    settings = SpeedSettings(prefill_tokens=16, decode_tokens=3, decode_batches=(1, 2), repeats=2, warmup=0)
    rows = measure(model, _blocks, [kernel("dense"), kernel("csr"), kernel("semi_structured")], settings, "cpu")
    ok = [r for r in rows if r["status"] == "ok"]
    assert [(r["kernel"], r["phase"], r["batch"]) for r in ok] == [
        (k, p, b) for k in ("dense", "csr") for p, b in (("prefill", 1), ("decode", 1), ("decode", 2))]
    for r in ok:
        assert r["tokens"] == (16 if r["phase"] == "prefill" else 3 * r["batch"])
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["median_s"])
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["max_abs_logit_diff"] < 1e-5 and r["model_mb"] > 0 and r["peak_mb"] > 0
    assert all(r["speedup"] == 1.0 for r in ok if r["kernel"] == "dense")
    csr_mb = {r["model_mb"] for r in ok if r["kernel"] == "csr"}
    dense_mb = {r["model_mb"] for r in ok if r["kernel"] == "dense"}
    assert max(csr_mb) < min(dense_mb)  # 70% zeros in int32 CSR: fewer bytes than dense
    (bad,) = [r for r in rows if r["status"] != "ok"]
    assert bad["kernel"] == "semi_structured" and bad["status"] == "unavailable" and "CUDA" in bad["message"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_semi_structured_2_4_logits_on_cuda():
    """2:4 weights through torch's semi-structured kernel on CUDA (float16): its logits are no further
    from the float32 computation than the dense float16 kernel's own (twice its error at most,
    since the two float16 products only add in another order), and the weights are taken over."""
    model = _prune_rows(build("llama3"), two_four=True)
    ids = torch.randint(3, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        exact = model.cuda()(input_ids=ids).logits.float()
        model.half()
        dense = model(input_ids=ids).logits.float()
        assert sparsify(model, _blocks(model), kernel("semi_structured")) > 0
        sparse = model(input_ids=ids).logits.float()
    dense_err = float((dense - exact).abs().max())
    assert float((sparse - exact).abs().max()) <= 2 * dense_err + 1e-3


# ---- measure.speed=true: the store and the report --------------------------------------------

SPEED_SMOKE = ("measure.speed=true", "measure.kernels=[dense,csr,semi_structured]", "measure.prefill_tokens=8",
               "measure.decode_tokens=2", "measure.decode_batches=[1,2]", "measure.repeats=1", "measure.warmup=0")


@pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
def test_speed_is_stored_beside_the_run_outside_its_id_and_reported(tmp_path, cache_dir):
    """measure.speed=true writes speed.csv (checksummed in the manifest) for the pruned run and its
    dense baseline without changing their run ids; a run stored without speed is computed again
    once; the report gets the speed table and the perplexity-vs-speed-up plot."""
    plain = compose_wanda_smoke(tmp_path / "store", cache_dir, "model=tiny-llama")
    assert run_job(plain) == "ok"
    timed = compose_wanda_smoke(tmp_path / "store", cache_dir, "model=tiny-llama", *SPEED_SMOKE)
    assert run_id(resolve(timed)[2]) == run_id(resolve(plain)[2])
    assert run_job(timed) == "ok"  # stored without speed: computed again
    assert run_job(timed) == "skipped:ok"
    runs = sorted((tmp_path / "store" / "runs").iterdir())
    assert len(runs) == 2  # the pruned run and its dense baseline, nothing else
    for folder in runs:
        manifest = read_manifest(folder)
        assert manifest["speed"]["kernels"] == ["dense", "csr", "semi_structured"]
        assert manifest["sha256"]["speed.csv"] == store.sha256((folder / "speed.csv").read_bytes())
        rows = pd.read_csv(folder / "speed.csv")
        ok = rows[(rows["status"] == "ok") & (rows["phase"] != "disk")]
        assert sorted(set(zip(ok["kernel"], ok["phase"], ok["batch"]))) == [
            (k, p, b) for k in ("csr", "dense") for p, b in (("decode", 1.0), ("decode", 2.0), ("prefill", 1.0))]
        assert (ok["max_abs_logit_diff"] < 1e-5).all()
        assert set(rows[rows["phase"] == "disk"]["kernel"]) == {"dense_file", "sparse-bitmask"}
        assert rows[rows["kernel"] == "semi_structured"]["status"].tolist() == ["unavailable"]
    (folder,) = [f for f in runs if "wanda" in f.name]
    (folder / "speed.csv").write_text("kernel\n")  # changed after the fact: the store says so
    assert store.check_run(folder)[0] == store.DAMAGED
    assert run_job(timed) == "ok"  # damaged: computed again
    report = build_report(tmp_path / "store").read_text()
    assert "### Speed and size" in report and "not timed: semi_structured" in report
    assert list((tmp_path / "store" / "report" / "plots").glob("speed__*.png"))


@pytest.mark.parametrize("args,needle", [
    (["measure.kernels=[csr]"], "measure.kernels=['csr'] is not valid: accepted a list of dense"),
    (["measure.kernels=[dense,cusparse]"], "measure.kernels=['dense', 'cusparse']"),
    (["measure.decode_batches=[0]"], "measure.decode_batches=[0] is not valid"),
    (["measure.speed=maybe"], "measure.speed='maybe' is not valid: accepted true or false"),
    (["measure.repeats=0"], "measure.repeats=0 is not valid")])
def test_bad_measure_settings_are_one_line(args, needle):
    msg = check_command_line(["model=tiny-llama", *args, f"data.local_dir={data_dir()}"])
    assert msg is not None and "\n" not in msg and needle in msg, msg


def test_smollm2_sparse_kernels_compute_the_dense_function(fresh_smollm2):
    """The real 30-block SmolLM2 pruned to 0.7: in float64 the CSR and BSR models' logits equal the
    dense kernel's to 1e-9 (the same function); in float32 they differ from it by no more than
    twice the dense float32 model's own rounding error against float64 (the order of the sums is
    all that differs, and 30 blocks with large residual activations amplify it to ~1e-4 of the
    logits, far above 1e-5: the tiny models above are held to 1e-5)."""
    model, _ = fresh_smollm2
    _prune_rows(model)
    ids = torch.randint(0, 49000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense32 = model(input_ids=ids).logits.double()
        wide = copy.deepcopy(model).double()
        dense64 = wide(input_ids=ids).logits
        rounding = float((dense32 - dense64).abs().max())
        for name in CPU_KERNELS:
            sparse64 = copy.deepcopy(wide)
            sparsify(sparse64, _blocks(sparse64), kernel(name))
            assert float((sparse64(input_ids=ids).logits - dense64).abs().max()) < 1e-9, name
        sparse32 = copy.deepcopy(model)
        sparsify(sparse32, _blocks(sparse32), kernel("csr"))
        assert float((sparse32(input_ids=ids).logits.double() - dense32).abs().max()) <= 2 * rounding
