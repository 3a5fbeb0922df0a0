"""Device dequantization (torch) is bit-exact against gguf.quants' numpy dequantization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants
from ollama_airllm.engine.dequant import SUPPORTED, dequantize

# Byte offsets of the fp16 scale fields in each block type (the rest of a block is any byte pattern).
F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def _random_blocks(qtype: GGMLQuantizationType, rows: int, cols: int, rng) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[qtype]
    if qtype == GGMLQuantizationType.F32:
        return rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint8)
    if qtype == GGMLQuantizationType.F16:
        return rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    if qtype == GGMLQuantizationType.BF16:
        bits = rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8)
    n = rows * cols // block
    b = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype.name]:  # finite scales, both signs, a wide range of magnitudes
        d = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 2, n)).astype(np.float16)
        b[:, off : off + 2] = d.view(np.uint8).reshape(n, 2)
    return b.reshape(rows, -1)


@pytest.mark.parametrize("qtype", sorted(SUPPORTED, key=lambda q: q.value), ids=lambda q: q.name)
def test_bit_exact_against_gguf(qtype):
    rng = np.random.default_rng(qtype.value)
    rows, cols = 8, 512
    raw = _random_blocks(qtype, rows, cols, rng)
    want = quants.dequantize(raw, qtype).astype(np.float32).reshape(rows, cols)
    got = dequantize(torch.from_numpy(raw.reshape(-1).copy()), qtype, (rows, cols), torch.float32)
    assert got.shape == (rows, cols)
    assert np.isfinite(want).all()
    np.testing.assert_array_equal(got.numpy().view(np.uint32), want.view(np.uint32))


def test_f32_is_zero_copy():
    raw = torch.from_numpy(np.arange(64, dtype=np.float32).view(np.uint8).copy())
    out = dequantize(raw, GGMLQuantizationType.F32, (8, 8))
    assert out.data_ptr() == raw.data_ptr()
