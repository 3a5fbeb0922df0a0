"""Say what is wrong with a GGUF file that gguf's reader rejected: walk its header with struct.

Used only on the error path, to turn "cannot reshape array ..." into "truncated: the tensor data ends at
byte N, but the file has M bytes".
"""

from __future__ import annotations

import struct
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Truncated(self.pos)
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        return self.take(self.unpack("Q"))

    def value(self, vtype: int):
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            itype, count = self.unpack("I"), self.unpack("Q")
            if itype in _SCALARS:
                self.take(struct.calcsize(_SCALARS[itype]) * count)
            else:
                for _ in range(count):
                    self.value(itype)
            return None
        if vtype not in _SCALARS:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self.unpack(_SCALARS[vtype])


def diagnose(path: str | Path, size: int) -> str | None:
    """A precise description of a truncated or damaged GGUF file, or None if none was found."""
    data = Path(path).read_bytes()
    r = _Reader(data)
    try:
        r.take(4)
        version, n_tensors, n_kv = r.unpack("I"), r.unpack("Q"), r.unpack("Q")
        if version not in (2, 3):
            return f"GGUF version {version} is not supported (supported: 2, 3)"
        alignment = 32
        for _ in range(n_kv):
            key = r.string()
            value = r.value(r.unpack("I"))
            if key == b"general.alignment" and isinstance(value, int):
                alignment = value
        end = 0
        for _ in range(n_tensors):
            name = r.string().decode(errors="replace")
            dims = [r.unpack("Q") for _ in range(r.unpack("I"))]
            qtype, offset = r.unpack("I"), r.unpack("Q")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
            except ValueError:
                return f"tensor {name!r} has an unknown type id {qtype}"
            n = 1
            for d in dims:
                n *= d
            end = max(end, offset + n // block * type_size)
        start = (r.pos + alignment - 1) // alignment * alignment
    except _Truncated as t:
        return f"file is truncated inside the header (at byte {t.args[0]}; the file has {size} bytes)"
    except ValueError as e:
        return f"the header is corrupt ({e})"
    if start + end > size:
        return f"file is truncated: the tensor data ends at byte {start + end}, but the file has {size} bytes"
    return None
