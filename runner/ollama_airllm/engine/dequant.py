"""Dense copies of GGUF tensors, for what the engine keeps dense: embedding rows, norms, CPU-resident layers.

One dequantization in the repo: the kernels package (Triton on a GPU; gguf-py's numpy reference on the
CPU, in chunks of rows so the temporaries stay small). Both are bit-exact against `gguf.quants`.
"""

from __future__ import annotations

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .. import kernels

GT = GGMLQuantizationType
SUPPORTED = frozenset(GT[name] for name in kernels.QTYPES)
FLOAT_VIEWS = {GT.F32: torch.float32, GT.F16: torch.float16, GT.BF16: torch.bfloat16}
CHUNK_VALUES = 1 << 20  # the CPU path dequantizes about this many values at a time


def row_bytes(qtype: GGMLQuantizationType, n_cols: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return n_cols // block * size


def backend_for(device: torch.device) -> str:
    """The kernels backend the engine uses on `device`: numpy on the CPU (fast), Triton elsewhere."""
    return "numpy" if torch.device(device).type == "cpu" else "triton"


def dequantize(
    raw: torch.Tensor, qtype: GGMLQuantizationType, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Raw little-endian GGUF bytes (uint8, any device) -> a `dtype` tensor of numpy-order `shape`.

    F32/F16/BF16 are views of `raw` converted to `dtype` (F32 as float32: zero-copy).
    """
    qtype = GT(qtype)
    if qtype in FLOAT_VIEWS:
        return raw.view(FLOAT_VIEWS[qtype]).reshape(shape).to(dtype)
    if qtype not in SUPPORTED:
        raise NotImplementedError(f"tensor type {qtype.name} is not supported")
    k = shape[-1]
    rows = raw.numel() // row_bytes(qtype, k)
    blocks = raw.reshape(rows, -1)
    out = torch.empty(rows, k, dtype=dtype, device=raw.device)
    backend = backend_for(raw.device)
    step = rows if backend == "triton" else max(1, CHUNK_VALUES // k)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        kernels.dequantize(blocks[r0:r1], qtype.name, k, out=out[r0:r1], backend=backend)
    return out.reshape(shape)
