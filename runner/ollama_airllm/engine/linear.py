"""One matmul entry point for the forward pass: dense tensors, or weights still in their GGUF blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType

from .. import kernels


@dataclass(frozen=True)
class QWeight:
    """A 2-D weight kept in its GGUF blocks: `raw` is uint8 [rows, row_bytes] on the compute device."""

    raw: torch.Tensor
    qtype: GGMLQuantizationType
    shape: tuple[int, int]  # (rows, cols), numpy order
    work: torch.Tensor | None = None  # prefill's reused dequantization buffer [chunk_rows, cols]
    backend: str | None = None  # kernels backend: "triton" | "numpy" (None: the device's default)
    stride: int | None = None  # bytes per block in `raw` (None: as in the file; resident Q6_K/Q3_K: padded)


def linear(x: torch.Tensor, w: torch.Tensor | QWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., k] @ w.T (+ bias), like F.linear; a QWeight is multiplied from its blocks."""
    if isinstance(w, torch.Tensor):
        return F.linear(x, w, bias)
    rows, k = w.shape
    flat = x.reshape(-1, k)
    name = GGMLQuantizationType(w.qtype).name
    y = kernels.matmul(flat, w.raw, name, k, work=w.work, backend=w.backend, stride=w.stride)
    y = y.reshape(*x.shape[:-1], rows)
    return y if bias is None else y + bias.to(y.dtype)
