"""The tools' settings read through Hydra (runners/tool_config.py): report, store check, bench and
bench-scale compose their defaults, keep their command lines, reject a bad key or value in one line
naming it (exit code 2) and list their settings with --help; run.py and the progress callback talk
through the Hydra config and the jobs' status.json files."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from runners import bench, bench_scale, bench_speed, callbacks, tool_config
from runners.cli import CONF, log_folder
from runners.execution import store
from runners.execution.models import ModelSpec
from runners.reporting import report
from runners.reporting.compare import REFERENCE
from tests.conftest import ROOT


def _rejected(capsys, main, argv) -> str:
    """``main(argv)`` stops with exit code 2 and one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), (stop.value.code, err)
    return err


def _help(capsys, main, argv=("--help",)) -> str:
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    assert stop.value.code == 0
    return capsys.readouterr().out


# ---- report --------------------------------------------------------------------------------


def test_report_defaults_and_values_compose(tmp_path):
    s = tool_config.compose_settings(report.TOOL, [])
    assert (s.results.dir, s.report.compare, s.report.block_sparsity, s.report.reference) == \
        ("results", False, None, str(REFERENCE))
    ref = tmp_path / "it's ref.csv"
    ref.write_text("model\n")
    s = tool_config.compose_settings(report.TOOL, ["results.dir=/tmp/my results", "report.compare=true",
                                                   "report.block_sparsity=0.70", f"report.reference={ref}"])
    assert (s.results.dir, s.report.compare, s.report.block_sparsity) == ("/tmp/my results", True, "0.70")
    assert s.report.reference == str(ref)  # text as written, quotes and spaces included
    assert tool_config.compose_settings(report.TOOL, ["report.block_sparsity="]).report.block_sparsity == ""


def test_report_rejects_a_bad_key_or_value_in_one_line(capsys, tmp_path):
    err = _rejected(capsys, report.main, [f"results.dir={tmp_path}", "report.bogus=1"])
    assert "report.bogus='1' is not a known setting" in err and "report.compare" in err
    err = _rejected(capsys, report.main, [f"results.dir={tmp_path}", "report.compare=maybe"])
    assert "report.compare='maybe' is not valid: accepted true or false" in err
    err = _rejected(capsys, report.main, [f"results.dir={tmp_path}", "report.block_sparsity=0.7.1"])
    assert "report.block_sparsity='0.7.1'" in err and "2:4" in err
    err = _rejected(capsys, report.main, [f"results.dir={tmp_path}", "report.compare=true",
                                          f"report.reference={tmp_path / 'none.csv'}"])
    assert "report.reference=" in err and "accepted a CSV file" in err
    assert "results.dir=''" in _rejected(capsys, report.main, ["results.dir="])
    assert not (tmp_path / "report").exists()


def test_report_help_lists_the_settings(capsys):
    out = _help(capsys, report.main)
    for key in ("results.dir=results", "report.compare=false", "report.block_sparsity=null", "report.reference="):
        assert key in out, key


# ---- store check ---------------------------------------------------------------------------


def test_store_check_defaults_compose_and_bad_settings_are_one_line(capsys, tmp_path):
    assert tool_config.compose_settings(store.TOOL, ["check"]).results.dir == "results"
    assert store.main(["check", f"results.dir={tmp_path}"]) == 0
    assert "0 runs in" in capsys.readouterr().out
    err = _rejected(capsys, store.main, ["check", "results.dirr=x"])
    assert "results.dirr='x' is not a known setting: accepted results.dir" in err
    assert "results.dir='' is not valid: accepted a folder" in _rejected(capsys, store.main, ["check", "results.dir="])
    assert "accepted check" in _rejected(capsys, store.main, ["chek", f"results.dir={tmp_path}"])
    assert "accepted check" in _rejected(capsys, store.main, [])
    assert "results.dir=results" in _help(capsys, store.main, ["check", "--help"])


@pytest.mark.subprocess
def test_store_check_command_line_exit_code_2():
    """The one subprocess check of the tools' error path: stderr is the one line, exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "runners.execution.store", "check", "results.dirr=x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: results.dirr='x' is not a known setting: accepted results.dir\n"


# ---- bench ---------------------------------------------------------------------------------


def test_bench_defaults_compose_with_the_model_preset():
    s = tool_config.compose_settings(bench.TOOL, [])
    assert (s.nsamples, s.seqlen, s.sparsity, s.pruners, s.out) == (32, 2048, "0.7", [], "results/bench")
    assert (s.data.local_dir, s.cache_dir) == (None, None)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        preset = OmegaConf.to_container(compose(config_name="config").model, resolve=True)
    assert s.model == preset and ModelSpec(**s.model).name == "smollm2-135m"  # conf/model/smollm2-135m.yaml
    assert bench.record(s)["model"] == "smollm2-135m"
    s = tool_config.compose_settings(bench.TOOL, ["model=tiny-opt", "pruners=wanda,wanda+dsnot", "nsamples=8",
                                                  "seqlen=512", "sparsity=2:4", "data.local_dir=/d", "cache_dir="])
    assert (s.model["source"], s.model["family"], s.pruners, s.nsamples, s.seqlen, s.sparsity) == \
        ("tiny", "opt", ["wanda", "wanda+dsnot"], 8, 512, "2:4")
    assert (s.data.local_dir, s.cache_dir) == ("/d", "")
    s = tool_config.compose_settings(bench.TOOL, ["model=hub", "model.name_or_path=facebook/opt-125m"])
    assert ModelSpec(**s.model).name == "facebook/opt-125m"
    assert bench.parse([]).pruners == bench.default_methods()


def test_bench_takes_a_model_preset_that_lands_later(tmp_path, monkeypatch):
    """A new conf/model/<name>.yaml is a model= option of make bench as it lands (no code names it)."""
    import shutil

    shutil.copytree(CONF / "model", tmp_path / "model")
    (tmp_path / "model" / "gemma3-270m.yaml").write_text(
        "name: gemma3-270m\nsource: hub\nname_or_path: google/gemma-3-270m\nfamily: null\ndtype: auto\n")
    monkeypatch.setattr(tool_config, "CONF", tmp_path)
    s = tool_config.compose_settings(bench.TOOL, ["model=gemma3-270m"])
    assert ModelSpec(**s.model) == ModelSpec(name="gemma3-270m", source="hub", name_or_path="google/gemma-3-270m")


def test_bench_rejects_a_bad_key_or_value_in_one_line(capsys):
    assert "nsample='8' is not a known setting" in _rejected(capsys, bench.main, ["nsample=8"])
    assert "nsamples='abc' is not valid: accepted a whole number >= 1" in _rejected(capsys, bench.main,
                                                                                     ["nsamples=abc"])
    assert "nsamples='0' is not valid" in _rejected(capsys, bench.main, ["nsamples=0"])
    assert "seqlen='1,2' is not valid" in _rejected(capsys, bench.main, ["seqlen=1,2"])
    err = _rejected(capsys, bench.main, ["model=gemma3-270mm"])
    assert "model='gemma3-270mm' is not valid: accepted" in err and "smollm2-135m" in err
    assert "model.foo='1' is not a setting of model=smollm2-135m" in _rejected(capsys, bench.main, ["model.foo=1"])
    assert "model.dtype='float8'" in _rejected(capsys, bench.main, ["model.dtype=float8"])
    assert "model.name_or_path is not set" in _rejected(capsys, bench.main, ["model=hub"])
    assert "pruners='wandaa' is not valid" in _rejected(capsys, bench.main, ["pruners=wanda,wandaa"])
    assert "sparsity='0.7.1' is not valid" in _rejected(capsys, bench.main, ["sparsity=0.7.1"])
    assert "'--model' is not an option" in _rejected(capsys, bench.main, ["--model"])


def test_bench_help_lists_the_settings_and_the_models(capsys):
    out = _help(capsys, bench.main)
    for key in ("model=smollm2-135m", "tiny-opt", "pruners=", "nsamples=32", "seqlen=2048", "sparsity=0.7",
                "data.local_dir=null", "out=results/bench", "cache_dir=null"):
        assert key in out, key


def test_bench_times_the_model_it_is_given(capsys, local_data, cache_dir, tmp_path):
    """model=tiny-llama: its own block count in the T_pass line, and in bench.json."""
    bench.main(["model=tiny-llama", "pruners=magnitude", "nsamples=2", "seqlen=64", f"data.local_dir={local_data}",
                f"cache_dir={cache_dir}", f"out={tmp_path}"])
    out = capsys.readouterr().out
    assert "(2 x 64 tokens, 3 blocks," in out and "magnitude:" in out
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["args"]["model"] == "tiny-llama" and saved["args"]["nsamples"] == "2"
    assert [r["pruner"] for r in saved["rows"]] == ["magnitude"]


# ---- bench-speed ---------------------------------------------------------------------------


def test_bench_speed_defaults_and_bad_values(capsys):
    """make bench-speed's defaults are the issue's grid; a bad value is one line, exit code 2."""
    s = tool_config.compose_settings(bench_speed.TOOL, [])
    assert (s.sparsities, s.kernels, s.prefill_tokens, s.decode_tokens, s.decode_batches) == (
        ["0.5", "0.7", "0.9", "2:4"], ["dense", "csr", "bsr", "semi_structured", "mkl"], 512, 128, [1, 8])
    assert s.model["name"] == "smollm2-135m" and (s.warmup, s.repeats, s.device) == (1, 3, "cpu")
    s = bench_speed.parse(["model=gemma3-270m", "kernels=dense,csr", "sparsities=0.5,2:4"])
    assert (s.model["name"], s.kernels, s.sparsities) == ("gemma3-270m", ["dense", "csr"], ["0.5", "2:4"])
    assert "kernels='cusparse' is not valid: accepted dense, csr" in _rejected(capsys, bench_speed.main,
                                                                             ["kernels=dense,cusparse"])
    assert "accepted a list starting with dense" in _rejected(capsys, bench_speed.main, ["kernels=csr,dense"])
    assert "sparsities='0.7.1' is not valid" in _rejected(capsys, bench_speed.main, ["sparsities=0.5,0.7.1"])
    assert "repeats='0' is not valid" in _rejected(capsys, bench_speed.main, ["repeats=0"])
    assert "device='tpu' is not valid: accepted cpu or cuda[:N]" in _rejected(capsys, bench_speed.main,
                                                                            ["device=tpu"])


def test_bench_speed_times_the_model_it_is_given(capsys, local_data, cache_dir, tmp_path):
    """model=tiny-llama at 0.5 under dense and CSR: every phase, the file sizes, speed.csv and speed.json."""
    bench_speed.main(["model=tiny-llama", "sparsities=0.5", "kernels=dense,csr", "prefill_tokens=8",
                      "decode_tokens=2", "decode_batches=[1]", "repeats=1", "warmup=0",
                      f"data.local_dir={local_data}", f"cache_dir={cache_dir}", f"out={tmp_path}"])
    frame = pd.read_csv(tmp_path / "speed.csv")
    timed = frame[frame["phase"] != "disk"]
    assert sorted(set(zip(timed["sparsity"].astype(str), timed["kernel"]))) == [
        ("0.5", "csr"), ("0.5", "dense"), ("dense", "dense")]
    disk = frame[frame["phase"] == "disk"].set_index(["sparsity", "kernel"])["bytes"]
    assert disk[("0.5", "sparse-bitmask")] < disk[("0.5", "dense_file")]
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["settings"]["kernels"] == "dense,csr" and saved["settings"]["model"] == "tiny-llama"
    assert "| 0.5 " in capsys.readouterr().out


# ---- bench-scale ---------------------------------------------------------------------------


def test_bench_scale_defaults_and_the_makefile_arguments_compose():
    s = tool_config.compose_settings(bench_scale.TOOL, [])
    assert s.models == ["opt-13b", "opt-66b", "llama-2-7b", "llama-2-70b", "llama-3.1-8b", "qwen3-30b-a3b"]
    assert s.nsamples == [1, 2]
    assert (s.seqlen, s.mem_gb, s.max_s, s.sparsity, s.reuse, s.measure) == (256, 8.0, 75.0, "0.7", [], True)
    s = bench_scale.parse(["mem_gb=8", "max_s=75"])  # make bench-scale ARGS="mem_gb=8 max_s=75"
    from runners.bench import default_methods

    assert s.pruners == default_methods()
    args = bench_scale.record(s)
    assert (args["mem_gb"], args["max_s"], args["nsamples"], args["measure"]) == ("8", "75", "1,2", "true")
    s = bench_scale.parse(["models=llama-2-7b", "nsamples=8", "mem_gb=20.5", "measure=false", "pruners=[wanda,ria]"])
    assert (s.models, s.nsamples, s.mem_gb, s.measure, s.pruners) == (["llama-2-7b"], [8], 20.5, False, ["wanda", "ria"])


def test_bench_scale_rejects_a_bad_key_or_value_in_one_line(capsys, tmp_path):
    assert "mem='8' is not a known setting" in _rejected(capsys, bench_scale.main, ["mem=8"])
    assert "max_s='0' is not valid: accepted a positive number" in _rejected(capsys, bench_scale.main, ["max_s=0"])
    assert "mem_gb='lots' is not valid" in _rejected(capsys, bench_scale.main, ["mem_gb=lots"])
    assert "nsamples='1,x' is not valid" in _rejected(capsys, bench_scale.main, ["nsamples=1,x"])
    assert "measure='maybe' is not valid" in _rejected(capsys, bench_scale.main, ["measure=maybe"])
    assert "models='opt-13' has no conf/shapes file" in _rejected(capsys, bench_scale.main, ["models=opt-13"])
    assert "reuse=" in _rejected(capsys, bench_scale.main, [f"reuse={tmp_path / 'none.json'}"])
    assert not (tmp_path / "bench_scale.json").exists()


def test_bench_scale_help_lists_the_settings(capsys):
    out = _help(capsys, bench_scale.main)
    for key in ("models=opt-13b,opt-66b,llama-2-7b,llama-2-70b", "nsamples=1,2", "mem_gb=8", "max_s=75",
                "measure=true", "reuse="):
        assert key in out, key


def test_one_block_is_the_shapes_family_with_one_block():
    """AutoConfig.for_model of the shape's fields: OPT and LLaMA shapes give the parameters the
    explicit OPTConfig/LlamaConfig gave before; other families build their own class."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    def params(net):
        return {k: tuple(v.shape) for k, v in net.named_parameters()}

    vocab = bench_scale.TINY_VOCAB
    with torch.device("meta"):
        opt = OPTForCausalLM(OPTConfig(hidden_size=5120, ffn_dim=20480, num_hidden_layers=1, num_attention_heads=40,
                                       vocab_size=vocab, word_embed_proj_dim=5120, max_position_embeddings=2048))
        llama = LlamaForCausalLM(LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=1,
                                             num_attention_heads=64, num_key_value_heads=8, vocab_size=vocab,
                                             max_position_embeddings=4096))
        built = {m: AutoModelForCausalLM.from_config(bench_scale.one_block_config(m))
                 for m in ("opt-13b", "llama-2-70b", "phi-3-mini", "gemma-3-4b", "qwen3-8b", "qwen3-30b-a3b")}
    assert params(built["opt-13b"]) == params(opt) and params(built["llama-2-70b"]) == params(llama)
    for model, net in built.items():
        assert net.config.num_hidden_layers == 1 and net.config.vocab_size == vocab, model
    assert type(built["phi-3-mini"]).__name__ == "Phi3ForCausalLM"
    assert type(built["gemma-3-4b"]).__name__ == "Gemma3ForCausalLM"
    assert built["phi-3-mini"].config.pad_token_id is None  # its default 32000 is beyond the small vocabulary
    experts = built["qwen3-30b-a3b"].model.layers[0].mlp.experts  # 128 fused experts of width 768
    assert tuple(experts.gate_up_proj.shape) == (128, 2 * 768, 2048) and tuple(experts.down_proj.shape) == (128, 2048, 768)


# ---- run.py and the progress callback ------------------------------------------------------


def test_callback_settings_come_through_the_hydra_config(tmp_path, caplog):
    """run.py's overrides reach the callback Hydra instantiates; the object (as a launcher ships it,
    pickled) keeps them; its lines carry n and the ETA from them; the log folder has the id."""
    channel = ["hydra.callbacks.progress.total=5", "hydra.callbacks.progress.start=1000.5",
               "hydra.callbacks.progress.invocation=4242"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"results.dir={tmp_path}", *channel], return_hydra_config=True)
    progress = pickle.loads(pickle.dumps(instantiate(cfg.hydra.callbacks.progress)))
    assert (type(progress), progress.total, progress.start, progress.invocation) == (callbacks.Progress, 5, 1000.5, 4242)
    job = OmegaConf.create({"hydra": {"job": {"num": 1}, "overrides": {"task": ["pruner=wanda"]}, "mode": "RUN"}})
    with caplog.at_level("INFO", logger="sweep"):
        progress.on_job_start(job)
        progress.on_job_end(job, job_return=None)
    assert "run 2/5 start: pruner=wanda" in caplog.text and "run 2/5 end: error in" in caplog.text
    assert "for 3 more" in caplog.text
    folder = log_folder(["-m", f"results.dir={tmp_path}", *channel])
    assert folder.startswith(f"{tmp_path}/hydra/multirun-") and folder.endswith("-4242")
    assert log_folder([f"results.dir={tmp_path}", *channel]).startswith(f"{tmp_path}/hydra/run-")
    assert callbacks.Progress().total == 1 and abs(callbacks.Progress().start - time.time()) < 60


def test_exit_code_from_the_jobs_status_files(tmp_path, capsys):
    """finish(): the table, a line per failure, and the exit code read from each job's status.json."""
    sweep = tmp_path / "sweep"
    for num, status in enumerate(["ok", "skipped:error", "oom"]):
        (sweep / str(num)).mkdir(parents=True)
        (sweep / str(num) / "status.json").write_text(json.dumps({"status": status}))
    (sweep / ".submitit").mkdir()
    folders = callbacks.job_folders(sweep, multirun=True)
    assert [f.name for f in folders] == ["0", "1", "2"]
    assert callbacks.finish(tmp_path, folders) == 1
    out = capsys.readouterr().out
    assert "no finished runs" in out and "1 of 3 runs failed (oom): exit code 1" in out
    assert callbacks.finish(tmp_path, folders[:2]) == 0
    assert callbacks.finish(tmp_path, callbacks.job_folders(tmp_path / "missing", multirun=False)) == 1  # no status
    assert callbacks.job_folders(tmp_path / "missing", multirun=True) == []
