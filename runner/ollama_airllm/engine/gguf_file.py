"""Open a GGUF file: validate it, read the model's shape from its metadata, and map its tensor data."""

from __future__ import annotations

import math
import mmap
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf import GGUFValueType as T

from ..errors import UserError
from . import archs
from . import rope as rotary
from .dequant import SUPPORTED
from .gguf_scan import scan
from .moe import ARCH_DEFAULTS, MoeSpec

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "qwen3moe", *archs.ARCHS)


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
    moe: MoeSpec | None = None  # mixture-of-experts layers (ffn_gate_inp + ffn_*_exps), else None
    rope: rotary.Rope | None = None  # the model-wide rope (rope_theta + scaling); None: rope_theta plain
    layout: archs.Layout | None = None  # gemma3 / gpt-oss: per-layer windows and ropes, caps, scales


@dataclass
class GGUFModel:
    """A validated GGUF file: spec, metadata, per-layer tensor refs and the mapped bytes.

    `data` is the whole file as a uint8 tensor over GGUFReader's own mapping, opened copy-on-write ("c"),
    so torch can wrap it without copying; nothing writes to it, so it stays shared with the page cache.
    """

    path: Path
    spec: ModelSpec
    metadata: dict
    layers: list[dict[str, TensorRef]]
    globals: dict[str, TensorRef]
    file_size: int
    data: torch.Tensor = field(repr=False)
    mapping: mmap.mmap = field(repr=False)  # the mmap under `data`, for madvise

    def raw(self, t: TensorRef) -> torch.Tensor:
        return self.data[t.offset : t.offset + t.nbytes]

    def advise_willneed(self, refs: list[TensorRef]) -> None:
        """Ask the kernel to read these tensors into the page cache ahead of use."""
        if not hasattr(mmap, "MADV_WILLNEED"):
            return
        page = mmap.PAGESIZE
        for t in refs:
            start = t.offset // page * page
            self.mapping.madvise(mmap.MADV_WILLNEED, start, t.offset + t.nbytes - start)

    def is_file_view(self, t: torch.Tensor) -> bool:
        """True when `t` shares memory with the mapped file (a zero-copy F32 view)."""
        base = self.data.data_ptr()
        return t.device.type == "cpu" and base <= t.data_ptr() < base + self.file_size


_MISSING = object()
_INTS = frozenset(
    {T.UINT8, T.INT8, T.UINT16, T.INT16, T.UINT32, T.INT32, T.UINT64, T.INT64}
)
_NUMBERS = _INTS | {T.FLOAT32, T.FLOAT64}
MAX_CONTEXT = 2**31 - 1
# The special-token ids this runner uses; each must name a token of the vocabulary.
SPECIAL_IDS = ("bos", "eos", "eot", "eom", "unknown", "padding")


def _shown(f) -> str:
    """A metadata value as an error message shows it: its value, or its kind when that is the problem."""
    kind = f.types[0]
    if kind == T.ARRAY:
        return f"an array ({len(f.data)} values)"
    if kind == T.STRING:
        text = f.contents()
        return f"a string ({text[:40]!r}{'...' if len(text) > 40 else ''})"
    if kind == T.BOOL:
        return f"a boolean ({str(f.contents()).lower()})"
    return repr(f.contents())


def _int_range(lo: int, hi: int | None) -> str:
    if hi is not None:
        return f"an integer from {lo} to {hi}"
    return "a positive integer" if lo == 1 else f"an integer of at least {lo}"


class _Meta:
    """Typed access to GGUF metadata: a missing key, or a value of the wrong type or range, is a
    ModelFileError naming the file, the key, the value and what is allowed."""

    def __init__(self, path, reader: GGUFReader) -> None:
        self.path = path
        self.fields = reader.fields

    def _field(self, key: str, required: bool):
        f = self.fields.get(key)
        if f is None and required:
            raise ModelFileError(self.path, f"metadata key {key!r} is missing")
        return f

    def bad(self, key: str, must: str):
        raise ModelFileError(self.path, f"metadata {key} is {_shown(self.fields[key])}; must be {must}")

    def integer(self, key: str, default=_MISSING, lo: int = 1, hi: int | None = None):
        f = self._field(key, default is _MISSING)
        if f is None:
            return default
        v = f.contents() if f.types[0] in _INTS else None
        if v is None or v < lo or (hi is not None and v > hi):
            self.bad(key, _int_range(lo, hi))
        return v

    def number(self, key: str, default=_MISSING) -> float:
        f = self._field(key, default is _MISSING)
        if f is None:
            return default
        if f.types[0] not in _NUMBERS or not 0 < f.contents() < math.inf:
            self.bad(key, "a positive number")
        return float(f.contents())

    def string(self, key: str, default=_MISSING):
        f = self._field(key, default is _MISSING)
        if f is None:
            return default
        if f.types != [T.STRING]:
            self.bad(key, "a string")
        return f.contents()

    def flag(self, key: str) -> bool | None:
        f = self._field(key, False)
        if f is not None and f.types != [T.BOOL]:
            self.bad(key, "true or false")
        return None if f is None else f.contents()

    def array(self, key: str, elements: frozenset, what: str) -> list | None:
        """The array at `key` (None when absent); every element must have one of the `elements` types."""
        f = self._field(key, False)
        if f is None:
            return None
        if f.types[0] != T.ARRAY or (f.data and f.types[-1] not in elements):
            self.bad(key, f"an array of {what}")
        return f.contents()


def open_gguf(path: str | os.PathLike) -> GGUFModel:
    """Read and validate a GGUF file; any problem raises ModelFileError naming the file."""
    path = Path(path)
    size = _regular_file_size(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFileError(path, f"not a GGUF file (first bytes {magic!r}, expected b'GGUF')")
    problem = scan(path, size)  # bounds every count by the file before gguf's reader believes it
    if problem:
        raise ModelFileError(path, problem)
    try:
        reader = GGUFReader(path, "c")
    except Exception as e:  # the scan should have caught it; gguf raises ValueError/KeyError/IndexError
        problem = f"the GGUF file is corrupt or of an unknown format (gguf reader: {e})"
        raise ModelFileError(path, problem) from None
    tensors = _tensor_refs(path, reader)
    meta = _Meta(path, reader)
    spec = _spec(path, meta, tensors)
    layers, globals_ = _group(path, spec, tensors)
    _check_tensors(path, spec, layers, globals_)
    _check_vocab(path, meta, spec.n_vocab)
    metadata = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    tok_meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.ggml.")}
    metadata["_tokenizer"] = tok_meta
    # the reader's own mapping (an np.memmap, whose base is the mmap): the file is mapped once
    data = torch.from_numpy(reader.data)
    return GGUFModel(path, spec, metadata, layers, globals_, size, data, reader.data.base)


def _regular_file_size(path: Path) -> int:
    """The size of `path`, which must be a regular file (a FIFO would block the first read forever)."""
    try:
        st = path.stat()
    except OSError as e:
        raise ModelFileError(path, f"cannot read the file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(path, f"not a regular file ({_file_kind(st.st_mode)})")
    return st.st_size


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return kind
    return "special file"


def _tensor_refs(path, reader: GGUFReader) -> dict[str, TensorRef]:
    tensors: dict[str, TensorRef] = {}
    for t in reader.tensors:
        qtype = GGMLQuantizationType(t.tensor_type)
        if qtype not in SUPPORTED:
            raise ModelFileError(
                path,
                f"tensor {t.name!r} has type {qtype.name}, which this runner does not "
                f"support (supported: {', '.join(sorted(q.name for q in SUPPORTED))})",
            )
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        block, tsize = GGML_QUANT_SIZES[qtype]
        nbytes = math.prod(shape) // block * tsize
        tensors[t.name] = TensorRef(t.name, qtype, shape, int(t.data_offset), nbytes)
    return tensors


def _group(path, spec: ModelSpec, tensors: dict[str, TensorRef]):
    """Per-layer tensor dicts (exactly block_count of them) and the global tensors."""
    blocks: dict[int, dict[str, TensorRef]] = {}
    globals_: dict[str, TensorRef] = {}
    for name, ref in tensors.items():
        if not name.startswith("blk."):
            globals_[name] = ref
            continue
        _, idx, *rest = name.split(".", 2)
        if not rest or not (idx.isascii() and idx.isdigit()):
            raise ModelFileError(path, f"tensor name {name!r} is not of the form blk.N.NAME")
        if int(idx) >= spec.n_layer:
            raise ModelFileError(path, f"tensor {name!r} is outside block_count={spec.n_layer}")
        blocks.setdefault(int(idx), {})[rest[0]] = ref
    for i in range(spec.n_layer):  # stops at the first gap, so at most len(blocks) + 1 steps
        if i not in blocks:
            raise ModelFileError(
                path,
                f"metadata {spec.arch}.block_count is {spec.n_layer}, but tensor 'blk.{i}.attn_norm.weight' "
                "is missing",
            )
    return [blocks[i] for i in range(spec.n_layer)], globals_


def _spec(path, meta: _Meta, tensors: dict[str, TensorRef]) -> ModelSpec:
    arch = meta.string("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ModelFileError(
            path,
            f"architecture {arch!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_ARCHS)}; Mistral and Mixtral models use 'llama')",
        )
    if "token_embd.weight" not in tensors:
        raise ModelFileError(path, "tensor 'token_embd.weight' is missing")
    n_embd, n_head, n_head_kv, head_dim = _attention_shape(path, meta, arch)
    rope_dim = meta.integer(f"{arch}.rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise ModelFileError(
            path,
            f"partial rotary embedding (rope.dimension_count={rope_dim}, "
            f"head dim {head_dim}) is not supported",
        )
    rope = rotary.from_metadata(meta, arch, lambda problem: _raise(path, problem))
    n_layer = meta.integer(f"{arch}.block_count")
    return ModelSpec(
        arch=arch,
        name=meta.string("general.name", path.name),
        n_vocab=tensors["token_embd.weight"].shape[0],
        n_ctx_train=meta.integer(f"{arch}.context_length", hi=MAX_CONTEXT),
        n_embd=n_embd,
        n_layer=n_layer,
        n_ff=meta.integer(f"{arch}.feed_forward_length"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        rope_theta=rope.theta,
        rms_eps=meta.number(f"{arch}.attention.layer_norm_rms_epsilon"),
        rope_permuted=arch == "llama",
        rope_linear_factor=rope.linear,
        file_type=meta.integer("general.file_type", None, lo=0),
        chat_template=meta.string("tokenizer.chat_template", None),
        moe=_moe_spec(path, meta, arch),
        rope=rope,
        layout=archs.layout(meta, arch, n_layer, n_embd, n_head, head_dim, rope),
    )


def _moe_spec(path, meta: _Meta, arch: str) -> MoeSpec | None:
    """The expert layers' shape and gating from {arch}.expert_*; None for a dense model."""
    n_expert = meta.integer(f"{arch}.expert_count", 0, lo=0)
    if n_expert == 0:
        if arch == "qwen3moe":
            raise ModelFileError(path, f"metadata key '{arch}.expert_count' is missing")
        return None
    defaults = ARCH_DEFAULTS.get(arch, ARCH_DEFAULTS["llama"])
    # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE: 1 softmax, 2 sigmoid (softmax-gated archs only say 1)
    if defaults["gating"] == "softmax" and meta.integer(f"{arch}.expert_gating_func", 1, lo=0) != 1:
        meta.bad(f"{arch}.expert_gating_func", "1 (softmax; sigmoid gating is not supported)")
    norm = meta.flag(f"{arch}.expert_weights_norm")
    n_ff = meta.integer(f"{arch}.feed_forward_length")
    return MoeSpec(
        n_expert=n_expert,
        n_used=meta.integer(f"{arch}.expert_used_count", hi=n_expert),
        n_ff=meta.integer(f"{arch}.expert_feed_forward_length", n_ff),
        **{**defaults, **({} if norm is None else {"norm_topk": norm})},
    )


def _raise(path, problem: str):
    raise ModelFileError(path, problem)


def _attention_shape(path, meta: _Meta, arch: str) -> tuple[int, int, int, int]:
    """n_embd, n_head, n_head_kv and the head dimension, checked against each other."""
    key = f"{arch}.attention"
    n_embd = meta.integer(f"{arch}.embedding_length")
    n_head = meta.integer(f"{key}.head_count")
    n_head_kv = meta.integer(f"{key}.head_count_kv", n_head)
    if n_head % n_head_kv:
        meta.bad(f"{key}.head_count_kv", f"a divisor of {key}.head_count ({n_head})")
    if f"{key}.key_length" not in meta.fields and n_embd % n_head:
        meta.bad(f"{arch}.embedding_length", f"a multiple of {key}.head_count ({n_head})")
    head_dim = meta.integer(f"{key}.key_length", n_embd // n_head)
    if head_dim % 2:
        raise ModelFileError(
            path, f"the attention head dimension is {head_dim}; rotary embedding needs an even one"
        )
    if meta.integer(f"{key}.value_length", head_dim) != head_dim:
        raise ModelFileError(path, "attention.value_length != attention.key_length is not supported")
    return n_embd, n_head, n_head_kv, head_dim


def _check_vocab(path, meta: _Meta, n_vocab: int) -> None:
    """The token lists agree with each other and with token_embd; the special ids name real tokens."""
    meta.string("tokenizer.ggml.model")
    meta.string("tokenizer.ggml.pre", None)
    tokens = meta.array("tokenizer.ggml.tokens", frozenset({T.STRING}), "strings")
    if not tokens:
        raise ModelFileError(path, "metadata key 'tokenizer.ggml.tokens' is missing or empty")
    if len(tokens) != n_vocab:
        raise ModelFileError(
            path,
            f"metadata tokenizer.ggml.tokens has {len(tokens)} entries, but token_embd.weight has "
            f"{n_vocab} rows (the vocabulary size)",
        )
    for key, kinds, what in (
        ("scores", _NUMBERS, "numbers"),
        ("token_type", _INTS, "integers"),
    ):
        values = meta.array(f"tokenizer.ggml.{key}", kinds, what)
        if values is not None and len(values) != n_vocab:
            raise ModelFileError(
                path,
                f"metadata tokenizer.ggml.{key} has {len(values)} entries; must have one per token "
                f"({n_vocab})",
            )
    for i, m in enumerate(meta.array("tokenizer.ggml.merges", frozenset({T.STRING}), "strings") or []):
        if " " not in m[1:]:
            raise ModelFileError(path, f"metadata tokenizer.ggml.merges[{i}] is {m!r}; must be 'LEFT RIGHT'")
    for name in SPECIAL_IDS:
        meta.integer(f"tokenizer.ggml.{name}_token_id", None, lo=0, hi=n_vocab - 1)
    for name in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        meta.flag(f"tokenizer.ggml.{name}")


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
_DENSE_FFN = ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")
# MoE layers (numpy order, as convert_hf_to_gguf writes them): a router and 3-D stacks of expert weights.
_MOE_TENSORS = {
    "ffn_gate_inp.weight": lambda s: (s.moe.n_expert, s.n_embd),
    "ffn_gate_exps.weight": lambda s: (s.moe.n_expert, s.moe.n_ff, s.n_embd),
    "ffn_up_exps.weight": lambda s: (s.moe.n_expert, s.moe.n_ff, s.n_embd),
    "ffn_down_exps.weight": lambda s: (s.moe.n_expert, s.n_embd, s.moe.n_ff),
}
_MOE_OPTIONAL = {  # gpt-oss: router and expert biases
    "ffn_gate_inp.bias": lambda s: (s.moe.n_expert,),
    "ffn_gate_exps.bias": lambda s: (s.moe.n_expert, s.moe.n_ff),
    "ffn_up_exps.bias": lambda s: (s.moe.n_expert, s.moe.n_ff),
    "ffn_down_exps.bias": lambda s: (s.moe.n_expert, s.n_embd),
}


def _layer_tables(spec: ModelSpec, layer: dict[str, TensorRef]) -> tuple[dict, dict]:
    """(required, allowed) tensor shape tables of one layer: a MoE layer has no dense FFN."""
    if spec.moe is None or "ffn_gate.weight" in layer:
        return _LAYER_TENSORS, _LAYER_TENSORS | _OPTIONAL
    required = {k: v for k, v in _LAYER_TENSORS.items() if k not in _DENSE_FFN} | _MOE_TENSORS
    return required, required | _OPTIONAL | _MOE_OPTIONAL


def _check_tensors(path, spec: ModelSpec, layers: list[dict[str, TensorRef]], globals_: dict) -> None:
    for i, layer in enumerate(layers):
        if spec.moe is None and "ffn_gate_inp.weight" in layer:
            raise ModelFileError(
                path, f"tensor 'blk.{i}.ffn_gate_inp.weight' is an expert router, but metadata key "
                f"'{spec.arch}.expert_count' is missing",
            )
        required, allowed = archs.tensor_tables(spec, layer, *_layer_tables(spec, layer))
        for name in required:
            if name not in layer:
                raise ModelFileError(path, f"tensor 'blk.{i}.{name}' is missing")
        if ("attn_q_norm.weight" in layer) != ("attn_k_norm.weight" in layer):
            raise ModelFileError(path, f"block {i} has only one of attn_q_norm.weight and attn_k_norm.weight")
        for name, ref in layer.items():
            want = allowed.get(name)
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
    norm = globals_["output_norm.weight"].shape
    if norm != (spec.n_embd,):
        raise ModelFileError(path, f"output_norm.weight has shape {list(norm)}, expected [{spec.n_embd}]")
    emb = globals_["token_embd.weight"].shape
    if len(emb) != 2 or emb[1] != spec.n_embd:
        raise ModelFileError(path, f"token_embd.weight has shape {list(emb)}, expected [*, {spec.n_embd}]")
    out = globals_.get("output.weight")
    if out is not None and out.shape != emb:
        raise ModelFileError(path, f"output.weight has shape {list(out.shape)}, expected {list(emb)}")
