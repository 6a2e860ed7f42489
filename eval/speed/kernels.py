"""Matrix kernels for a pruned model's Linears: what its zeros can buy at inference.

A kernel stores a pruned ``nn.Linear``'s weight in its own layout and multiplies with it; the
model's forward is unchanged otherwise. ``sparsify(model, kernel)`` swaps every Linear of the
decoder blocks (the matrices the pruners prune; the embeddings and the LM head stay dense) for a
``SparseLinear`` with that kernel.

Kernels (``KERNELS``):

- ``dense``: the Linear as it is (``F.linear``): the reference every speed-up is against.
- ``csr``: torch's compressed sparse rows; on an x86 CPU build of torch the product is MKL's
  sparse BLAS (``torch.addmm`` on a CSR matrix).
- ``bsr``: torch's block sparse rows, ``blocksize`` x ``blocksize`` blocks: only blocks that hold a
  nonzero are stored, so unstructured zeros save little unless whole blocks are empty.
- ``semi_structured``: torch's 2:4 semi-structured sparsity (cuSPARSELt or CUTLASS), on CUDA
  only, float16/bfloat16, for weights with exactly 2 zeros in every 4 consecutive inputs.
- ``mkl``: the ``sparse_dot_mkl`` package (MKL's inspector-executor through scipy), when it
  is installed with an MKL runtime; docs/speed.md says how it compares with ``csr``.

A kernel that cannot run here (no CUDA, no package, a weight without the pattern it needs) says
so in one line through ``Kernel.unavailable``; the speed measurement records that and goes on.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Kernel:
    """How one layout stores a weight ``W`` (out x in) and computes ``x @ W.T`` for ``x`` (tokens x in)."""

    name: str
    blocksize: int = 16  # bsr only

    def unavailable(self, device: str, dtype: torch.dtype) -> str | None:
        """Why this kernel cannot run on ``device`` with ``dtype`` (one line), or None when it can."""
        if self.name == "semi_structured":
            if not str(device).startswith("cuda") or not torch.cuda.is_available():
                return "semi_structured: 2:4 semi-structured kernels need a CUDA device (this run is on cpu)"
            if dtype not in (torch.float16, torch.bfloat16):
                return f"semi_structured: needs float16 or bfloat16 weights, got {dtype}"
            if not hasattr(torch.sparse, "to_sparse_semi_structured"):
                return "semi_structured: this torch has no torch.sparse.to_sparse_semi_structured"
        elif self.name == "mkl":
            if importlib.util.find_spec("sparse_dot_mkl") is None:
                return "mkl: the sparse_dot_mkl package is not installed (pip install sparse-dot-mkl mkl)"
            try:
                importlib.import_module("sparse_dot_mkl")
            except ImportError as err:  # installed, but its MKL runtime is not found
                return f"mkl: sparse_dot_mkl does not load ({str(err).splitlines()[0][:120]})"
            if str(device) != "cpu":
                return f"mkl: sparse_dot_mkl runs on the CPU only, not {device}"
        elif self.name in ("csr", "bsr") and str(device) != "cpu" and dtype not in (torch.float32, torch.float64):
            return f"{self.name}: torch's sparse {self.name.upper()} products on {device} need float32, got {dtype}"
        return None

    def pack(self, weight: torch.Tensor):
        """The weight in this kernel's layout (for ``mm``)."""
        with warnings.catch_warnings():  # torch's "sparse CSR support is in beta state", once per matrix
            warnings.simplefilter("ignore", UserWarning)
            return self._pack(weight.detach())

    def _pack(self, weight: torch.Tensor):
        if self.name == "dense":
            return weight
        if self.name == "csr":  # int32 indices: half the index bytes of torch's default, and MKL takes them
            csr = weight.to_sparse_csr()
            return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(),
                                           csr.shape, check_invariants=False)
        if self.name == "bsr":
            rows, cols = weight.shape
            if rows % self.blocksize or cols % self.blocksize:
                raise ValueError(f"bsr: weight {tuple(weight.shape)} is not divisible into "
                                 f"{self.blocksize}x{self.blocksize} blocks: accepted a blocksize dividing both")
            bsr = weight.to_sparse_bsr((self.blocksize, self.blocksize))
            return torch.sparse_bsr_tensor(bsr.crow_indices().int(), bsr.col_indices().int(), bsr.values(),
                                           bsr.shape, check_invariants=False)
        if self.name == "semi_structured":
            check_two_four(weight)
            return torch.sparse.to_sparse_semi_structured(weight)
        if self.name == "mkl":
            import scipy.sparse

            return scipy.sparse.csr_matrix(weight.cpu().numpy())
        raise ValueError(f"kernel={self.name!r} is not known: accepted {', '.join(KERNELS)}")

    def mm(self, packed, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for ``x`` of shape (tokens, in), as (tokens, out)."""
        if self.name in ("dense", "semi_structured"):
            return F.linear(x, packed)
        if self.name in ("csr", "bsr"):
            # sparse (out x in) times dense (in x tokens): the layout torch's sparse BLAS is fast for
            return torch.mm(packed, x.t()).t()
        from sparse_dot_mkl import dot_product_mkl

        return torch.from_numpy(dot_product_mkl(packed, x.t().contiguous().numpy())).t()


KERNELS = {name: Kernel(name) for name in ("dense", "csr", "bsr", "semi_structured", "mkl")}


def kernel(name: str, blocksize: int = 16) -> Kernel:
    """The kernel called ``name``; an unknown name is a one-line error listing the accepted ones."""
    if name not in KERNELS:
        raise ValueError(f"kernel={name!r} is not known: accepted {', '.join(KERNELS)}")
    return Kernel(name, blocksize)


def check_two_four(weight: torch.Tensor) -> None:
    """Raise (one line) unless every 4 consecutive inputs of every row hold at least 2 zeros,
    the only pattern 2:4 semi-structured kernels store."""
    cols = weight.shape[-1]
    if cols % 4:
        raise ValueError(f"semi_structured: {cols} input columns are not a multiple of 4")
    zeros = (weight.reshape(-1, 4) == 0).sum(-1)
    if bool((zeros < 2).any()):
        raise ValueError("semi_structured: the weight is not 2:4 sparse (a group of 4 inputs holds fewer "
                         "than 2 zeros): accepted for sparsity=2:4 runs only")


class SparseLinear(nn.Module):
    """A Linear whose weight lives in ``kernel``'s layout; same inputs, same outputs."""

    def __init__(self, linear: nn.Linear, kernel: Kernel):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernel = kernel
        self.packed = kernel.pack(linear.weight)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = self.kernel.mm(self.packed, flat)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel.name}"


def block_linears(model, blocks) -> list[tuple[nn.Module, str, nn.Linear]]:
    """``(parent, attribute, linear)`` of every ``nn.Linear`` inside ``blocks`` (the decoder blocks)."""
    found = []
    for block in blocks:
        for parent in block.modules():
            for attr, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    found.append((parent, attr, child))
    return found


def sparsify(model, blocks, kernel: Kernel) -> int:
    """Swap every Linear of ``blocks`` for a ``SparseLinear`` with ``kernel``, in place; return how many.
    ``dense`` swaps nothing (the model is its own reference)."""
    if kernel.name == "dense":
        return 0
    linears = block_linears(model, blocks)
    for parent, attr, linear in linears:
        setattr(parent, attr, SparseLinear(linear, kernel))
    return len(linears)
