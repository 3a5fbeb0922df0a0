"""Random GGUF blocks of every kernel type, for the tests and bench/kernels.py.

Quantized types get random bytes (every bit pattern is a valid block) with their float16 scale fields
replaced by small finite values; float types are random normal values.
"""

from __future__ import annotations

import numpy as np
from gguf import quants

from .qtypes import GGML, QTYPES

# byte offsets of the float16 fields (d, dmin, m) inside one block
F16_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
    "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_NL": (0,), "IQ4_XS": (0,),
    "MXFP4": (),
}  # fmt: skip


def random_blocks(name: str, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """uint8 [rows, row_bytes]: `rows` rows of `k` values of type `name`."""
    rng = np.random.default_rng(seed)
    q = QTYPES[name]
    if name in ("F32", "F16", "BF16"):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        if name == "F32":
            return x.view(np.uint8).reshape(rows, -1)
        if name == "F16":
            return x.astype(np.float16).view(np.uint8).reshape(rows, -1)
        return quants.quantize(x, GGML[name]).reshape(rows, -1)
    nb = q.row_bytes(k) // q.block_bytes
    raw = rng.integers(0, 256, (rows, nb, q.block_bytes), dtype=np.uint8)
    if name == "MXFP4":  # E8M0 exponents around 2^0, the smallest two included (a subnormal scale)
        raw[:, :, 0] = rng.integers(0, 135, (rows, nb), dtype=np.uint8)
    for off in F16_FIELDS[name]:
        scale = (rng.standard_normal((rows, nb, 1)) * 0.05).astype(np.float16)
        raw[:, :, off : off + 2] = scale.view(np.uint8)
    return raw.reshape(rows, -1)


def reference(raw: np.ndarray, name: str, k: int) -> np.ndarray:
    """gguf-py's numpy dequantization: float32 [rows, k]."""
    return quants.dequantize(raw, GGML[name]).reshape(raw.shape[0], k).astype(np.float32)
