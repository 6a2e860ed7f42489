"""Saving a pruned model (``save.model=true``) as a self-contained Hugging Face folder.

The folder holds ``config.json``, the weights as safetensors and the tokenizer (also for the
embedded SmolLM2, whose tokenizer comes from a GGUF file), so ``from_pretrained(folder)``
needs nothing else. It is written into a temporary sibling and renamed into place: a crash
leaves a ``.tmp`` folder, never a half model under the final name.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

MARKER = "config.json"


def model_folder(cfg: DictConfig, run_folder: Path, rid: str) -> Path:
    """Where the run's model goes: ``<run>/model`` or ``<save.dir>/<run id>``."""
    base = cfg.get("save", {}).get("dir") if cfg.get("save") else None
    return Path(str(base)).expanduser() / rid if base else Path(run_folder) / "model"


def wants_model(cfg: DictConfig) -> bool:
    """``save.model`` as a bool; a bad value is a one-line error."""
    value = cfg.get("save", {}).get("model", False) if cfg.get("save") else False
    if not isinstance(value, bool):
        raise ValueError(f"save.model={value!r} is not valid: accepted true or false")
    return value


def is_saved(folder: Path) -> bool:
    """A complete saved model: the final folder exists with its config and at least one safetensors file."""
    folder = Path(folder)
    return (folder / MARKER).exists() and any(folder.glob("*.safetensors"))


def save_model(model, tokenizer, target: Path) -> Path:
    """Write ``model`` (its pruned zeros included) and ``tokenizer`` to ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # an older or partial copy: replaced by the complete one
        shutil.rmtree(target)
    tmp.replace(target)
    return target
