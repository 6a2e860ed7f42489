"""Current model families on tiny seeded random models built from transformers' own config
classes: Llama-3 (llama3 rope scaling), Qwen3, Mistral (sliding window shorter than the
window), Gemma-3 (mixed ``layer_types``, sliding window shorter than the window) and Phi-3
(fused ``qkv_proj`` and ``gate_up_proj``) and Qwen3-MoE (fused 3-D experts). Block-by-block
perplexity equals the whole model's and transformers' own loss; every block is called with its
own arguments; every pruner gives exact zero counts, each expert's too; a fused model prunes as
its unfused copy; each expert is pruned from the tokens routed to it."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config,
                          Qwen3Config, Qwen3MoeConfig)

from core.families import adapter_for
from core.structure import refusal
from core.walk import BlockInputs, capture, final_hidden, head_logits
from eval.blockwise import blockwise_window_losses
from eval.perplexity import next_token_losses, window_losses
from pruners.pattern import SparsityPattern
from runners import registry
from runners.cli import CONF
from runners.execution.engine import prune_model

VOCAB, SEQLEN, WINDOW = 128, 32, 8  # evaluation windows of 32 tokens, sliding windows of 8
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def family_config(name: str):
    """A tiny config of family ``name`` from transformers' own config class."""
    if name == "llama3":
        return LlamaConfig(**COMMON, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    if name == "qwen3":
        return Qwen3Config(**COMMON, head_dim=16)
    if name == "mistral":
        return MistralConfig(**COMMON, sliding_window=WINDOW)
    if name == "gemma3":
        return Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=WINDOW,
                                layer_types=["sliding_attention", "full_attention"] * 2)
    if name == "phi3":
        return Phi3Config(**COMMON)
    if name == "qwen3moe":  # 8 experts of width 32, 2 per token
        return Qwen3MoeConfig(**COMMON, head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
    raise KeyError(name)


FAMILIES = ["llama3", "qwen3", "mistral", "gemma3", "phi3", "qwen3moe"]


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(family_config(name)).eval()


def tokens(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, SEQLEN), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_blockwise_equals_whole_model_and_transformers_loss(name):
    """Windows longer than the sliding window: block by block = whole model = transformers' loss (1e-5)."""
    model, x = build(name), tokens()
    whole = window_losses(model, x, "cpu", batch_size=2)
    blockwise = blockwise_window_losses(model, x, "cpu", batch_size=2)
    with torch.no_grad():
        own = torch.stack([model(input_ids=x[i : i + 1], labels=x[i : i + 1]).loss for i in range(len(x))])
    torch.testing.assert_close(blockwise, whole, rtol=1e-5, atol=0)
    torch.testing.assert_close(whole, own.float(), rtol=1e-5, atol=0)


def test_gemma3_full_attention_blocks_get_a_full_mask_and_their_own_rotary_tables():
    """Block 1 (full attention) may attend from the last token to the first; block 0 (sliding)
    may not; their rotary tables differ (global base 1e6, local 1e4). Giving every block block 0's
    arguments, as the walk did before, changes the loss: the test can tell."""
    model, x = build("gemma3"), tokens(1)
    family = adapter_for(model)
    inputs = capture(model, family, x, "cpu")
    (_, sliding), (_, full) = inputs.calls[0][0], inputs.calls[1][0]

    def can_see_first(mask):  # None: plain causal attention (sdpa's is_causal)
        return True if mask is None else bool(mask[0, 0, -1, 0])

    assert not can_see_first(sliding["attention_mask"]) and bool(sliding["attention_mask"][0, 0, -1, -WINDOW])
    assert can_see_first(full["attention_mask"])
    assert not torch.equal(sliding["position_embeddings"][0], full["position_embeddings"][0])
    assert inputs.calls[2][0][1]["attention_mask"] is sliding["attention_mask"]  # same object, stored once

    right = final_hidden(model, family, x, "cpu")
    wrong = BlockInputs(list(inputs.hidden), [inputs.calls[0]] * len(inputs.calls))
    for i, block in enumerate(family.blocks(model)):
        wrong.advance([block(b.hidden, *b.args, **b.kwargs) for b in wrong.batches(i)])
    good = next_token_losses(list(head_logits(model, family, right.hidden, [x], "cpu"))[0], x)
    bad = next_token_losses(list(head_logits(model, family, wrong.hidden, [x], "cpu"))[0], x)
    assert not torch.allclose(good, bad, rtol=1e-4, atol=0)


def test_structure_found_without_declaration():
    """Gemma-3 and Phi-3 are not declared: their blocks, groups and fused parts come from the model."""
    gemma, phi = adapter_for(build("gemma3")), adapter_for(build("phi3"))
    assert gemma.blocks_path == "model.layers" and gemma.mlp is None
    assert [r for r, _ in gemma.groups] == ["attn_in", "attn_out", "mlp_in", "mlp_out"]
    assert dict(gemma.groups)["attn_in"] == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    assert dict(phi.groups) == {"attn_in": ("self_attn.qkv_proj",), "attn_out": ("self_attn.o_proj",),
                                "mlp_in": ("mlp.gate_up_proj",), "mlp_out": ("mlp.down_proj",)}
    assert [(p, s.start, s.stop) for p, s in phi.row_parts("self_attn.qkv_proj")] == [("q", 0, 64), ("k", 64, 96),
                                                                                       ("v", 96, 128)]
    assert [(p, s.start, s.stop) for p, s in phi.row_parts("mlp.gate_up_proj")] == [("gate", 0, 128),
                                                                                     ("up", 128, 256)]


@pytest.mark.parametrize("config,expected", [
    ({"model_type": "gpt_oss", "num_hidden_layers": 2, "num_local_experts": 8}, "transposed"),
    ({"model_type": "nemotron_h", "num_hidden_layers": 2, "n_routed_experts": 8}, "without a gate"),
    ({"model_type": "t5", "is_encoder_decoder": True, "num_layers": 2}, "encoder-decoder"),
    ({"model_type": "odd"}, "num_hidden_layers"),
])
def test_unsupported_structures_are_refused_by_config(config, expected):
    """One line naming the model_type and what is missing, from config.json alone."""
    problem = refusal(config)
    assert problem is not None and expected in problem and config["model_type"] in problem and "\n" not in problem


def _pruner(name: str):
    overrides = [f"pruner={name.partition('+')[0]}"] + (["refine=dsnot"] if name.endswith("+dsnot") else [])
    if name == "alps":
        overrides.append("pruner.max_iter=30")  # ALPS's ADMM to 30 iterations: the same code path, a tenth of the time
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return registry.build(cfg.pruner), (instantiate(cfg.refine) if name.endswith("+dsnot") else None)


PRUNERS = ["magnitude", "wanda", "sparsegpt", "ria", "alps", "wanda+dsnot"]


def _matrices(model):
    """Every prunable matrix of the model as transformers holds it: each Linear of each block (each
    part of a fused one), and each expert's gate, up and down slice of the fused 3-D experts."""
    family = adapter_for(model)
    for i, block in enumerate(family.blocks(model)):
        for name, linear in family.linears(block).items():
            for part, rows in family.row_parts(name) or [(name, slice(None))]:
                yield f"{i}.{name}.{part}", linear.weight.data[rows]
        for path, module in block.named_modules():
            if isinstance(getattr(module, "gate_up_proj", None), torch.nn.Parameter):
                gate, up = module.gate_up_proj.data.chunk(2, dim=1)
                for e in range(len(gate)):
                    yield from ((f"{i}.{path}.{e}.{n}", w[e]) for n, w in
                                (("gate", gate), ("up", up), ("down", module.down_proj.data)))


def _zeros_exact(model, pattern: SparsityPattern):
    """Every prunable matrix (each part of a fused one, each expert's) holds exactly its share of
    zeros; N:M in every group."""
    seen = 0
    for name, w in _matrices(model):
        seen += 1
        assert int((w == 0).sum()) == w.numel() // 2, name
        if pattern.is_nm:
            groups = (w.reshape(w.shape[0], -1, pattern.m) == 0).sum(-1)
            assert bool((groups == pattern.n_zero).all()), name
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("sparsity", ["0.5", "2:4"])
def test_every_pruner_gives_exact_zero_counts(name, sparsity):
    """magnitude, Wanda, SparseGPT, RIA, ALPS and Wanda+DSnoT on every family: exactly half of every
    matrix (of every part of a fused one) is zero, 2 zeros in every group of 4 for 2:4."""
    pattern, x = SparsityPattern.parse(sparsity), tokens(2)
    for pruner_name in PRUNERS:
        model = build(name)
        pruner, refine = _pruner(pruner_name)
        family = adapter_for(model)
        prune_model(model, family, pruner, pattern, x, list(range(4)), "cpu", batch_size=2,
                    diagnostics=False, refine=refine)
        assert _zeros_exact(model, pattern) == 4 * {"qwen3moe": 4 + 8 * 3}.get(name, 7)
        assert torch.isfinite(window_losses(model, x, "cpu", 2)).all(), pruner_name


@pytest.mark.parametrize("pruner_name", ["sparsellm", "sparsellm_released"])
def test_sparsellm_refuses_a_family_without_a_declared_mlp(pruner_name):
    """SparseLLM optimizes a declared MLP layout; on Gemma-3 (GELU-tanh, found by structure) it says so."""
    model = build("gemma3")
    pruner, _ = _pruner(pruner_name)
    with pytest.raises(ValueError, match="declared MLP layout.*accepted"):
        prune_model(model, adapter_for(model), pruner, SparsityPattern.parse(0.5), tokens(2), [0], "cpu",
                    diagnostics=False)


def _unfused_copy(phi):
    """A LLaMA model holding Phi-3's weights with qkv_proj and gate_up_proj split into their parts."""
    config = phi.config
    llama = AutoModelForCausalLM.from_config(LlamaConfig(**COMMON, rms_norm_eps=config.rms_norm_eps)).eval()
    state = {}
    for key, value in phi.state_dict().items():
        if "qkv_proj" in key:
            q, k, v = value.split([64, 32, 32])
            state.update({key.replace("qkv_proj", "q_proj"): q, key.replace("qkv_proj", "k_proj"): k,
                          key.replace("qkv_proj", "v_proj"): v})
        elif "gate_up_proj" in key:
            gate, up = value.chunk(2)
            state.update({key.replace("gate_up_proj", "gate_proj"): gate, key.replace("gate_up_proj", "up_proj"): up})
        else:
            state[key] = value
    llama.load_state_dict(state)
    assert config.hidden_act == llama.config.hidden_act
    return llama


@pytest.mark.parametrize("pruner_name", ["magnitude", "wanda", "sparsegpt", "ria"])
@pytest.mark.parametrize("sparsity", ["0.5", "2:4"])
def test_fused_phi3_prunes_as_its_unfused_copy(pruner_name, sparsity):
    """Pruning Phi-3 (fused) gives the weights that pruning the same model unfused gives."""
    phi, x = build("phi3"), tokens(4)
    llama = _unfused_copy(phi)
    torch.testing.assert_close(window_losses(phi, x, "cpu", 2), window_losses(llama, x, "cpu", 2))
    pattern = SparsityPattern.parse(sparsity)
    for model in (phi, llama):
        prune_model(model, adapter_for(model), _pruner(pruner_name)[0], pattern, x, list(range(4)), "cpu",
                    batch_size=2, diagnostics=False)
    fused = _unfused_copy(phi).state_dict()
    for key, value in llama.state_dict().items():
        torch.testing.assert_close(fused[key], value, rtol=1e-5, atol=1e-6, msg=key)


def _folder(tmp_path, cache_dir, local_data, name: str):
    """A tiny seeded model of family ``name`` saved as a Hugging Face folder with the tiny-llama
    tokenizer (its vocabulary): what ``model=hub model.name_or_path=FOLDER`` loads."""
    from runners.execution.models import load_model
    from tests.conftest import TINY

    _tiny, tokenizer = load_model(TINY["tiny-llama"], device="cpu", cache_dir=cache_dir, local_dir=str(local_data))
    torch.manual_seed(0)
    config = family_config(name)
    config.vocab_size = len(tokenizer)
    folder = tmp_path / name
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _saved_matrices(weights: dict) -> dict:
    """Every prunable matrix of a saved model's tensors: the blocks' projections, and each expert's
    gate, up and down (saved per expert, or as fused 3-D tensors: both read)."""
    matrices = {k: w for k, w in weights.items() if k.startswith("model.layers.") and k.endswith("proj.weight")}
    for key in [k for k in weights if k.endswith("experts.gate_up_proj")]:
        matrices.update({f"{key}.{e}.{part}": w for e, both in enumerate(weights[key])
                         for part, w in zip(("gate", "up"), both.chunk(2))})
    for key in [k for k in weights if k.endswith("experts.down_proj")]:
        matrices.update({f"{key}.{e}": w for e, w in enumerate(weights[key])})
    return matrices


def test_moe_folder_every_pruner_saves_exactly_sparse_experts(tmp_path, cache_dir, local_data, monkeypatch):
    """Tiny Qwen3-MoE as a local folder (``model=hub model.name_or_path=FOLDER``): every pruner at
    0.5 and 2:4 ends ok, and each saved model holds exactly half of every matrix zero (2 of every
    4 for 2:4), each expert's gate, up and down included, counted on the saved safetensors."""
    from safetensors.torch import load_file

    from runners.execution.job import run_job
    from tests.conftest import compose_wanda_smoke

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _folder(tmp_path, cache_dir, local_data, "qwen3moe")
    for pruner_name in PRUNERS:
        pruner, _, refine = pruner_name.partition("+")
        extra = (["pruner.max_iter=30"] if pruner == "alps" else []) + ([f"refine={refine}"] if refine else [])
        for sparsity in ("0.5", "2:4"):
            results = tmp_path / f"{pruner_name}-{sparsity}"
            cfg = compose_wanda_smoke(results, cache_dir, "model=hub", f"model.name_or_path={folder}",
                                      "model.dtype=float32", f"pruner={pruner}", f"sparsity={sparsity}",
                                      "prune.layers=all", f"eval.seqlen={SEQLEN}", "save.model=true", *extra)
            assert run_job(cfg) == "ok", (pruner_name, sparsity)
            (saved,) = results.rglob("model.safetensors")
            matrices = _saved_matrices(load_file(saved))
            assert len(matrices) == 4 * (4 + 8 * 3), (pruner_name, sparsity)
            for key, w in matrices.items():
                if sparsity == "2:4":
                    assert bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) == 2).all()), (pruner_name, key)
                else:
                    assert int((w == 0).sum()) == w.numel() // 2, (pruner_name, key)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3", "phi3", "qwen3moe"])
def test_local_folder_sweep_saves_exactly_sparse_matrices(tmp_path, cache_dir, local_data, monkeypatch, name):
    """A tiny Gemma-3 / Phi-3 / Qwen3-MoE saved as a Hugging Face folder runs through ``model=hub
    model.name_or_path=FOLDER`` (offline, eval windows longer than the sliding window): SparseGPT
    2:4 ends ok and the saved model holds exactly 2 zeros in every group of 4 of every matrix,
    each expert's slice of the fused 3-D experts included."""
    import json

    from safetensors.torch import load_file

    from runners.execution.job import run_job
    from tests.conftest import compose_wanda_smoke

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _folder(tmp_path, cache_dir, local_data, name)
    cfg = compose_wanda_smoke(tmp_path / "results", cache_dir, "model=hub", f"model.name_or_path={folder}",
                              "model.dtype=float32", "pruner=sparsegpt", "sparsity=2:4", "prune.layers=all",
                              f"eval.seqlen={SEQLEN}", "save.model=true")
    assert run_job(cfg) == "ok"
    saved = [p for p in (tmp_path / "results").rglob("model.safetensors")]
    assert len(saved) == 1
    weights = load_file(saved[0])
    matrices = _saved_matrices(weights)
    # q, k, v, o, gate, up, down; qkv, o, gate_up, down; q, k, v, o and 8 experts' gate, up and down
    assert len(matrices) == 4 * {"gemma3": 7, "phi3": 4, "qwen3moe": 4 + 8 * 3}[name]
    for key, w in matrices.items():
        assert bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) == 2).all()), key
    if name == "qwen3moe":  # the router is not pruned; every expert's routed tokens are in blocks.csv and
        # each expert that got none is a stated fallback in the manifest
        import pandas as pd

        assert all(bool((weights[f"model.layers.{i}.mlp.gate.weight"] != 0).all()) for i in range(4))
        run = next((tmp_path / "results").rglob("runs/*sparsegpt*/manifest.json")).parent
        blocks = pd.read_csv(run / "blocks.csv")
        routed = blocks[blocks.metric == "expert_tokens"]
        per_block = routed.groupby("block").value.sum()  # each calibration token reaches 2 experts of each block
        assert len(routed) == 4 * 8 and per_block.nunique() == 1 and per_block.iloc[0] % 2 == 0
        unrouted = json.loads((run / "manifest.json").read_text())["fallbacks"]["by_kind"].get(
            "unrouted_expert_magnitude", 0)
        assert unrouted == int((routed.value == 0).sum())


def test_moe_of_another_expert_layout_is_refused_before_loading(tmp_path):
    """A GPT-OSS folder (transposed experts with biases): validation refuses it from its config.json
    in one line naming its model_type and the layout it accepts, before anything loads."""
    from transformers import GptOssConfig

    from runners.validate import check_command_line

    config = GptOssConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2, head_dim=16,
                          layer_types=["full_attention"] * 4)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    problem = check_command_line(["model=hub", f"model.name_or_path={tmp_path}", "pruner=wanda", "sparsity=0.5"])
    assert problem is not None and "gpt_oss" in problem and "transposed" in problem and "\n" not in problem, problem


PRESETS = ["llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "qwen3-8b", "mistral-7b-v0.3", "gemma-3-4b", "phi-3-mini",
           "mixtral-8x7b", "qwen3-30b-a3b"]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_shapes_count_the_weights_transformers_builds(preset):
    """Each new preset's conf/shapes/ file builds (on the meta device) the model transformers would,
    and the plan's weight counts equal that model's matrices: plan=true prices the real shape."""
    import json

    from omegaconf import OmegaConf
    from transformers import AutoConfig

    from runners import plan

    raw = json.loads((CONF / "shapes" / f"{preset}.json").read_text())
    fields = {k: v for k, v in raw.items() if k != "model_type"}
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(AutoConfig.for_model(raw["model_type"], **fields))
    assert net.config.num_hidden_layers == raw["num_hidden_layers"]
    family = OmegaConf.load(CONF / "model" / f"{preset}.yaml").family
    shape = plan.Shape.from_config(raw, str(family))
    unique = {id(p): p for p in net.parameters() if p.dim() >= 2}.values()  # matrices, routers, 3-D experts
    assert shape.params == sum(p.numel() for p in unique)
    block = net.model.layers[0]
    fused_experts = [p for n, p in block.named_parameters() if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert shape.block_params == sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear)) \
        + sum(p.numel() for p in fused_experts)
    assert len(fused_experts) == (2 if shape.experts else 0)
    assert refusal(raw) is None


@pytest.mark.parametrize("pruner_name", ["sparsellm", "sparsellm_released"])
def test_sparsellm_is_refused_up_front_for_a_family_without_a_declared_mlp(tmp_path, pruner_name):
    """Validation (nothing loads) refuses SparseLLM on Gemma-3 (a preset) and on a Phi-3 folder,
    naming what it supports; a LLaMA-family preset passes."""
    from runners.validate import check_command_line

    AutoModelForCausalLM.from_config(Phi3Config(**{**COMMON, "max_position_embeddings": 4096})).save_pretrained(tmp_path)
    for model in (["model=gemma-3-4b"], ["model=hub", f"model.name_or_path={tmp_path}"]):
        problem = check_command_line([*model, f"pruner={pruner_name}", "sparsity=0.5"])
        assert problem is not None and "declared MLP layout" in problem and "llama (gated_silu)" in problem, problem
    assert check_command_line(["model=qwen3-8b", f"pruner={pruner_name}", "sparsity=0.5"]) is None


def test_each_expert_is_pruned_from_the_tokens_routed_to_it():
    """Wanda on Qwen3-MoE: expert e's gate and up matrices of block 0 keep exactly the weights an
    independent computation keeps: |W| x the input norms of only the tokens the router sends to e
    (recomputed here from the router's own weights), top 50% per row. Norms over all tokens
    would select differently: the test can tell."""
    model, x = build("qwen3moe"), tokens(2)
    mlp = model.model.layers[0].mlp
    seen = []
    handle = mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=x)
    handle.remove()
    h = torch.cat(seen)
    top = torch.topk(torch.softmax(h @ mlp.gate.weight.T, dim=-1), 2, dim=-1).indices
    gate_up = mlp.experts.gate_up_proj.data.clone()
    pruner, _ = _pruner("wanda")
    prune_model(model, adapter_for(model), pruner, SparsityPattern.parse(0.5), x, [0], "cpu", batch_size=2,
                diagnostics=False)
    pruned = model.model.layers[0].mlp.experts.gate_up_proj.data
    checked = 0
    for e in range(8):
        routed = h[(top == e).any(-1)]
        if len(routed) == 0:
            continue
        for rows in (slice(0, 32), slice(32, 64)):  # gate, up
            w = gate_up[e, rows]
            keep = (w.abs() * routed.pow(2).sum(0).sqrt()).argsort(dim=1, descending=True, stable=True)[:, :32]
            expected = torch.zeros_like(w).scatter(1, keep, w.gather(1, keep))
            torch.testing.assert_close(pruned[e, rows], expected, rtol=0, atol=0)
            everyone = (w.abs() * h.pow(2).sum(0).sqrt()).argsort(dim=1, descending=True, stable=True)[:, :32]
            checked += int(not torch.equal(keep.sort(1).values, everyone.sort(1).values))
    assert checked > 0  # routed statistics made a difference somewhere


def test_split_experts_forward_as_fused_and_join_back_exactly():
    """Split into Linears, the experts compute what the fused module computes; joined back, the
    fused parameters are bit for bit the ones before."""
    from core import experts

    model, x = build("qwen3moe"), tokens(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = window_losses(model, x, "cpu", 2)
    gate_up = model.model.layers[0].mlp.experts.gate_up_proj
    with experts.split_experts(model) as count:
        split = model.model.layers[0].mlp.experts
        assert count == 4 and isinstance(split, experts.SplitExperts)
        # no copy: expert 3's up_proj is a view of rows 32-63 of the fused gate_up_proj[3]
        assert split[3].up_proj.weight.data_ptr() == gate_up.data[3, 32:].data_ptr()
        torch.testing.assert_close(window_losses(model, x, "cpu", 2), fused, rtol=1e-6, atol=0)
        split._apply(lambda t: t.clone())  # a move away and back (the walk on an accelerator)
        assert split[3].up_proj.weight.data_ptr() == gate_up.data[3, 32:].data_ptr()  # a view again
        split[5].down_proj.weight.data = torch.zeros_like(split[5].down_proj.weight.data)  # replaced, not in place
    after = model.state_dict()
    assert not after["model.layers.0.mlp.experts.down_proj"][5].any()  # written back by join
    before["model.layers.0.mlp.experts.down_proj"][5] = 0
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
