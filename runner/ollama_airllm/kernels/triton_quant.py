"""Triton kernels that read GGUF blocks directly: dequantize rows, and a GEMV on the quantized weights.

Every value is decoded from its block's bytes exactly as gguf-py's numpy reference does (same operations in
the same order, so the CPU interpreter, TRITON_INTERPRET=1, reproduces it bit for bit). Bytes are loaded one
at a time, so no field needs to be aligned (a Q5_0 block's 32-bit mask sits at an odd half-word).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _u8(p, m):
    return tl.load(p, mask=m, other=0).to(tl.int32)


@triton.jit
def _i8(p, m):
    v = _u8(p, m)
    return v - ((v >> 7) << 8)


@triton.jit
def _f16(p, m):
    u = _u8(p, m) | (_u8(p + 1, m) << 8)
    return u.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _nibble(p, t, m):
    """Q4_0-style packing: value t of 32 is the low (t < 16) or high nibble of byte t % 16."""
    return (_u8(p + t % 16, m) >> ((t // 16) * 4)) & 15


@triton.jit
def _k_scale_min(p, s, m):
    """Q4_K/Q5_K: the 6-bit scale and min of sub-block s (of 8) from the 12 packed bytes at p."""
    k = s % 4
    a = _u8(p + k, m)
    b = _u8(p + 4 + k, m)
    c = _u8(p + 8 + k, m)
    sc = tl.where(s < 4, a & 63, (c & 15) | ((a >> 2) & 48))
    mn = tl.where(s < 4, b & 63, (c >> 4) | ((b >> 2) & 48))
    return sc, mn


@triton.jit
def _k_nibble(p, t, m):
    """Q4_K/Q5_K low bits: 128 bytes, value t of 256 in nibble (t//32)%2 of byte (t//64)*32 + t%32."""
    return (_u8(p + (t // 64) * 32 + t % 32, m) >> (((t // 32) % 2) * 4)) & 15


@triton.jit
def _q45_k(blk, t, m, q):
    """Q4_K/Q5_K: (d * scale) * q - dmin * min, as gguf-py computes it."""
    sc, mn = _k_scale_min(blk + 4, t // 32, m)
    return (_f16(blk, m) * sc.to(tl.float32)) * q.to(tl.float32) - _f16(blk + 2, m) * mn.to(tl.float32)


@triton.jit
def _two_bits(p, t, m):
    """Q2_K/Q3_K low bits: 64 bytes, value t of 256 at bits 2*((t//32)%4) of byte (t//128)*32 + t%32."""
    return (_u8(p + (t // 128) * 32 + t % 32, m) >> (((t // 32) % 4) * 2)) & 3


@triton.jit
def _e8m0_half(p, m):
    """MXFP4's E8M0 exponent byte as float32, halved (gguf-py's e8m0_to_fp32_half, ggml-impl.h)."""
    e = _u8(p, m)
    bits = tl.where(e < 2, 0x00200000 << e, (e - 1) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _legacy(blk, t, m, kv_ptr, CODE: tl.constexpr):
    """Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4: value t of a 32-value block."""
    d = _f16(blk, m)
    if CODE == 3:  # Q4_0
        v = d * (_nibble(blk + 2, t, m) - 8).to(tl.float32)
    elif CODE == 4:  # Q4_1
        v = d * _nibble(blk + 4, t, m).to(tl.float32) + _f16(blk + 2, m)
    elif CODE == 5:  # Q5_0
        hi = (_u8(blk + 2 + t // 8, m) >> (t % 8)) & 1
        v = d * ((_nibble(blk + 6, t, m) | (hi << 4)) - 16).to(tl.float32)
    elif CODE == 6:  # Q5_1
        hi = (_u8(blk + 4 + t // 8, m) >> (t % 8)) & 1
        v = d * (_nibble(blk + 8, t, m) | (hi << 4)).to(tl.float32) + _f16(blk + 2, m)
    elif CODE == 7:  # Q8_0
        v = _i8(blk + 2 + t, m).to(tl.float32) * d
    elif CODE == 13:  # IQ4_NL
        v = d * tl.load(kv_ptr + _nibble(blk + 2, t, m), mask=m, other=0.0)
    else:  # MXFP4: 1 exponent byte, then 16 bytes of E2M1 codes packed like Q4_0
        v = _e8m0_half(blk, m) * tl.load(kv_ptr + 16 + _nibble(blk + 1, t, m), mask=m, other=0.0)
    return v


@triton.jit
def _k_quant(blk, t, m, kv_ptr, CODE: tl.constexpr):
    """Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS: value t of a 256-value super-block."""
    if CODE == 8:  # Q2_K
        sc = _u8(blk + t // 16, m)
        dl = _f16(blk + 80, m) * (sc & 15).to(tl.float32)
        ml = _f16(blk + 82, m) * (sc >> 4).to(tl.float32)
        v = dl * _two_bits(blk + 16, t, m).to(tl.float32) - ml
    elif CODE == 9:  # Q3_K
        s = t // 16
        low = (_u8(blk + 96 + s % 8, m) >> ((s // 8) * 4)) & 15
        high = (_u8(blk + 104 + s % 4, m) >> ((s // 4) * 2)) & 3
        dl = _f16(blk + 108, m) * ((low | (high << 4)) - 32).to(tl.float32)
        hbit = ((_u8(blk + t % 32, m) >> (t // 32)) & 1) ^ 1  # the offset is zero when the mask bit is 1
        v = dl * (_two_bits(blk + 32, t, m) - (hbit << 2)).to(tl.float32)
    elif CODE == 10:  # Q4_K
        v = _q45_k(blk, t, m, _k_nibble(blk + 16, t, m))
    elif CODE == 11:  # Q5_K
        hi = (_u8(blk + 16 + t % 32, m) >> (t // 32)) & 1
        v = _q45_k(blk, t, m, _k_nibble(blk + 48, t, m) | (hi << 4))
    elif CODE == 12:  # Q6_K
        dd = _f16(blk + 208, m) * _i8(blk + 192 + t // 16, m).to(tl.float32)
        g = t // 128
        lo = (_u8(blk + g * 64 + t % 64, m) >> (((t // 64) % 2) * 4)) & 15
        hi = (_u8(blk + 128 + g * 32 + t % 32, m) >> (((t // 32) % 4) * 2)) & 3
        v = dd * ((lo | (hi << 4)) - 32).to(tl.float32)
    else:  # IQ4_XS
        s = t // 32
        low = (_u8(blk + 4 + s // 2, m) >> ((s % 2) * 4)) & 15
        high = ((_u8(blk + 2, m) | (_u8(blk + 3, m) << 8)) >> (s * 2)) & 3
        dl = _f16(blk, m) * ((low | (high << 4)) - 32).to(tl.float32)
        q = (_u8(blk + 8 + s * 16 + t % 16, m) >> (((t // 16) % 2) * 4)) & 15
        v = dl * tl.load(kv_ptr + q, mask=m, other=0.0)
    return v


@triton.jit
def _value(base, j, m, kv_ptr, CODE: tl.constexpr, QK: tl.constexpr, BS: tl.constexpr):
    """Value j of the row whose bytes start at `base` (pointer tensors broadcast with j), as float32."""
    if CODE == 0:  # F32
        p = base + j * 4
        u = _u8(p, m) | (_u8(p + 1, m) << 8) | (_u8(p + 2, m) << 16) | (_u8(p + 3, m) << 24)
        v = u.to(tl.float32, bitcast=True)
    elif CODE == 1:  # F16
        v = _f16(base + j * 2, m)
    elif CODE == 2:  # BF16
        u = _u8(base + j * 2, m) | (_u8(base + j * 2 + 1, m) << 8)
        v = (u << 16).to(tl.float32, bitcast=True)
    elif QK == 32:
        v = _legacy(base + (j // 32) * BS, j % 32, m, kv_ptr, CODE)
    else:
        v = _k_quant(base + (j // 256) * BS, j % 256, m, kv_ptr, CODE)
    return v


@triton.jit
def _to_bf16(v):
    """float32 -> bfloat16 rounding to nearest even, as torch does (the interpreter would truncate)."""
    u = v.to(tl.uint32, bitcast=True)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def dequant_kernel(
    w_ptr, out_ptr, kv_ptr, K, row_bytes,
    CODE: tl.constexpr, QK: tl.constexpr, BS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """out[row, j] = value j of row `row`; grid (rows, cdiv(K, BLOCK))."""
    row = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < K
    v = _value(w_ptr + row * row_bytes, j, m, kv_ptr, CODE, QK, BS)
    if out_ptr.dtype.element_ty == tl.bfloat16:
        tl.store(out_ptr + row * K + j, _to_bf16(v), mask=m)
    else:
        tl.store(out_ptr + row * K + j, v.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def gemv_kernel(
    w_ptr, x_ptr, y_ptr, kv_ptr, N, K, row_bytes,
    CODE: tl.constexpr, QK: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y[t, n] = sum_k W[n, k] * x[t, k] with W read from its blocks; grid (cdiv(N, BLOCK_N), tokens)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    tok = tl.program_id(1).to(tl.int64)
    rmask = rows < N
    base = w_ptr + rows.to(tl.int64)[:, None] * row_bytes
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        j = k0 + tl.arange(0, BLOCK_K)
        kmask = j < K
        w = _value(base, j[None, :], rmask[:, None] & kmask[None, :], kv_ptr, CODE, QK, BS)
        x = tl.load(x_ptr + tok * K + j, mask=kmask, other=0.0).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)
    tl.store(y_ptr + tok * N + rows, acc.to(y_ptr.dtype.element_ty), mask=rmask)
