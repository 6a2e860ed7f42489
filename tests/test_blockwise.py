"""Block-by-block perplexity (eval.blockwise) equals the whole-model forward, and leaves the run id alone."""
import pytest
import torch
from hydra import compose, initialize_config_dir

from eval.blockwise import blockwise_perplexity, check_setting, use_blockwise
from eval.perplexity import perplexity
from runners.cli import CONF
from runners.execution.identity import run_id
from runners.execution.job import SettingsError, resolve
from runners.validate import validate
from tests.conftest import data_dir, tiny_model


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_tiny_blockwise_equals_whole_model(name, batch_size):
    """Random token windows: block by block = model(input_ids) to 1e-5 relative, for any batching."""
    model = tiny_model(name)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, 5 * 32 + 7), generator=torch.Generator().manual_seed(1))
    whole = perplexity(model, ids, 32, "cpu", max_windows=None, batch_size=2)
    block = blockwise_perplexity(model, ids, 32, "cpu", max_windows=None, batch_size=batch_size)
    assert block == pytest.approx(whole, rel=1e-5)
    assert whole > 1.0


def test_blockwise_sees_a_pruned_block():
    """Zeroing one block's MLP output changes both numbers by the same amount (the path really runs the blocks)."""
    model = tiny_model("tiny-llama")
    ids = torch.randint(0, model.config.vocab_size, (1, 96), generator=torch.Generator().manual_seed(2))
    before = blockwise_perplexity(model, ids, 32, "cpu")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    after_block, after_whole = blockwise_perplexity(model, ids, 32, "cpu"), perplexity(model, ids, 32, "cpu")
    assert after_block != pytest.approx(before, rel=1e-4)
    assert after_block == pytest.approx(after_whole, rel=1e-5)


def test_auto_is_whole_model_on_cpu_and_settings_are_checked():
    """auto: whole-model on the CPU (the weights are already in host memory); true/false force it."""
    model = tiny_model("tiny-opt")
    assert use_blockwise("auto", model, "cpu") is False
    assert use_blockwise(True, model, "cpu") is True and use_blockwise(False, model, "cpu") is False
    with pytest.raises(ValueError, match=r"eval.blockwise='sometimes' is not valid: accepted auto, true, false"):
        check_setting("sometimes")


@pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
def test_blockwise_does_not_change_the_run_id_and_bad_value_is_one_line():
    def cfg(*overrides):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=[f"data.local_dir={data_dir()}", "model=tiny-opt",
                                                            "protocol=smoke", *overrides])

    ids = {run_id(resolve(cfg(f"eval.blockwise={v}"))[2]) for v in ("auto", "true", "false")}
    assert len(ids) == 1
    assert cfg().eval.blockwise == "auto" and cfg().eval.max_windows == 4  # default reaches every protocol
    problem = validate(["model=tiny-opt", "eval.blockwise=maybe"])
    assert problem and "eval.blockwise='maybe' is not valid: accepted auto, true, false" in problem
    assert "\n" not in problem
    with pytest.raises(SettingsError, match="eval.blockwise"):
        resolve(cfg("eval.blockwise=2"))


@pytest.mark.slow
def test_smollm2_blockwise_equals_whole_model(smollm2, local_data, cache_dir):
    """SmolLM2 on the first two 512-token WikiText-2 windows: block by block = whole model to 1e-5."""
    from eval.datasets import eval_tokens

    model, tokenizer = smollm2
    ids = eval_tokens("wikitext2", tokenizer, str(local_data), 512, cache_dir)
    whole = perplexity(model, ids, 512, "cpu", max_windows=2)
    assert blockwise_perplexity(model, ids, 512, "cpu", max_windows=2) == pytest.approx(whole, rel=1e-5)


@pytest.mark.skipif(data_dir() is None, reason="needs the offline data folder")
def test_run_job_blockwise_stores_the_same_perplexity(tmp_path, cache_dir):
    """A whole pruned run (tiny LLaMA, smoke protocol) with eval.blockwise=true stores the numbers of false."""
    from runners.execution.job import run_job
    from runners.execution.store import load_metrics

    values = {}
    for setting in ("false", "true"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                f"data.local_dir={data_dir()}", "model=tiny-llama", "protocol=smoke", "pruner=wanda",
                "sparsity=0.5", "eval.datasets=[wikitext2]", f"eval.blockwise={setting}",
                f"results.dir={tmp_path / setting}", f"cache_dir={cache_dir}"])
        assert run_job(cfg) == "ok"
        metrics = load_metrics(tmp_path / setting)
        values[setting] = metrics.sort_values("pruner")[["pruner", "value"]].values.tolist()
    assert [p for p, _ in values["true"]] == ["dense", "wanda"]
    for (_, a), (_, b) in zip(values["false"], values["true"]):
        assert b == pytest.approx(a, rel=1e-5)


def test_offload_device_map_keeps_blocks_whole():
    """Zero-shot offload (wiring only: no GPU here): with room for about two blocks on GPU 0,
    accelerate's map puts whole blocks there and the rest in CPU memory."""
    from eval.blockwise import model_bytes, offload_device_map

    model = tiny_model("tiny-llama")
    block_bytes = model_bytes(model.model.layers[0])
    device_map = offload_device_map(model, 2.5 * block_bytes, 10 * model_bytes(model))
    assert set(device_map.values()) <= {0, "cpu"} and "cpu" in device_map.values()
    for i in range(len(model.model.layers)):  # never split inside a block
        assert not any(k.startswith(f"model.layers.{i}.") for k in device_map)
    assert offload_device_map(model, 10 * model_bytes(model), 10 * model_bytes(model)) == {"": 0}
