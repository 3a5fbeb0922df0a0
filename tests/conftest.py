"""Fixtures shared by every suite: tiny random models made once per test session.

def test_x(tiny_hf_llama, tiny_gguf):
    hf_dir = tiny_hf_llama                      # HF safetensors dir (llama, 2 layers)
    path = tiny_gguf("qwen3", "Q4_K")           # GGUF file, cached per (arch, qtype, options)
    path = tiny_gguf("llama", "F32", ctx=16384, n_layers=4)
    path = tiny_gguf("llama", "F32", tokenizer="spm")   # tokenizers: gpt2, llama-bpe, qwen2, spm
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels (ollama_airllm.kernels) run under Triton's CPU interpreter. It must be
# chosen before anything imports triton.language (airllm does): else its helpers (tl.zeros, tl.sum) are
# compiled functions that the interpreter cannot call.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_lock = threading.Lock()


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_hf(tiny_models_dir):
    """Factory: tiny_hf(arch="llama", qtype_shape="F32", n_layers=2, **make_hf_model kwargs) -> HF dir."""
    from ollama_airllm.devtools import tinymodel

    cache: dict[str, Path] = {}

    def make(arch: str = "llama", qtype_shape: str = "F32", **kw) -> Path:
        kw = {"n_layers": 2, **tinymodel.default_shape(qtype_shape), **kw}
        key = f"{arch}-{sorted(kw.items())!r}"
        with _lock:
            if key not in cache:
                name = f"hf-{arch}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
                cache[key] = tinymodel.make_hf_model(tiny_models_dir / name, arch=arch, **kw)
            return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_hf_llama(tiny_hf) -> Path:
    """A 2-layer random Llama (hidden 64) saved as safetensors with the tiny tokenizer."""
    return tiny_hf("llama")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_hf, tiny_models_dir):
    """Factory: tiny_gguf(arch="llama", qtype="F32", ctx=None, **make_hf_model kwargs) -> GGUF path.

    The HF checkpoint behind it is `tiny_hf(arch, qtype, **kwargs)`; ctx overrides the declared context.
    """
    from ollama_airllm.devtools import tinymodel

    cache: dict[tuple, Path] = {}

    def make(arch: str = "llama", qtype: str = "F32", ctx: int | None = None, **kw) -> Path:
        hf = tiny_hf(arch, qtype, **kw)
        key = (hf, qtype, ctx)
        with _lock:
            if key not in cache:
                out = tiny_models_dir / f"{hf.name}-{qtype}-ctx{ctx}.gguf"
                cache[key] = tinymodel.write_gguf(hf, out, qtype=qtype, ctx=ctx)
            return cache[key]

    return make
