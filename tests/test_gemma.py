"""The second embedded model, Gemma-3-270M, and the BOS window convention (eval.bos) it needs.

Fast: the windows with and without a BOS score the same target tokens; whole-model and
block-by-block evaluation read the same windows; the setting leaves every earlier run id alone
and is validated. Slow: the harness's dense quick-protocol WikiText-2 perplexity of Gemma equals
transformers' own loss over independently built windows, with and without BOS.
"""
import importlib.util
import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from eval.blockwise import blockwise_perplexity
from eval.perplexity import IGNORE, check_bos, labeled_windows, perplexity, resolve_bos, window_losses, windows
from runners.cli import CONF
from runners.execution.identity import run_id
from runners.execution.job import SettingsError, resolve
from runners.execution.models import EMBEDDED, ModelSpec, embedded_model
from runners.validate import validate
from tests.conftest import data_dir, tiny_model

BOS = 7


def _targets(inputs: torch.Tensor, labels: torch.Tensor) -> list[list[int]]:
    """The tokens each row scores, in order (labels[:, 0] is never a target)."""
    return [[int(t) for t in row[1:] if int(t) != IGNORE] for row in labels]


# ---- windows ---------------------------------------------------------------------------------


def test_windows_without_bos_are_the_original_ones():
    """bos=None: (windows x seqlen), the tail dropped, every token after a window's first scored."""
    ids = torch.arange(100, 135).unsqueeze(0)
    inputs, labels = labeled_windows(ids, 10)
    assert torch.equal(inputs, ids[0, :30].view(3, 10)) and torch.equal(labels, inputs)
    assert torch.equal(windows(ids, 10, max_windows=2), ids[0, :20].view(2, 10))


def test_bos_is_put_in_front_and_the_same_tokens_are_scored():
    """bos: (windows x (seqlen + 1)), the BOS first, then the same window; the targets are the
    original ones (the window's first token, predicted from the BOS alone, is not scored)."""
    ids = torch.arange(100, 135).unsqueeze(0)
    plain, plain_labels = labeled_windows(ids, 10)
    inputs, labels = labeled_windows(ids, 10, bos=BOS)
    assert inputs.shape == (3, 11)
    assert (inputs[:, 0] == BOS).all() and torch.equal(inputs[:, 1:], plain)
    assert _targets(inputs, labels) == _targets(plain, plain_labels) == [list(range(101 + 10 * k, 110 + 10 * k))
                                                                       for k in range(3)]
    assert torch.equal(windows(ids, 10, max_windows=2, bos=BOS), inputs[:2])


def test_a_window_that_starts_with_the_bos_gets_no_second_one():
    """A tokenizer that puts a BOS at the start of the text (Gemma's) already leads the first
    window with it: that row is read as it is plus the next token (not scored), one BOS only;
    the targets stay the original ones."""
    ids = torch.cat([torch.tensor([BOS]), torch.arange(100, 134)]).unsqueeze(0)
    plain, plain_labels = labeled_windows(ids, 10)
    inputs, labels = labeled_windows(ids, 10, bos=BOS)
    assert inputs[0].tolist() == ids[0, :11].tolist()  # BOS, 100..109: the window and the next token
    assert (inputs == BOS).sum(1).tolist() == [1, 1, 1]
    assert torch.equal(inputs[1:, 1:], plain[1:])
    assert _targets(inputs, labels) == _targets(plain, plain_labels)
    assert labels[0, -1] == IGNORE  # the extra token
    one = ids[:, :10]  # a single window and no next token: a one-line error, not a second BOS
    with pytest.raises(ValueError, match="eval.seqlen=10 with eval.bos=true"):
        labeled_windows(one, 10, bos=BOS)


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_bos_windows_losses_equal_transformers_and_blockwise(name, one_thread):
    """With a BOS, the harness's per-window loss is transformers' own loss on the BOS-led window
    with the first text token not scored; block by block gives the same number (both read
    labeled_windows)."""
    model = tiny_model(name)
    ids = torch.randint(4, model.config.vocab_size, (1, 4 * 16 + 3), generator=torch.Generator().manual_seed(3))
    ids[0, 0] = BOS  # the tokenizer's own BOS leading the text
    ppl = perplexity(model, ids, 16, "cpu", bos=BOS)
    with torch.no_grad():
        losses = []
        for k in range(4):
            window = ids[:, 16 * k:16 * (k + 1)]
            if k == 0:  # already led by the BOS: the plain window
                x, labels = window, window
            else:
                x = torch.cat([torch.tensor([[BOS]]), window], 1)
                labels = x.clone()
                labels[:, :2] = IGNORE
            losses.append(float(model(input_ids=x, labels=labels).loss))
    assert ppl == pytest.approx(math.exp(sum(losses) / 4), rel=1e-5)
    assert blockwise_perplexity(model, ids, 16, "cpu", bos=BOS, batch_size=3) == pytest.approx(ppl, rel=1e-5)
    assert perplexity(model, ids, 16, "cpu") != pytest.approx(ppl, rel=1e-4)  # the BOS is really read


# ---- the setting -----------------------------------------------------------------------------


def test_bos_setting_values():
    """auto follows the model preset's model.bos; true/false override it; anything else is one line."""
    assert resolve_bos("auto", True) is True and resolve_bos("auto", False) is False
    assert resolve_bos(False, True) is False and resolve_bos(True, False) is True
    with pytest.raises(ValueError, match=r"eval.bos='yes' is not valid: accepted auto, true, false"):
        check_bos("yes")


needs_data = pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"data.local_dir={data_dir()}", "protocol=quick", *overrides])


# Run ids of the store before eval.bos existed (computed with commit c5ca84e on the offline data).
BEFORE = {("pruner=dense",): "smollm2-135m__dense__0__73bbf8f3bf",
          ("pruner=wanda", "sparsity=0.5"): "smollm2-135m__wanda__0.5__50ae64a3b2",
          ("pruner=sparsegpt", "sparsity=2:4", "protocol=paper"): "smollm2-135m__sparsegpt__2-4__d67dda6ed7",
          ("pruner=wanda", "model=tiny-llama", "protocol=smoke"): "tiny-llama__wanda__0.5__0f34103e78"}


@needs_data
@pytest.mark.parametrize("overrides", list(BEFORE))
def test_run_ids_without_bos_are_unchanged(overrides):
    """SmolLM2 (no BOS by default) keeps every run id of a store made before eval.bos existed,
    with eval.bos left alone or set to false; eval.bos=true is another run."""
    assert run_id(resolve(_cfg(*overrides))[2]) == BEFORE[overrides]
    assert run_id(resolve(_cfg(*overrides, "eval.bos=false"))[2]) == BEFORE[overrides]
    assert run_id(resolve(_cfg(*overrides, "eval.bos=auto"))[2]) == BEFORE[overrides]
    with_bos = resolve(_cfg(*overrides, "eval.bos=true"))[2]
    assert run_id(with_bos) != BEFORE[overrides] and with_bos["eval"]["bos"] is True


@needs_data
def test_gemma_preset_reads_windows_after_the_bos():
    """model=gemma3-270m: eval.bos=auto resolves to the preset's true (in the run id);
    eval.bos=false is the original convention (nothing added to the id)."""
    run, _, key = resolve(_cfg("model=gemma3-270m", "pruner=dense"))
    assert run.bos and key["eval"]["bos"] is True and key["model"]["path"] == "gemma3-270m"
    _, _, plain = resolve(_cfg("model=gemma3-270m", "pruner=dense", "eval.bos=false"))
    assert "bos" not in plain["eval"] and run_id(plain) != run_id(key)
    assert run_id(resolve(_cfg("model=gemma3-270m", "pruner=dense", "eval.bos=true"))[2]) == run_id(key)


@needs_data
def test_bad_bos_values_are_one_line():
    """eval.bos and model.bos are checked before anything loads, one line naming key, value and accepted."""
    problem = validate(["eval.bos=yes"])
    assert problem == "eval.bos='yes' is not valid: accepted auto, true, false"
    problem = validate(["model=gemma3-270m", "model.bos=2"])
    assert problem == "model.bos=2 is not valid: accepted true or false"
    with pytest.raises(SettingsError, match=r"eval.bos=3 is not valid"):
        resolve(_cfg("eval.bos=3"))
    problem = validate(["model=gemma3-270m", "eval.seqlen=32768"])  # one position more with the BOS
    assert problem and problem.startswith("eval.seqlen=32768 after the BOS (eval.bos) is longer than gemma3-270m's "
                                          "32768 positions: accepted 2..32767")
    assert validate(["model=gemma3-270m", "eval.seqlen=32768", "eval.bos=false", "pruner=dense"]) is None


def test_report_keeps_the_bos_conventions_apart():
    """Metric rows record eval_bos; the report splits runs on it (never averages the two
    conventions as if they were seeds), and rows of older stores, which read no BOS, count as False."""
    import pandas as pd

    from runners.execution.job import METRIC_COLUMNS
    from runners.reporting.labels import normalize, row_labels

    base = {**dict.fromkeys(METRIC_COLUMNS, ""), "model": "gemma3-270m", "pruner": "dense", "sparsity": "0",
            "protocol": "quick", "dataset": "wikitext2", "metric": "ppl", "status": "ok", "eval_max_windows": 12}
    assert "eval_bos" in METRIC_COLUMNS
    rows = [{**base, "run_id": "a", "eval_bos": True, "value": 28.26},
            {**base, "run_id": "b", "eval_bos": False, "value": 73.43}]
    old = {k: v for k, v in base.items() if k != "eval_bos"}
    frame = normalize(pd.concat([pd.DataFrame(rows), pd.DataFrame([{**old, "run_id": "c", "value": 73.43}])]))
    assert list(row_labels(frame)) == ["dense eval_bos=True", "dense eval_bos=False", "dense eval_bos=False"]
    assert list(row_labels(normalize(pd.DataFrame([{**old, "run_id": "c", "value": 1.0}])))) == ["dense"]


def test_embedded_models_are_declared_once():
    """null names SmolLM2 (the runs stored before Gemma); an unknown name lists the accepted ones."""
    assert embedded_model(None) is EMBEDDED["smollm2-135m"]
    assert embedded_model("gemma3-270m").assemble
    with pytest.raises(ValueError, match=r"model.name_or_path='gemma9' is not an embedded model: accepted null "
                                         r"\(SmolLM2-135M\) or gemma3-270m"):
        ModelSpec(name="x", source="embedded", name_or_path="gemma9")


# ---- the real model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma(cache_dir):
    """(model, tokenizer) of the embedded Gemma-3-270M, float32 on the CPU."""
    from runners.execution.models import load_model

    if importlib.util.find_spec(EMBEDDED["gemma3-270m"].package) is None:
        pytest.skip(f"Gemma-3-270M is not installed: {EMBEDDED['gemma3-270m'].install}")
    spec = ModelSpec(name="gemma3-270m", source="embedded", name_or_path="gemma3-270m", family="gemma3",
                     dtype="float32", bos=True)
    return load_model(spec, device="cpu", cache_dir=cache_dir)


@pytest.mark.slow
def test_gemma_tokenizer(gemma):
    """The GGUF's SentencePiece vocabulary: <bos> = 2 first, then whole words."""
    tokenizer = gemma[1]
    assert tokenizer.bos_token_id == 2 and tokenizer.eos_token_id == 1
    ids = tokenizer("Hello world").input_ids
    assert ids == [2, 9259, 1902] and tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "Hello", "\u2581world"]
    text = "Pruning 123 langüage models\n\n = Robert Boulter =\n"
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


@pytest.mark.slow
def test_gemma_quick_wikitext2_equals_transformers_loss(gemma, tmp_path, local_data, cache_dir):
    """Dense Gemma-3-270M, quick protocol (12 windows of 512), WikiText-2. Through run_job with the
    preset's BOS: equal to exp(mean of model(input_ids, labels=).loss) over windows built here
    from the token ids, to 1e-4 relative, and 28.26. With eval.bos=false (the harness's window
    losses on the same model, no second load): 73.43, each of its first three windows equal to
    transformers' loss on the raw window."""
    from eval.datasets import eval_tokens
    from runners.execution.job import run_job
    from runners.execution.store import load_metrics

    model, tokenizer = gemma
    ids = eval_tokens("wikitext2", tokenizer, str(local_data), 512, cache_dir)
    assert ids[0, 0] == tokenizer.bos_token_id  # the tokenizer leads the text with <bos>
    raw, with_bos = [], []
    with torch.no_grad():
        for k in range(12):
            window = ids[:, 512 * k:512 * (k + 1)]
            if k < 3:
                raw.append(float(model(input_ids=window, labels=window).loss))
            if k == 0:  # already led by <bos>: read as it is
                with_bos.append(raw[0])
                continue
            x = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), window], 1)
            labels = x.clone()
            labels[:, :2] = IGNORE  # the same targets as without: the window's tokens after its first
            with_bos.append(float(model(input_ids=x, labels=labels).loss))
    results = tmp_path / "bos-true"
    cfg = _cfg("model=gemma3-270m", "pruner=dense", "eval.datasets=[wikitext2]", "model.dtype=float32",
               "eval.bos=true", f"results.dir={results}", f"cache_dir={cache_dir}")
    assert run_job(cfg) == "ok"
    metrics = load_metrics(results)
    stored = float(metrics[metrics.dataset == "wikitext2"]["value"].iloc[0])
    assert stored == pytest.approx(math.exp(sum(with_bos) / 12), rel=1e-4)
    assert stored == pytest.approx(28.26, abs=0.05)
    inputs, labels = labeled_windows(ids, 512, max_windows=12)
    plain = window_losses(model, inputs, "cpu", labels=labels)
    torch.testing.assert_close(plain[:3], torch.tensor(raw), rtol=1e-4, atol=0)
    assert math.exp(float(plain.mean())) == pytest.approx(73.43, abs=0.05)
