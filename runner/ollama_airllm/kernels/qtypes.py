"""GGUF tensor types the kernels read: block geometry and the kernels' type codes."""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType as T


@dataclass(frozen=True)
class QType:
    """One GGUF tensor type: `block` values are stored in `block_bytes` bytes."""

    name: str
    code: int  # the kernels' constexpr switch
    block: int
    block_bytes: int
    sub: int = 32  # values that share one decoded scale (the kernels' innermost tile dimension)
    # bytes a block takes in a device-resident copy: block_bytes, or (Q6_K, Q3_K) rounded up to a multiple
    # of 16 for 1/15 or less more memory, so that the GEMV's loads widen (bench/isa.py measures it)
    resident_stride: int = 0

    @property
    def resident_block_bytes(self) -> int:
        return self.resident_stride or self.block_bytes

    def row_bytes(self, k: int, stride: int | None = None) -> int:
        """Bytes of one row of `k` values, `stride` bytes per block (default: as in the file); `k` must be
        a whole number of blocks."""
        if k % self.block:
            raise ValueError(f"{self.name}: a row of {k} values is not a whole number of {self.block}-blocks")
        return k // self.block * (stride or self.block_bytes)


QTYPES = {
    q.name: q
    for q in (
        QType("F32", 0, 1, 4),
        QType("F16", 1, 1, 2),
        QType("BF16", 2, 1, 2),
        QType("Q4_0", 3, 32, 18),
        QType("Q4_1", 4, 32, 20),
        QType("Q5_0", 5, 32, 22),
        QType("Q5_1", 6, 32, 24),
        QType("Q8_0", 7, 32, 34),
        QType("Q2_K", 8, 256, 84, 16),
        QType("Q3_K", 9, 256, 110, 16, 112),
        QType("Q4_K", 10, 256, 144),
        QType("Q5_K", 11, 256, 176),
        QType("Q6_K", 12, 256, 210, 16, 224),
        QType("IQ4_NL", 13, 32, 18),
        QType("IQ4_XS", 14, 256, 136),
        QType("MXFP4", 15, 32, 17),
    )
}

# The geometry agrees with gguf-py's table (checked by the tests).
GGML = {name: getattr(T, name) for name in QTYPES}

# IQ4_NL / IQ4_XS non-linear 4-bit values (ggml-common.h kvalues_iq4nl)
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
# MXFP4's E2M1 values, doubled (ggml-common.h kvalues_mxfp4; the E8M0 scale is halved to match)
MXFP4_VALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)
# The kernels' value table: IQ4 at 0..15, MXFP4 at 16..31
KVALUES = IQ4_VALUES + MXFP4_VALUES


def qtype(name: str) -> QType:
    """The QType for a GGUF type name, or a clear error naming the supported ones."""
    try:
        return QTYPES[name]
    except KeyError:
        raise ValueError(f"tensor type {name} has no kernel; supported: {', '.join(QTYPES)}") from None
