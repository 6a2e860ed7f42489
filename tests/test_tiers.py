"""The test tiers say what runs: `make test-fast` deselects `slow` (SmolLM2 loads) and `subprocess`
(Python child processes), and a test that starts a Python child without the marker fails."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_an_unmarked_test_cannot_start_a_python_child():
    with pytest.raises(AssertionError, match="not marked @pytest.mark.subprocess"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(AssertionError, match="not marked @pytest.mark.subprocess"):
        subprocess.Popen(["python3", "-c", "pass"])
    assert subprocess.run(["true"]).returncode == 0  # other programs (git, ps) are not Python children


@pytest.mark.subprocess
def test_a_marked_test_can():
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0


def test_markers_and_make_targets_agree():
    """pyproject registers every tier marker, and test-fast deselects the two costly tiers."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert {m.split(":")[0] for m in markers} == {"slow", "subprocess", "cuda", "reproduce"}
    makefile = (ROOT / "Makefile").read_text()
    fast = re.search(r"^test-fast:.*\n\t(.+)$", makefile, re.M).group(1)
    assert fast.endswith('-m "not slow and not subprocess"'), fast
    # make test: every test but the reproductions, the slow ones first and alone, the rest on
    # workers; make test-reproduce: the reproductions; CI runs both, so nothing is left out
    whole = re.search(r"^test:.*\n((?:\t.+\n)+)", makefile, re.M).group(1).split("\n\t")
    assert [line.strip().rpartition(" -m ")[2] for line in whole] == ['"slow and not reproduce"',
                                                                      '"not slow and not reproduce"'], whole
    reproduce = re.search(r"^test-reproduce:.*\n\t(.+)$", makefile, re.M).group(1)
    assert reproduce.endswith("-m reproduce"), reproduce
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make")]
    assert ci == ["make test", "make test-reproduce"], ci


def test_smollm2_fixtures_make_a_test_slow(request):
    """Every collected test that takes the SmolLM2 fixtures carries the slow marker."""
    for item in request.session.items:
        if {"smollm2", "fresh_smollm2"} & set(getattr(item, "fixturenames", ())):
            assert item.get_closest_marker("slow"), item.nodeid
