"""EngineInfo's model facts (parameter count, vocabulary type) against independent references."""

from __future__ import annotations

import pytest
import torch
import transformers
from ollama_airllm.engine import Engine, EngineConfig


@pytest.mark.parametrize(("arch", "kw"), [("llama", {}), ("qwen3", {"tie_embeddings": True})])
def test_gguf_n_params_equals_transformers_count(tiny_hf, tiny_gguf, arch, kw):
    """The GGUF holds the same weights as the HF checkpoint: same parameter count (tied head once)."""
    ref = transformers.AutoModelForCausalLM.from_pretrained(tiny_hf(arch, **kw), dtype=torch.float32)
    eng = Engine.load(tiny_gguf(arch, "F32", **kw), EngineConfig(device="cpu", n_ctx=64))
    assert eng.info.n_params == ref.num_parameters()
    assert eng.info.vocab_type == 2  # the tiny tokenizer is a gpt2-style BPE: LLAMA_VOCAB_TYPE_BPE


def test_airllm_n_params_vocab_type_and_resident_bytes(tiny_hf, tmp_path):
    hf = tiny_hf("qwen2")
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    eng = Engine.load(hf, EngineConfig(device="cpu", dtype="float32", n_ctx=64, hf_split_dir=str(tmp_path)))
    assert eng.info.n_params == ref.num_parameters()
    assert eng.info.vocab_type == 2
    # airllm streams every layer, embeddings and head included; what stays is the rotary tables:
    # inv_freq and original_inv_freq, float32 [head_dim / 2] each
    head_dim = ref.config.hidden_size // ref.config.num_attention_heads
    assert eng.info.resident_bytes == 2 * 4 * head_dim // 2
