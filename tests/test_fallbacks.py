"""Numerical fallbacks are never silent: each is recorded per block, counted in the manifest."""
import subprocess
import sys

import pandas as pd
import pytest
import torch

from pruners import fallbacks
from pruners.pattern import SparsityPattern
from pruners.sparsegpt import build as sparsegpt, sparsegpt_prune
from pruners.sparsellm_math import ridge_cholesky
from core.families import adapter_for
from runners.execution.engine import prune_model
from runners.execution.store import read_manifest
from tests.conftest import ROOT, data_dir, tiny_model


def test_rank_deficient_hessian_records_raised_damping():
    """A rank-1 Hessian with no dampening cannot be factored: the raise is recorded, the result stays sparse."""
    x = torch.randn(1, 16)
    hessian = 2 * x.T @ x
    with fallbacks.collecting() as events:
        out = sparsegpt_prune(torch.randn(8, 16), hessian, SparsityPattern.parse(0.5), percdamp=0.0)
    assert [e["kind"] for e in events] == ["cholesky_damping_raised"]
    assert int((out == 0).sum()) == 64 and torch.isfinite(out).all()
    with fallbacks.collecting() as events:  # a well-conditioned Hessian needs no fallback
        sparsegpt_prune(torch.randn(8, 16), torch.eye(16), SparsityPattern.parse(0.5))
    assert events == []


def test_ridge_escalation_is_recorded():
    """A Gram matrix that is indefinite even with the base ridge is recorded as ridge_raised."""
    gram = torch.diag(torch.tensor([1.0, 1.0, -0.5]))
    with fallbacks.collecting() as events:
        ridge_cholesky(gram, 1e-4)
    assert events and {e["kind"] for e in events} == {"ridge_raised"}


def test_engine_writes_fallbacks_per_block():
    """Through the engine: every block whose Hessians needed more dampening has fallback rows and totals."""
    model = tiny_model("tiny-llama")
    tokens = torch.randint(0, 1000, (1, 8))  # 8 tokens for 64-wide inputs: rank-deficient Hessians
    report = prune_model(model, adapter_for(model), sparsegpt(percdamp=0.0), SparsityPattern.parse(0.5), tokens,
                         [0, 1, 2], "cpu")
    rows = [r for r in report.blocks if r["metric"].startswith("fallback:")]
    assert rows and {r["block"] for r in rows} <= {0, 1, 2}
    assert report.fallbacks["cholesky_damping_raised"] == sum(r["value"] for r in rows)


@pytest.mark.subprocess
@pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
def test_run_records_fallbacks_in_blocks_csv_and_manifest(tmp_path):
    """run.py with a forced fallback: blocks.csv rows, the manifest count, and the same totals."""
    results = tmp_path / "r"
    proc = subprocess.run([sys.executable, "run.py", "model=tiny-llama", "pruner=sparsegpt", "pruner.percdamp=0",
                           "sparsity=0.5", "protocol=smoke", "calib.nsamples=1", "calib.seqlen=8",
                           "eval.datasets=[wikitext2]", f"results.dir={results}", f"data.local_dir={data_dir()}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (folder,) = [p for p in (results / "runs").iterdir() if "__sparsegpt__" in p.name]
    blocks = pd.read_csv(folder / "blocks.csv")
    rows = blocks[blocks.metric.str.startswith("fallback:")]
    manifest = read_manifest(folder)
    assert len(rows) and manifest["fallbacks"]["total"] == rows["value"].sum() > 0
    assert manifest["fallbacks"]["by_kind"] == {"cholesky_damping_raised": int(rows["value"].sum())}
    report = subprocess.run([sys.executable, "-m", "runners.reporting.report", f"results.dir={results}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (results / "report" / "report.md").read_text()
    assert "Numerical fallbacks" in text and "cholesky_damping_raised" in text


def test_ridge_cholesky_is_the_factor_of_gram_plus_ridge_identity():
    """The in-place diagonal shift gives bit for bit the factor of ``gram + lam I`` (lam = ridge x
    mean diagonal), and leaves the caller's matrix untouched."""
    torch.manual_seed(0)
    a = torch.randn(40, 25)
    gram = a.t() @ a
    before = gram.clone()
    lam = 1e-4 * float(gram.double().diagonal().mean())
    expected = torch.linalg.cholesky(gram.double() + lam * torch.eye(25, dtype=torch.float64))
    assert torch.equal(ridge_cholesky(gram, 1e-4), expected)
    assert torch.equal(gram, before)
