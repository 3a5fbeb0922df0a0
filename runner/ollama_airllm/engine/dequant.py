"""Dequantize GGUF blocks with torch, on whatever device the raw bytes are on.

Each function mirrors gguf.quants' numpy code operation by operation in float32, so the results are
bit-identical to `gguf.quants.dequantize` (tests/engine/test_dequant.py checks this on random blocks).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QK_K = 256
GT = GGMLQuantizationType


def _shifts(values: list[int], device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    return _shift_tensor(tuple(values), device, shape)


@lru_cache(maxsize=64)
def _shift_tensor(values: tuple[int, ...], device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    """Bit-shift constants, made once per device: a host->device copy per call would stall the stream."""
    return torch.tensor(values, dtype=torch.uint8, device=device).reshape(shape)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) uint8 -> (n, 1) float32 from little-endian fp16."""
    return b.contiguous().view(torch.float16).float()


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    x = b[:, 2:].contiguous().view(torch.int8).float()
    return x * d


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d = _f16(b[:, :2])
    qs = b[:, 2:].reshape(n, -1, 1, 16) >> _shifts([0, 4], b.device, (1, 1, 2, 1))
    qs = (qs & 0x0F).reshape(n, -1).to(torch.int8) - 8
    return d * qs.float()


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack Q4_K/Q5_K's 12-byte 6-bit scales and mins into (n, 8) each."""
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, m = _scale_min_k4(b[:, 4:16])
    d = (d * sc.float()).reshape(n, -1, 1)
    dm = (dmin * m.float()).reshape(n, -1, 1)
    qs = b[:, 16:].reshape(n, -1, 1, 32) >> _shifts([0, 4], b.device, (1, 1, 2, 1))
    qs = (qs & 0x0F).reshape(n, -1, 32).float()
    return (d * qs - dm).reshape(n, QK_K)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, m = _scale_min_k4(b[:, 4:16])
    qh, qs = b[:, 16:48], b[:, 48:]
    d = (d * sc.float()).reshape(n, -1, 1)
    dm = (dmin * m.float()).reshape(n, -1, 1)
    ql = qs.reshape(n, -1, 1, 32) >> _shifts([0, 4], b.device, (1, 1, 2, 1))
    qh = qh.reshape(n, -1, 1, 32) >> _shifts(list(range(8)), b.device, (1, 1, 8, 1))
    ql = (ql & 0x0F).reshape(n, -1, 32)
    qh = (qh & 0x01).reshape(n, -1, 32)
    q = (ql | (qh << 4)).float()
    return (d * q - dm).reshape(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    d = _f16(b[:, 208:210])
    d = (d * scales).reshape(n, 16, 1)
    ql = ql.reshape(n, -1, 1, 64) >> _shifts([0, 4], b.device, (1, 1, 2, 1))
    ql = (ql & 0x0F).reshape(n, -1, 32)
    qh = qh.reshape(n, -1, 1, 32) >> _shifts([0, 2, 4, 6], b.device, (1, 1, 4, 1))
    qh = (qh & 0x03).reshape(n, -1, 32)
    q = (ql | (qh << 4)).to(torch.int8) - 32
    q = q.reshape(n, 16, -1).float()
    return (d * q).reshape(n, QK_K)


_BLOCK_FUNCS = {GT.Q8_0: _q8_0, GT.Q4_0: _q4_0, GT.Q4_K: _q4_k, GT.Q5_K: _q5_k, GT.Q6_K: _q6_k}
SUPPORTED = frozenset({GT.F32, GT.F16, GT.BF16, *_BLOCK_FUNCS})


def row_bytes(qtype: GGMLQuantizationType, n_cols: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return n_cols // block * size


def dequantize(
    raw: torch.Tensor, qtype: GGMLQuantizationType, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Raw little-endian GGUF bytes (uint8, any device) -> a `dtype` tensor of numpy-order `shape`.

    F32 with dtype float32 is a zero-copy view of `raw`.
    """
    qtype = GT(qtype)
    if qtype == GT.F32:
        out = raw.view(torch.float32)
    elif qtype == GT.F16:
        out = raw.view(torch.float16)
    elif qtype == GT.BF16:
        out = raw.view(torch.bfloat16)
    elif qtype in _BLOCK_FUNCS:
        size = GGML_QUANT_SIZES[qtype][1]
        out = _BLOCK_FUNCS[qtype](raw.reshape(-1, size))
    else:
        raise NotImplementedError(f"tensor type {qtype.name} is not supported")
    return out.reshape(shape).to(dtype)
