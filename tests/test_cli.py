"""Bad command-line values stop before anything loads, with one line naming value and choices."""
import pytest

from runners.cli import check_overrides, choices
from runners.validate import check_command_line


@pytest.mark.parametrize("args,needle", [
    (["sparsity=1.2"], "sparsity='1.2'"), (["sparsity=5:4"], "sparsity='5:4'"), (["sparsity=0:4"], "sparsity='0:4'"),
    (["-m", "sparsity=0.5,1.5"], "sparsity='1.5'"), (["pruner=foo"], "pruner='foo'"),
    (["-m", "pruner=wanda,fooo"], "pruner='fooo'"), (["model=gpt5"], "model='gpt5'"),
    (["protocol=slow"], "protocol='slow'"), (["prune.layers=half"], "prune.layers='half'"),
    (["eval.datasets=[wikitext2,wt103]"], "wt103")])
def test_bad_values_one_line(args, needle):
    """What run.py checks first (and prints as its one stderr line before exiting 2, as
    tests/test_validation.py checks through run.py once) names the bad value and what is accepted."""
    message = check_command_line(args)
    assert message is not None and "\n" not in message, message
    assert needle in message and "accepted" in message


def test_error_lists_the_choices():
    """An unknown pruner's message lists every pruner config."""
    msg = check_overrides(["pruner=nope"])
    assert all(name in msg for name in choices("pruner")) and {"magnitude", "wanda", "dense"} <= set(choices("pruner"))


def test_good_values_pass():
    """Valid sweeps pass the check."""
    assert check_overrides(["-m", "pruner=magnitude,wanda", "sparsity=0.5,0.7,2:4,3:4", "protocol=quick",
                            "model=tiny-opt", "prune.layers=first_half", "data.local_dir=../shared/data"]) is None
