"""A pruned model on disk in the sparse-bitmask layout of ``compressed-tensors``, and back.

Why our own writer: ``compressed-tensors`` defined this layout ("sparse-bitmask"), but its
releases that can be installed beside transformers 5 (0.15 and later) no longer compress or
decompress it, and the last that does (0.14.0.1) requires transformers < 5. So the harness writes
and reads the same tensors itself, and docs/speed.md records that.

Each 2-D weight of the decoder blocks that holds zeros becomes four tensors in the safetensors
file (``W`` is rows x cols):

- ``<name>.compressed``: the nonzero values, row by row (1-D, the weight's dtype);
- ``<name>.bitmask``: uint8, rows x ceil(cols / 8), bit ``j % 8`` (least significant first) of
  byte ``j // 8`` set where ``W[:, j]`` is nonzero;
- ``<name>.shape``: int64 ``[rows, cols]``;
- ``<name>.row_offsets``: int64, where each row's values start in ``compressed``.

Every other tensor is stored as it is; a tensor that shares memory with one stored before it (tied
embeddings) is stored once. ``sparsity_config.json`` beside the weights names the format, the
compressed tensors and the shared names. A value that is exactly zero is dropped whatever its sign, so
``-0.0`` comes back as ``+0.0`` (equal as numbers); everything else comes back bit for bit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT = "sparse-bitmask"
WEIGHTS = "model.safetensors"
CONFIG = "sparsity_config.json"
PARTS = ("compressed", "bitmask", "shape", "row_offsets")


def compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four tensors of one 2-D weight (keys without the weight's name)."""
    weight = weight.detach().cpu().contiguous()
    mask = weight != 0
    counts = mask.sum(dim=1)
    return {"compressed": weight[mask].clone(),
            "bitmask": torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little")),
            "shape": torch.tensor(list(weight.shape), dtype=torch.int64),
            "row_offsets": (torch.cumsum(counts, 0) - counts).to(torch.int64)}


def decompress(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense weight from its four tensors."""
    rows, cols = (int(v) for v in parts["shape"])
    bits = np.unpackbits(parts["bitmask"].numpy(), axis=-1, count=cols, bitorder="little")
    mask = torch.from_numpy(bits.astype(bool))
    dense = torch.zeros((rows, cols), dtype=parts["compressed"].dtype)
    dense[mask] = parts["compressed"]
    return dense


def save(state: dict[str, torch.Tensor], folder: str | os.PathLike, targets: set[str]) -> Path:
    """Write ``state`` to ``folder/model.safetensors`` with every name in ``targets`` (2-D weights)
    compressed; return the file. Written to a temporary name and renamed: a crash never leaves a
    half file under the final name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    aliases = {}
    for name, tensor in state.items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if where in seen:  # tied to a tensor already stored
            aliases[name] = seen[where]
            continue
        seen[where] = name
        if name in targets:
            out.update({f"{name}.{key}": value for key, value in compress(tensor).items()})
        else:
            out[name] = tensor.detach().cpu().contiguous()
    path = folder / WEIGHTS
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    save_file(out, str(tmp), metadata={"format": "pt", "sparsity_format": FORMAT})
    tmp.replace(path)
    (folder / CONFIG).write_text(json.dumps({"format": FORMAT, "compressed": sorted(targets & set(state)),
                                                  "aliases": aliases}, indent=1) + "\n")
    return path


def load(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The dense state dict of a folder written by ``save``."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG).read_text())
    stored = load_file(str(folder / WEIGHTS))
    state = {}
    for name in config["compressed"]:
        state[name] = decompress({key: stored.pop(f"{name}.{key}") for key in PARTS})
    state.update(stored)
    state.update({name: state[original] for name, original in config.get("aliases", {}).items()})
    return state


def sparse_weights(model, blocks) -> set[str]:
    """State-dict names of the 2-D weights of ``blocks`` that hold at least one zero."""
    inside = {id(p) for block in blocks for p in block.parameters()}
    return {name for name, p in model.named_parameters()
            if id(p) in inside and p.dim() == 2 and bool((p == 0).any())}


def save_dense(state: dict[str, torch.Tensor], folder: str | os.PathLike) -> Path:
    """The same tensors without compression (tied ones once): the reference size on disk."""
    return save(state, folder, set())
