"""Matmuls on GGUF-quantized weights that stay in their blocks (Triton; CUDA, HIP, or the CPU interpreter).

    y = matmul(x, raw, "Q4_K", k)        # raw: uint8 [rows, row_bytes] on the device; x: [tokens, k]

Decode (at most GEMV_MAX_TOKENS tokens) runs a GEMV that reads the blocks directly. Prefill dequantizes
`chunk_rows` rows at a time into one reused work buffer (bf16 on a GPU, float32 on the CPU) and multiplies
with torch, so the extra memory for a tensor is that buffer, never the whole dense tensor.

On the CPU the default backend is "numpy": gguf-py's reference dequantization, one chunk of rows at a time
into the same reused buffer, then torch's GEMM, so memory stays bounded; it is the CPU fallback. The Triton
kernels also run on the CPU under Triton's interpreter (TRITON_INTERPRET=1 set before this package is
imported, then they are the default): slow, for the tests that prove them against that reference.
"""

from __future__ import annotations

import os

import torch
import triton
from gguf import quants

from .qtypes import GGML, KVALUES, QTYPES, QType, qtype
from .triton_quant import dequant_kernel, gemv_kernel

GEMV_MAX_TOKENS = 8
DEQUANT_BLOCK = 256
GEMV_BLOCK_N = 16
GEMV_BLOCK_K = 256
NUMPY_VALUES = 1 << 16  # values per gguf-py call on the numpy path

__all__ = [
    "GEMV_MAX_TOKENS", "QTYPES", "QType", "default_backend", "dequantize", "gemv", "matmul", "qtype",
    "resident_copy", "work_buffer",
]  # fmt: skip

_kv_tables: dict[torch.device, torch.Tensor] = {}


def _kv(device: torch.device) -> torch.Tensor:
    """IQ4/MXFP4 value table on `device` (a kernel argument for every type; only those kernels read it)."""
    if device not in _kv_tables:
        _kv_tables[device] = torch.tensor(KVALUES, dtype=torch.float32, device=device)
    return _kv_tables[device]


def _check(raw: torch.Tensor, q: QType, k: int, stride: int | None) -> int:
    """The block stride of `raw` (stride, or the file's block size), once its shape is checked."""
    if raw.dtype != torch.uint8 or raw.dim() != 2 or not raw.is_contiguous():
        raise ValueError(f"raw blocks must be a contiguous uint8 [rows, row_bytes] tensor, got {raw.dtype} "
                         f"{tuple(raw.shape)}")  # fmt: skip
    if stride is not None and (stride < q.block_bytes or q.block == 1):
        raise ValueError(f"{q.name}: a block stride of {stride} bytes is not valid "
                         f"(its blocks take {q.block_bytes})")  # fmt: skip
    if raw.shape[1] != q.row_bytes(k, stride):
        want = q.row_bytes(k, stride)
        raise ValueError(f"{q.name} rows of {k} values take {want} bytes, got {raw.shape[1]}")
    return stride or q.block_bytes


def resident_copy(raw: torch.Tensor, qtype_name: str, k: int) -> tuple[torch.Tensor, int | None]:
    """(blocks, stride) for a device-resident copy of `raw` [rows, row_bytes] (on its device): for Q6_K and
    Q3_K the blocks padded to their resident stride (16-byte aligned), else `raw` itself and None."""
    q = qtype(qtype_name)
    _check(raw, q, k, None)
    if not q.resident_stride:
        return raw, None
    rows, nb = raw.shape[0], k // q.block
    out = torch.zeros(rows, nb, q.resident_stride, dtype=torch.uint8, device=raw.device)
    out[:, :, : q.block_bytes] = raw.view(rows, nb, q.block_bytes)
    return out.view(rows, -1), q.resident_stride


def default_backend(device: torch.device) -> str:
    """"triton" on a GPU or under the interpreter, else "numpy"."""
    if torch.device(device).type != "cpu" or os.environ.get("TRITON_INTERPRET") == "1":
        return "triton"
    return "numpy"


def dequantize(
    raw: torch.Tensor,
    qtype_name: str,
    k: int,
    out: torch.Tensor | None = None,
    backend: str | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    """The dense [rows, k] weights (float32, or `out`'s dtype, written in place) of `raw`'s blocks, each
    `stride` bytes apart (None: as in the file)."""
    q = qtype(qtype_name)
    bs = _check(raw, q, k, stride)
    rows = raw.shape[0]
    if out is None:
        out = torch.empty(rows, k, dtype=torch.float32, device=raw.device)
    elif out.shape != (rows, k) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous [{rows}, {k}] tensor, got {tuple(out.shape)}")
    if (backend or default_backend(raw.device)) == "numpy":
        blocks = raw.cpu()
        if bs != q.block_bytes:  # gguf-py reads packed blocks
            blocks = blocks.view(rows, -1, bs)[:, :, : q.block_bytes].reshape(rows, -1)
        _numpy_dequantize(blocks.numpy(), q, k, out)
    elif rows:
        grid = (rows, triton.cdiv(k, DEQUANT_BLOCK))
        dequant_kernel[grid](
            raw, out, _kv(raw.device), k, raw.shape[1],
            CODE=q.code, QK=q.block, BS=bs, BLOCK=DEQUANT_BLOCK, SUB=q.sub,
        )  # fmt: skip
    return out


def _numpy_dequantize(raw, q: QType, k: int, out: torch.Tensor) -> None:
    """gguf-py's dequantization, NUMPY_VALUES values per call: few calls (gguf-py itself would make one per
    16 rows), and numpy's temporaries stay a few times NUMPY_VALUES floats."""
    step = max(1, NUMPY_VALUES // k)
    for r0 in range(0, raw.shape[0], step):
        part = raw[r0 : r0 + step]
        vals = quants.dequantize(part.reshape(1, -1), GGML[q.name])  # one "row": one call inside gguf-py
        out[r0 : r0 + part.shape[0]].copy_(torch.from_numpy(vals.reshape(part.shape[0], k)))


def gemv(
    x: torch.Tensor, raw: torch.Tensor, qtype_name: str, k: int, stride: int | None = None
) -> torch.Tensor:
    """x [tokens, k] @ W.T with W read from its blocks by the Triton kernel: [tokens, rows], in x's dtype."""
    q = qtype(qtype_name)
    bs = _check(raw, q, k, stride)
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [tokens, {k}], got {tuple(x.shape)}")
    x = x.contiguous()
    n = raw.shape[0]
    y = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    if n and x.shape[0]:
        grid = (triton.cdiv(n, GEMV_BLOCK_N), x.shape[0])
        gemv_kernel[grid](
            raw, x, y, _kv(raw.device), n, k, raw.shape[1],
            CODE=q.code, QK=q.block, BS=bs, BLOCK_N=GEMV_BLOCK_N, BLOCK_K=GEMV_BLOCK_K,
            SUB=q.sub, EVEN_K=k % GEMV_BLOCK_K == 0,
        )  # fmt: skip
    return y


def work_buffer(chunk_rows: int, k: int, device: torch.device) -> torch.Tensor:
    """The reused dequantization buffer for prefill: bf16 on a GPU, float32 on the CPU."""
    dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    return torch.empty(chunk_rows, k, dtype=dtype, device=device)


def matmul(
    x: torch.Tensor,
    raw: torch.Tensor,
    qtype_name: str,
    k: int,
    work: torch.Tensor | None = None,
    backend: str | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    """x [tokens, k] @ W.T: the Triton GEMV for a few tokens, else dequantization of one chunk of rows at a
    time into `work` (its row count is the chunk) followed by a GEMM. stride: as for dequantize()."""
    backend = backend or default_backend(raw.device)
    if backend == "triton" and x.shape[0] <= GEMV_MAX_TOKENS:
        return gemv(x, raw, qtype_name, k, stride)
    n = raw.shape[0]
    if work is None:
        work = work_buffer(min(n, 1024), k, raw.device)
    chunk = work.shape[0]
    y = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    xw = x.to(work.dtype)
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        w = dequantize(raw[r0:r1], qtype_name, k, out=work[: r1 - r0], backend=backend, stride=stride)
        y[:, r0:r1] = (xw @ w.T).to(y.dtype)
    return y
