"""The Triton kernels against gguf-py's numpy reference, for every type: bit-exact dequantization, and the
GEMV and the chunked dequantize + GEMM within float tolerance of dequantize-then-float64-matmul."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from ollama_airllm import kernels
from ollama_airllm.kernels import (
    GEMV_MAX_TOKENS,
    QTYPES,
    dequantize,
    gemv,
    matmul,
    qtype,
    resident_copy,
    work_buffer,
)
from ollama_airllm.kernels.qtypes import GGML
from ollama_airllm.kernels.testdata import random_blocks, reference

TYPES = list(QTYPES)
REL_TOL = 1e-5


def _k(name: str, blocks: int) -> int:
    return QTYPES[name].block * blocks if QTYPES[name].block > 1 else 32 * blocks


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max())


def test_the_geometry_is_gguf_s():
    assert len(TYPES) == 16
    for name, q in QTYPES.items():
        assert GGML_QUANT_SIZES[GGML[name]] == (q.block, q.block_bytes), name


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("rows, blocks", [(1, 1), (5, 3), (37, 2)])
def test_dequantization_is_bit_exact(name, rows, blocks):
    k = _k(name, blocks)
    raw = random_blocks(name, rows, k, seed=rows + blocks)
    ours = dequantize(torch.from_numpy(raw), name, k).numpy()
    ref = reference(raw, name, k)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), np.argwhere(ours != ref)[:5]


@pytest.mark.parametrize("name", TYPES)
def test_gemv_reads_the_blocks(name):
    k, rows = _k(name, 3), 37  # rows not a multiple of the kernel's row tile
    raw = random_blocks(name, rows, k, seed=1)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(1))
    ref = x.double() @ torch.from_numpy(reference(raw, name, k)).double().T
    assert _rel_err(gemv(x, torch.from_numpy(raw), name, k), ref) < REL_TOL


@pytest.mark.parametrize("name", ["F16", "Q4_0", "Q5_1", "Q8_0", "Q3_K", "Q4_K", "Q6_K", "IQ4_XS", "MXFP4"])
def test_prefill_dequantizes_chunks_into_one_buffer(name):
    k, rows = _k(name, 2), 37
    raw = torch.from_numpy(random_blocks(name, rows, k, seed=2))
    x = torch.randn(GEMV_MAX_TOKENS + 9, k, generator=torch.Generator().manual_seed(2))
    work = work_buffer(16, k, raw.device)  # 37 rows: chunks of 16, 16 and 5
    ref = x.double() @ torch.from_numpy(reference(raw.numpy(), name, k)).double().T
    assert _rel_err(matmul(x, raw, name, k, work=work), ref) < REL_TOL
    assert _rel_err(matmul(x[:2], raw, name, k), ref[:2]) < REL_TOL  # a few tokens: the GEMV


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K", "IQ4_NL", "MXFP4"])
def test_the_numpy_cpu_path_matches_the_kernels(name):
    k, rows = _k(name, 2), 37
    raw = torch.from_numpy(random_blocks(name, rows, k, seed=3))
    x = torch.randn(GEMV_MAX_TOKENS + 1, k, generator=torch.Generator().manual_seed(3))
    work = work_buffer(16, k, raw.device)
    y = matmul(x, raw, name, k, work=work, backend="numpy")
    assert torch.equal(y, matmul(x, raw, name, k, work=work, backend="triton"))


def test_dequantize_writes_into_a_half_precision_buffer():
    raw = random_blocks("Q4_K", 3, 256)
    out = torch.empty(3, 256, dtype=torch.bfloat16)
    dequantize(torch.from_numpy(raw), "Q4_K", 256, out=out)
    assert torch.equal(out, torch.from_numpy(reference(raw, "Q4_K", 256)).to(torch.bfloat16))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="tensor type Q1_X has no kernel; supported: F32, F16"):
        qtype("Q1_X")
    with pytest.raises(ValueError, match="not a whole number of 256-blocks"):
        QTYPES["Q4_K"].row_bytes(300)
    raw = torch.zeros(2, 144, dtype=torch.uint8)
    with pytest.raises(ValueError, match="Q4_K rows of 512 values take 288 bytes, got 144"):
        dequantize(raw, "Q4_K", 512)


@pytest.mark.parametrize("name", ["BF16", "Q5_0", "Q2_K", "MXFP4"])
def test_the_numpy_path_calls_gguf_py_on_bounded_pieces(name, monkeypatch):
    """Rows go to gguf-py NUMPY_VALUES values at a time (one call each, not one per 16 rows)."""
    k, rows = _k(name, 2), 37
    raw = random_blocks(name, rows, k, seed=4)
    ref = reference(raw, name, k)
    monkeypatch.setattr(kernels, "NUMPY_VALUES", 4 * k)  # 4 rows a call: 10 calls, the last of 1 row
    calls = []
    orig = kernels.quants.dequantize
    monkeypatch.setattr(kernels.quants, "dequantize", lambda a, t: calls.append(a.shape) or orig(a, t))
    ours = dequantize(torch.from_numpy(raw), name, k, backend="numpy").numpy()
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
    assert len(calls) == 10 and all(c[0] == 1 for c in calls)


@pytest.mark.parametrize(("name", "stride"), [("Q6_K", 224), ("Q3_K", 112)])
def test_padded_resident_blocks_read_the_same(name, stride):
    """resident_copy pads each block to a 16-byte multiple; every path reads the padded copy exactly as
    the file's blocks (dequantization bit for bit, GEMV and chunked GEMM, the numpy path)."""
    k, rows = _k(name, 3), 37
    raw = torch.from_numpy(random_blocks(name, rows, k, seed=5))
    padded, got = resident_copy(raw, name, k)
    assert got == stride and padded.shape == (rows, 3 * stride)
    ref = reference(raw.numpy(), name, k)
    for backend in ("triton", "numpy"):
        ours = dequantize(padded, name, k, backend=backend, stride=stride).numpy()
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), backend
    x = torch.randn(GEMV_MAX_TOKENS + 9, k, generator=torch.Generator().manual_seed(5))
    want = x.double() @ torch.from_numpy(ref).double().T
    assert _rel_err(gemv(x[:3], padded, name, k, stride), want[:3]) < REL_TOL
    work = work_buffer(16, k, raw.device)
    assert _rel_err(matmul(x, padded, name, k, work=work, stride=stride), want) < REL_TOL


def test_types_without_a_resident_stride_are_not_copied():
    raw = torch.from_numpy(random_blocks("Q4_K", 3, 512))
    blocks, stride = resident_copy(raw, "Q4_K", 512)
    assert blocks is raw and stride is None
    with pytest.raises(ValueError, match="Q6_K: a block stride of 200 bytes is not valid"):
        dequantize(torch.zeros(2, 400, dtype=torch.uint8), "Q6_K", 512, stride=200)
    with pytest.raises(ValueError, match="Q6_K rows of 512 values take 448 bytes, got 420"):
        gemv(torch.zeros(1, 512), torch.zeros(2, 420, dtype=torch.uint8), "Q6_K", 512, stride=224)
