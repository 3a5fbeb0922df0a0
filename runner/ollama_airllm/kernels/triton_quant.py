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
def _e8m0_half(p, m):
    """MXFP4's E8M0 exponent byte as float32, halved (gguf-py's e8m0_to_fp32_half, ggml-impl.h)."""
    e = _u8(p, m)
    bits = tl.where(e < 2, 0x00200000 << e, (e - 1) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _scales(blk, p0, m, CODE: tl.constexpr):
    """(a, b) of the sub-block that starts at value p0 of the block at `blk`: its values are a * q - b.

    Computed once per sub-block (its `SUB` values share them), with gguf-py's operations in its order."""
    if CODE == 4 or CODE == 6:  # Q4_1, Q5_1: d * q + m
        a = _f16(blk, m)
        b = -_f16(blk + 2, m)
    elif CODE == 8:  # Q2_K: 16 values per 4-bit scale and 4-bit min
        sc = _u8(blk + p0 // 16, m)
        a = _f16(blk + 80, m) * (sc & 15).to(tl.float32)
        b = _f16(blk + 82, m) * (sc >> 4).to(tl.float32)
    elif CODE == 9:  # Q3_K: 16 values per 6-bit signed scale
        s = p0 // 16
        low = (_u8(blk + 96 + s % 8, m) >> ((s // 8) * 4)) & 15
        high = (_u8(blk + 104 + s % 4, m) >> ((s // 4) * 2)) & 3
        a = _f16(blk + 108, m) * ((low | (high << 4)) - 32).to(tl.float32)
        b = tl.zeros_like(a)
    elif CODE == 10 or CODE == 11:  # Q4_K, Q5_K: (d * scale) * q - dmin * min, 32 values per scale
        sc, mn = _k_scale_min(blk + 4, p0 // 32, m)
        a = _f16(blk, m) * sc.to(tl.float32)
        b = _f16(blk + 2, m) * mn.to(tl.float32)
    elif CODE == 12:  # Q6_K: 16 values per 8-bit signed scale
        a = _f16(blk + 208, m) * _i8(blk + 192 + p0 // 16, m).to(tl.float32)
        b = tl.zeros_like(a)
    elif CODE == 14:  # IQ4_XS: 32 values per 6-bit scale
        s = p0 // 32
        low = (_u8(blk + 4 + s // 2, m) >> ((s % 2) * 4)) & 15
        high = ((_u8(blk + 2, m) | (_u8(blk + 3, m) << 8)) >> (s * 2)) & 3
        a = _f16(blk, m) * ((low | (high << 4)) - 32).to(tl.float32)
        b = tl.zeros_like(a)
    elif CODE == 15:  # MXFP4: the E8M0 exponent
        a = _e8m0_half(blk, m)
        b = tl.zeros_like(a)
    else:  # Q4_0, Q5_0, Q8_0, IQ4_NL: d
        a = _f16(blk, m)
        b = tl.zeros_like(a)
    return a, b


@triton.jit
def _quant(blk, p0, t, m, kv_ptr, CODE: tl.constexpr):
    """Value p0 + t of the block at `blk` as float32 (an integer level, or an IQ4/MXFP4 table value).

    p0 [..., G, 1] is where the sub-block starts, t [..., SUB] the value inside it: every byte address is
    a per-sub-block offset plus t (or t % 16), so a sub-block's bytes are read as one contiguous run."""
    if CODE == 3:  # Q4_0
        q = (_nibble(blk + 2, t, m) - 8).to(tl.float32)
    elif CODE == 4:  # Q4_1
        q = _nibble(blk + 4, t, m).to(tl.float32)
    elif CODE == 5:  # Q5_0
        hi = (_u8(blk + 2 + t // 8, m) >> (t % 8)) & 1
        q = ((_nibble(blk + 6, t, m) | (hi << 4)) - 16).to(tl.float32)
    elif CODE == 6:  # Q5_1
        hi = (_u8(blk + 4 + t // 8, m) >> (t % 8)) & 1
        q = (_nibble(blk + 8, t, m) | (hi << 4)).to(tl.float32)
    elif CODE == 7:  # Q8_0: signed bytes
        q = tl.load((blk + 2 + t).to(tl.pointer_type(tl.int8)), mask=m, other=0).to(tl.float32)
    elif CODE == 8:  # Q2_K: 2 bits of byte p % 32 of the 32-byte group p // 128, at bits 2 * ((p // 32) % 4)
        q = ((_u8(blk + 16 + (p0 // 128) * 32 + p0 % 32 + t, m) >> (((p0 // 32) % 4) * 2)) & 3).to(tl.float32)
    elif CODE == 9:  # Q3_K: as Q2_K, less 4 where the high-bit mask (bit p // 32 of byte p % 32) is clear
        low = (_u8(blk + 32 + (p0 // 128) * 32 + p0 % 32 + t, m) >> (((p0 // 32) % 4) * 2)) & 3
        hbit = ((_u8(blk + p0 % 32 + t, m) >> (p0 // 32)) & 1) ^ 1
        q = (low - (hbit << 2)).to(tl.float32)
    elif CODE == 10:  # Q4_K: nibble (p // 32) % 2 of byte (p // 64) * 32 + p % 32
        q = ((_u8(blk + 16 + (p0 // 64) * 32 + t, m) >> (((p0 // 32) % 2) * 4)) & 15).to(tl.float32)
    elif CODE == 11:  # Q5_K: as Q4_K, with bit p // 32 of byte p % 32 on top
        lo = (_u8(blk + 48 + (p0 // 64) * 32 + t, m) >> (((p0 // 32) % 2) * 4)) & 15
        hi = (_u8(blk + 16 + t, m) >> (p0 // 32)) & 1
        q = (lo | (hi << 4)).to(tl.float32)
    elif CODE == 12:  # Q6_K: 4 low bits and 2 high bits, in 128-value halves
        lo = (_u8(blk + (p0 // 128) * 64 + p0 % 64 + t, m) >> (((p0 // 64) % 2) * 4)) & 15
        hi = (_u8(blk + 128 + (p0 // 128) * 32 + p0 % 32 + t, m) >> (((p0 // 32) % 4) * 2)) & 3
        q = ((lo | (hi << 4)) - 32).to(tl.float32)
    elif CODE == 13:  # IQ4_NL
        q = tl.load(kv_ptr + _nibble(blk + 2, t, m), mask=m, other=0.0)
    elif CODE == 14:  # IQ4_XS: 16 bytes per 32 values, packed like Q4_0
        q = tl.load(kv_ptr + _nibble(blk + 8 + (p0 // 32) * 16, t, m), mask=m, other=0.0)
    else:  # MXFP4: 1 exponent byte, then 16 bytes of E2M1 codes packed like Q4_0
        q = tl.load(kv_ptr + 16 + _nibble(blk + 1, t, m), mask=m, other=0.0)
    return q


@triton.jit
def _values(
    base, g, t, mg, m, kv_ptr,
    CODE: tl.constexpr, QK: tl.constexpr, BS: tl.constexpr, SUB: tl.constexpr,
):  # fmt: skip
    """Values [..., G, SUB] of columns g * SUB + t counted from `base` (a block boundary) as float32; mg
    masks the sub-blocks ([..., G, 1]), m the values."""
    j = g * SUB + t
    if CODE == 0:  # F32 (rows of whole values: aligned, read as such)
        v = tl.load((base + j * 4).to(tl.pointer_type(tl.float32)), mask=m, other=0.0)
    elif CODE == 1:  # F16
        v = tl.load((base + j * 2).to(tl.pointer_type(tl.float16)), mask=m, other=0.0).to(tl.float32)
    elif CODE == 2:  # BF16
        u = tl.load((base + j * 2).to(tl.pointer_type(tl.uint16)), mask=m, other=0).to(tl.uint32)
        v = (u << 16).to(tl.float32, bitcast=True)
    else:
        blk = base + ((g * SUB) // QK) * BS  # a sub-block never spans two blocks
        p0 = (g * SUB) % QK
        a, b = _scales(blk, p0, mg, CODE)
        v = a * _quant(blk, p0, t, m, kv_ptr, CODE) - b
    return v


@triton.jit
def _to_bf16(v):
    """float32 -> bfloat16 rounding to nearest even, as torch does (the interpreter would truncate)."""
    u = v.to(tl.uint32, bitcast=True)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _column(row, k0, CODE: tl.constexpr, QK: tl.constexpr, BS: tl.constexpr):
    """Where column k0 (a block boundary) of the row starting at `row` is stored."""
    if CODE == 0:
        p = row + k0 * 4
    elif CODE < 3:
        p = row + k0 * 2
    else:
        p = row + (k0 // QK) * BS
    return p


@triton.jit
def dequant_kernel(
    w_ptr, out_ptr, kv_ptr, K, row_bytes,
    CODE: tl.constexpr, QK: tl.constexpr, BS: tl.constexpr, BLOCK: tl.constexpr, SUB: tl.constexpr,
):  # fmt: skip
    """out[row, j] = value j of row `row`; grid (rows, cdiv(K, BLOCK)), BLOCK a multiple of 256."""
    row = tl.program_id(0).to(tl.int64)
    k0 = tl.program_id(1) * BLOCK
    g = tl.arange(0, BLOCK // SUB)[:, None]
    t = tl.arange(0, SUB)[None, :]
    m = k0 + g * SUB + t < K
    base = _column(w_ptr + row * row_bytes, k0, CODE, QK, BS)
    v = _values(base, g, t, k0 + g * SUB < K, m, kv_ptr, CODE, QK, BS, SUB)
    dst = out_ptr + row * K + k0 + g * SUB + t
    if out_ptr.dtype.element_ty == tl.bfloat16:
        tl.store(dst, _to_bf16(v), mask=m)
    else:
        tl.store(dst, v.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def gemv_kernel(
    w_ptr, x_ptr, y_ptr, kv_ptr, N, K, row_bytes,
    CODE: tl.constexpr, QK: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SUB: tl.constexpr, EVEN_K: tl.constexpr,
):  # fmt: skip
    """y[t, n] = sum_k W[n, k] * x[t, k] with W read from its blocks; grid (cdiv(N, BLOCK_N), tokens).

    The tile is [BLOCK_N rows, BLOCK_K // SUB sub-blocks, SUB values]: each sub-block's scales are decoded
    once, and every offset inside the tile is the same at each step, so only the block pointer moves.
    EVEN_K: K is a multiple of BLOCK_K (every real model's width), so no column needs a mask."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    tok = tl.program_id(1).to(tl.int64)
    rmask = (rows < N)[:, None, None]
    row_base = w_ptr + rows.to(tl.int64)[:, None, None] * row_bytes
    g = tl.arange(0, BLOCK_K // SUB)[None, :, None]
    t = tl.arange(0, SUB)[None, None, :]
    col = g * SUB + t
    acc = tl.zeros([BLOCK_N, BLOCK_K // SUB, SUB], dtype=tl.float32)  # per lane: reduced once, at the end
    for k0 in range(0, K, BLOCK_K):
        base = _column(row_base, k0, CODE, QK, BS)
        if EVEN_K:
            mg = rmask
            m = rmask
            x = tl.load(x_ptr + tok * K + k0 + col)
        else:
            mg = rmask & (k0 + g * SUB < K)
            m = rmask & (k0 + col < K)
            x = tl.load(x_ptr + tok * K + k0 + col, mask=k0 + col < K, other=0.0)
        w = _values(base, g, t, mg, m, kv_ptr, CODE, QK, BS, SUB)
        acc += w * x.to(tl.float32)
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    tl.store(y_ptr + tok * N + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N)
