"""Open a GGUF file: validate it, read the model's shape from its metadata, and map its tensor data."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader

from ..errors import UserError
from .dequant import SUPPORTED

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3")


class ModelFileError(UserError):
    """A model file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's raw bytes are in the file. `shape` is numpy order (rows, cols)."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class ModelSpec:
    """The hyper-parameters of a llama-family model, from GGUF metadata."""

    arch: str
    name: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    rope_permuted: bool  # llama: convert_hf_to_gguf permuted Q/K rows into interleaved rotary pairs
    rope_linear_factor: float = 1.0  # rope.scaling.type == "linear": positions are divided by this
    file_type: int | None = None
    chat_template: str | None = None


@dataclass
class GGUFModel:
    """A validated GGUF file: spec, metadata, per-layer tensor refs and the mapped bytes."""

    path: Path
    spec: ModelSpec
    metadata: dict
    layers: list[dict[str, TensorRef]]
    globals: dict[str, TensorRef]
    file_size: int
    _data: torch.Tensor | None = field(default=None, repr=False)
    _mmap: mmap.mmap | None = field(default=None, repr=False)

    @property
    def data(self) -> torch.Tensor:
        """The whole file as a uint8 tensor over a private read-only-in-practice mapping (no copy)."""
        if self._data is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY gives a writable (copy-on-write) buffer, so torch can wrap it without copying;
                # nothing ever writes to it, so it stays shared with the page cache.
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            self._data = torch.frombuffer(self._mmap, dtype=torch.uint8)
        return self._data

    def raw(self, t: TensorRef) -> torch.Tensor:
        return self.data[t.offset : t.offset + t.nbytes]

    def advise_willneed(self, refs: list[TensorRef]) -> None:
        """Ask the kernel to read these tensors into the page cache ahead of use."""
        if self._mmap is None or not hasattr(mmap, "MADV_WILLNEED"):
            return
        page = mmap.PAGESIZE
        for t in refs:
            start = t.offset // page * page
            self._mmap.madvise(mmap.MADV_WILLNEED, start, t.offset + t.nbytes - start)


def _value(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _require(path, reader: GGUFReader, key: str):
    v = _value(reader, key)
    if v is None:
        raise ModelFileError(path, f"metadata key {key!r} is missing")
    return v


def open_gguf(path: str | os.PathLike) -> GGUFModel:
    """Read and validate a GGUF file; any problem raises ModelFileError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ModelFileError(path, f"cannot read the file ({e.strerror})") from None
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFileError(path, f"not a GGUF file (first bytes {magic!r}, expected b'GGUF')")
    try:
        reader = GGUFReader(path, "r")
    except Exception as e:  # gguf raises ValueError/IndexError/struct errors on damaged headers
        from .gguf_scan import diagnose

        problem = (
            diagnose(path, size) or f"the GGUF file is corrupt or of an unknown format (gguf reader: {e})"
        )
        raise ModelFileError(path, problem) from None

    tensors: dict[str, TensorRef] = {}
    for t in reader.tensors:
        qtype = GGMLQuantizationType(t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        block, tsize = GGML_QUANT_SIZES[qtype]
        expect = int(np.prod(shape)) // block * tsize
        end = int(t.data_offset) + expect
        if end > size:
            raise ModelFileError(
                path,
                f"file is truncated: tensor {t.name!r} ends at byte {end}, but the file has {size} bytes",
            )
        if qtype not in SUPPORTED:
            raise ModelFileError(
                path,
                f"tensor {t.name!r} has type {qtype.name}, which this runner does not "
                f"support (supported: {', '.join(sorted(q.name for q in SUPPORTED))})",
            )
        tensors[t.name] = TensorRef(t.name, qtype, shape, int(t.data_offset), expect)

    spec = _spec(path, reader, tensors)
    layers: list[dict[str, TensorRef]] = [{} for _ in range(spec.n_layer)]
    globals_: dict[str, TensorRef] = {}
    for name, ref in tensors.items():
        if name.startswith("blk."):
            _, idx, rest = name.split(".", 2)
            if not idx.isdigit() or int(idx) >= spec.n_layer:
                raise ModelFileError(path, f"tensor {name!r} is outside block_count={spec.n_layer}")
            layers[int(idx)][rest] = ref
        else:
            globals_[name] = ref
    _check_tensors(path, spec, layers, globals_)
    metadata = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    tok_meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.ggml.")}
    metadata["_tokenizer"] = tok_meta
    return GGUFModel(path, spec, metadata, layers, globals_, size)


def _spec(path, reader: GGUFReader, tensors: dict[str, TensorRef]) -> ModelSpec:
    arch = _require(path, reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ModelFileError(
            path,
            f"architecture {arch!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_ARCHS)}; Mistral models use 'llama')",
        )
    if "token_embd.weight" not in tensors:
        raise ModelFileError(path, "tensor 'token_embd.weight' is missing")
    n_embd = int(_require(path, reader, f"{arch}.embedding_length"))
    n_head = int(_require(path, reader, f"{arch}.attention.head_count"))
    n_head_kv = _value(reader, f"{arch}.attention.head_count_kv", n_head)
    if isinstance(n_head_kv, list):
        raise ModelFileError(path, "per-layer head_count_kv is not supported")
    head_dim = int(_value(reader, f"{arch}.attention.key_length", n_embd // n_head))
    if int(_value(reader, f"{arch}.attention.value_length", head_dim)) != head_dim:
        raise ModelFileError(path, "attention.value_length != attention.key_length is not supported")
    rope_dim = int(_value(reader, f"{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ModelFileError(
            path,
            f"partial rotary embedding (rope.dimension_count={rope_dim}, "
            f"head dim {head_dim}) is not supported",
        )
    scaling = _value(reader, f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear", None):
        raise ModelFileError(path, f"rope scaling {scaling!r} is not supported (supported: none, linear)")
    linear = float(_value(reader, f"{arch}.rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
    n_vocab = tensors["token_embd.weight"].shape[0]
    return ModelSpec(
        arch=arch,
        name=str(_value(reader, "general.name", path.name)),
        n_vocab=int(n_vocab),
        n_ctx_train=int(_require(path, reader, f"{arch}.context_length")),
        n_embd=n_embd,
        n_layer=int(_require(path, reader, f"{arch}.block_count")),
        n_ff=int(_require(path, reader, f"{arch}.feed_forward_length")),
        n_head=n_head,
        n_head_kv=int(n_head_kv),
        head_dim=head_dim,
        rope_theta=float(_value(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_eps=float(_require(path, reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_permuted=arch == "llama",
        rope_linear_factor=linear or 1.0,
        file_type=_value(reader, "general.file_type"),
        chat_template=_value(reader, "tokenizer.chat_template"),
    )


_LAYER_TENSORS = {
    "attn_norm.weight": lambda s: (s.n_embd,),
    "attn_q.weight": lambda s: (s.n_head * s.head_dim, s.n_embd),
    "attn_k.weight": lambda s: (s.n_head_kv * s.head_dim, s.n_embd),
    "attn_v.weight": lambda s: (s.n_head_kv * s.head_dim, s.n_embd),
    "attn_output.weight": lambda s: (s.n_embd, s.n_head * s.head_dim),
    "ffn_norm.weight": lambda s: (s.n_embd,),
    "ffn_gate.weight": lambda s: (s.n_ff, s.n_embd),
    "ffn_up.weight": lambda s: (s.n_ff, s.n_embd),
    "ffn_down.weight": lambda s: (s.n_embd, s.n_ff),
}
_OPTIONAL = {
    "attn_q.bias": lambda s: (s.n_head * s.head_dim,),
    "attn_k.bias": lambda s: (s.n_head_kv * s.head_dim,),
    "attn_v.bias": lambda s: (s.n_head_kv * s.head_dim,),
    "attn_q_norm.weight": lambda s: (s.head_dim,),
    "attn_k_norm.weight": lambda s: (s.head_dim,),
}


def _check_tensors(path, spec: ModelSpec, layers: list[dict[str, TensorRef]], globals_: dict) -> None:
    for i, layer in enumerate(layers):
        for name in _LAYER_TENSORS:
            if name not in layer:
                raise ModelFileError(path, f"tensor 'blk.{i}.{name}' is missing")
        for name, ref in layer.items():
            want = (_LAYER_TENSORS | _OPTIONAL).get(name)
            if want is None:
                raise ModelFileError(path, f"tensor 'blk.{i}.{name}' is not supported for {spec.arch}")
            if ref.shape != want(spec):
                raise ModelFileError(
                    path, f"tensor 'blk.{i}.{name}' has shape {list(ref.shape)}, expected {list(want(spec))}"
                )
    for name, ref in globals_.items():
        if name not in ("token_embd.weight", "output_norm.weight", "output.weight", "rope_freqs.weight"):
            raise ModelFileError(path, f"tensor {name!r} is not supported for {spec.arch}")
        if name == "rope_freqs.weight" and ref.shape != (spec.head_dim // 2,):
            raise ModelFileError(
                path, f"rope_freqs.weight has shape {list(ref.shape)}, expected [{spec.head_dim // 2}]"
            )
    if "output_norm.weight" not in globals_:
        raise ModelFileError(path, "tensor 'output_norm.weight' is missing")
    emb = globals_["token_embd.weight"].shape
    if emb[1] != spec.n_embd:
        raise ModelFileError(path, f"token_embd.weight has shape {list(emb)}, expected [*, {spec.n_embd}]")
    out = globals_.get("output.weight")
    if out is not None and out.shape != emb:
        raise ModelFileError(path, f"output.weight has shape {list(out.shape)}, expected {list(emb)}")
