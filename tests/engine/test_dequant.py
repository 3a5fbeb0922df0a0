"""The engine's dense copies (engine.dequant, over the kernels package) are bit-exact against gguf.quants'
numpy dequantization, for every type the engine accepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from ollama_airllm.engine import dequant
from ollama_airllm.engine.dequant import SUPPORTED, dequantize
from ollama_airllm.kernels import QTYPES
from ollama_airllm.kernels.testdata import random_blocks, reference


def test_every_kernel_type_is_supported():
    assert {q.name for q in SUPPORTED} == set(QTYPES)
    assert {"Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS", "MXFP4"} <= set(QTYPES)


@pytest.mark.parametrize("qtype", sorted(SUPPORTED, key=lambda q: q.value), ids=lambda q: q.name)
def test_bit_exact_against_gguf(qtype, monkeypatch):
    monkeypatch.setattr(dequant, "CHUNK_VALUES", 1024)  # 512-value rows: chunks of 2 rows, 3 chunks
    rows, cols = 6, 512
    raw = random_blocks(qtype.name, rows, cols, seed=qtype.value)
    want = reference(raw, qtype.name, cols)
    got = dequantize(torch.from_numpy(raw.reshape(-1).copy()), qtype, (rows, cols), torch.float32)
    assert got.shape == (rows, cols)
    np.testing.assert_array_equal(got.numpy().view(np.uint32), want.view(np.uint32))


def test_half_precision_output_rounds_like_torch():
    raw = random_blocks("Q6_K", 3, 256, seed=3)
    raw_t = torch.from_numpy(raw.reshape(-1).copy())
    got = dequantize(raw_t, GGMLQuantizationType.Q6_K, (3, 256), torch.bfloat16)
    assert torch.equal(got, torch.from_numpy(reference(raw, "Q6_K", 256)).to(torch.bfloat16))


def test_f32_is_zero_copy():
    raw = torch.from_numpy(np.arange(64, dtype=np.float32).view(np.uint8).copy())
    out = dequantize(raw, GGMLQuantizationType.F32, (8, 8))
    assert out.data_ptr() == raw.data_ptr()
