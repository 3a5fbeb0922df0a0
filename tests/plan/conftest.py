"""GGUF files of real models' shapes for the planner's tests: header and tensor infos only, the data a sparse
hole (a 40 GB model takes no disk space), which is all `plan` and Ollama's decision read. The `ggufs`
fixture is this module (pytest's importlib mode cannot import a conftest)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import gguf
import numpy as np
import pytest

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class Shape:
    """A decoder's sizes; n_expert > 0 makes its FFN a MoE of n_expert experts of width expert_ff."""

    arch: str
    n_layer: int
    hidden: int
    ff: int
    heads: int
    kv_heads: int
    vocab: int
    n_ctx: int = 131072
    n_expert: int = 0
    n_expert_used: int = 0
    expert_ff: int = 0
    qtype: Q = Q.Q4_K


LLAMA_70B = Shape("llama", 80, 8192, 28672, 64, 8, 128256)
QWEN3_30B_A3B = Shape("qwen3moe", 48, 2048, 6144, 32, 4, 151936, 40960, 128, 8, 768)
LLAMA_8B = Shape("llama", 32, 4096, 14336, 32, 8, 128256)


def _tensors(s: Shape) -> list[tuple[str, tuple[int, ...], Q]]:
    """(name, GGUF shape (columns first), type) of every tensor."""
    head_dim = s.hidden // s.heads
    out = [("token_embd.weight", (s.hidden, s.vocab), s.qtype), ("output_norm.weight", (s.hidden,), Q.F32),
           ("output.weight", (s.hidden, s.vocab), Q.Q6_K)]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (s.hidden,), Q.F32), (b + "ffn_norm.weight", (s.hidden,), Q.F32),
                (b + "attn_q.weight", (s.hidden, s.heads * head_dim), s.qtype),
                (b + "attn_k.weight", (s.hidden, s.kv_heads * head_dim), s.qtype),
                (b + "attn_v.weight", (s.hidden, s.kv_heads * head_dim), Q.Q6_K),
                (b + "attn_output.weight", (s.heads * head_dim, s.hidden), s.qtype)]
        if s.n_expert:
            out += [(b + "ffn_gate_inp.weight", (s.hidden, s.n_expert), Q.F32),
                    (b + "ffn_gate_exps.weight", (s.hidden, s.expert_ff, s.n_expert), s.qtype),
                    (b + "ffn_up_exps.weight", (s.hidden, s.expert_ff, s.n_expert), s.qtype),
                    (b + "ffn_down_exps.weight", (s.expert_ff, s.hidden, s.n_expert), Q.Q6_K)]
        else:
            out += [(b + "ffn_gate.weight", (s.hidden, s.ff), s.qtype),
                    (b + "ffn_up.weight", (s.hidden, s.ff), s.qtype),
                    (b + "ffn_down.weight", (s.ff, s.hidden), Q.Q6_K)]
    return out


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def write(path: Path, s: Shape) -> Path:
    """Write the header of a model of shape `s`; the file has its full size, its tensor data a hole."""
    w = gguf.GGUFWriter(path, s.arch)
    w.add_block_count(s.n_layer)
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.hidden)
    w.add_feed_forward_length(s.ff)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    if s.n_expert:
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_feed_forward_length(s.expert_ff)
    total = 0
    for name, shape, qtype in _tensors(s):
        n = nbytes(shape, qtype)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        byte_shape = (*reversed(shape[1:]), shape[0] // block * size)
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), n, raw_dtype=qtype)
        total += n + (-n % 32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    start = path.stat().st_size
    os.truncate(path, start + (-start % 32) + total)
    return path


@pytest.fixture(scope="session")
def ggufs() -> ModuleType:
    """This module: Shape, the model shapes and write()."""
    return sys.modules[__name__]
