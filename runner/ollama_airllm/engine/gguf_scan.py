"""Check a GGUF file's header against the file before gguf's reader (or anything else) trusts it.

gguf's GGUFReader believes every count in the header: an array length of 2^60 past the end of the file makes
it loop and allocate without bound. `scan` walks the header with struct over a read-only mapping, bounds
every count and length by the bytes that are left, and says precisely what is wrong ("truncated: the tensor
data ends at byte N, but the file has M bytes").
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
MAX_DIMS = 4  # GGML_MAX_DIMS
# The fewest bytes one header entry can take: a metadata entry (empty key, u8 value), a tensor info
# (empty name, one dimension), a string (empty).
_MIN_KV, _MIN_TENSOR, _MIN_STRING = 8 + 4 + 1, 8 + 4 + 8 + 4 + 8, 8


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


class _Reader:
    def __init__(self, data) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.left():
            raise _Truncated(self.pos)
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, n: int, min_size: int) -> int:
        """`n` items of at least `min_size` bytes each; _Truncated if the rest of the file is too short."""
        if n * min_size > self.left():
            raise _Truncated(self.pos)
        return n

    def text(self, what: str) -> str:
        raw = self.take(self.unpack("Q"))
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise _Corrupt(f"{what} is not valid UTF-8") from None

    def value(self, vtype: int, key: str):
        """One metadata value; arrays are checked and skipped (None), strings decoded, scalars unpacked."""
        if vtype == STRING:
            return self.text(f"metadata {key}")
        if vtype == ARRAY:
            itype, n = self.unpack("I"), self.unpack("Q")
            if itype == ARRAY:
                raise _Corrupt(f"metadata {key} is an array of arrays, which is not supported")
            if itype in _SCALARS:
                self.take(struct.calcsize(_SCALARS[itype]) * n)
            elif itype == STRING:
                for i in range(self.count(n, _MIN_STRING)):
                    self.text(f"metadata {key}[{i}]")
            else:
                raise _Corrupt(f"metadata {key} has an unknown element type {itype}")
            return None
        if vtype not in _SCALARS:
            raise _Corrupt(f"metadata {key} has an unknown value type {vtype}")
        return self.unpack(_SCALARS[vtype])


def scan(path: str | Path, size: int) -> str | None:
    """What is wrong with the GGUF file's header or its tensor extents, or None when it is sound."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        r = _Reader(data)
        try:
            return _walk(r, size)
        except _Truncated as t:
            return f"file is truncated inside the header (at byte {t.args[0]}; the file has {size} bytes)"
        except _Corrupt as e:
            return f"the header is corrupt: {e}"


def _walk(r: _Reader, size: int) -> str | None:
    r.take(4)
    version, n_tensors, n_kv = r.unpack("I"), r.unpack("Q"), r.unpack("Q")
    if version not in (2, 3):
        return f"GGUF version {version} is not supported (supported: 2, 3)"
    alignment = 32
    keys: set[str] = set()
    for _ in range(r.count(n_kv, _MIN_KV)):
        key = r.text("a metadata key")
        if key in keys:
            raise _Corrupt(f"metadata key {key!r} appears twice")
        keys.add(key)
        vtype = r.unpack("I")
        value = r.value(vtype, key)
        if key == "general.alignment":
            if vtype != 4 or value == 0 or value & (value - 1):
                raise _Corrupt(f"metadata general.alignment is {value!r}; must be a uint32 power of two")
            alignment = value
    end = 0
    names: set[str] = set()
    for _ in range(r.count(n_tensors, _MIN_TENSOR)):
        name = r.text("a tensor name")
        if name in names:
            raise _Corrupt(f"tensor {name!r} appears twice")
        names.add(name)
        end = max(end, _tensor_end(r, name))
    start = (r.pos + alignment - 1) // alignment * alignment
    if start + end > size:
        return f"file is truncated: the tensor data ends at byte {start + end}, but the file has {size} bytes"
    return None


def _tensor_end(r: _Reader, name: str) -> int:
    """Read one tensor info; the end of its data relative to the start of the data section."""
    n_dims = r.unpack("I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions (allowed: 1 to {MAX_DIMS})")
    dims = [r.unpack("Q") for _ in range(n_dims)]
    qtype, offset = r.unpack("I"), r.unpack("Q")
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        raise _Corrupt(f"tensor {name!r} has an unknown type id {qtype}") from None
    if dims[0] % block:
        raise _Corrupt(
            f"tensor {name!r} has {dims[0]} elements per row, not a multiple of its type's block ({block})"
        )
    n = 1
    for d in dims:
        n *= d
    return offset + n // block * type_size
