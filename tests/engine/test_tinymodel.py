"""The tiny-model factory: HF dir and GGUF agree with transformers' own loaders."""

from __future__ import annotations

import subprocess
import sys

import gguf
import pytest
import torch
import transformers
from ollama_airllm.devtools import tinymodel
from ollama_airllm.devtools.tinytokenizer import make_tokenizer

IDS = torch.tensor([[5, 100, 200, 300, 17, 42, 7]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits[0]


def test_tokenizer_is_deterministic_and_has_chat_tokens():
    script = (
        "from ollama_airllm.devtools.tinytokenizer import make_tokenizer as m; "
        "print(m().backend_tokenizer.to_str())"
    )
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    tok = make_tokenizer()
    assert other.strip() == tok.backend_tokenizer.to_str()
    assert len(tok) == 512
    for t in (
        "<s>",
        "</s>",
        "<unk>",
        "<|im_start|>",
        "<|im_end|>",
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
    ):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id or t == "<unk>"
    text = "def add(a, b):\n    return a + b  # Hello world!"
    assert tok.decode(tok.encode(text)) == text
    rendered = tok.apply_chat_template(
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Berlin"}}}
                ],
            },
            {"role": "tool", "content": "sunny"},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>' in rendered
    assert "<tool_response>\nsunny\n</tool_response>" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_matches_transformers_gguf_loader(tiny_hf, tiny_gguf, arch):
    """F32 GGUF == the HF checkpoint; our reference == transformers' own GGUF loading (Q/K unpermuted)."""
    hf = tiny_hf(arch)
    base = _logits(transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval())
    path = tiny_gguf(arch, "F32")
    ref = _logits(tinymodel.reference_model(path))
    torch.testing.assert_close(ref, base, rtol=0, atol=0)
    q8 = tiny_gguf(arch, "Q8_0")
    hf_gguf = transformers.AutoModelForCausalLM.from_pretrained(
        q8.parent, gguf_file=q8.name, dtype=torch.float32
    )
    torch.testing.assert_close(
        _logits(hf_gguf.eval()), _logits(tinymodel.reference_model(q8)), rtol=0, atol=0
    )


def test_gguf_metadata_and_k_blocks(tiny_gguf):
    path = tiny_gguf("qwen3", "Q4_K", ctx=16384)
    r = gguf.GGUFReader(path)
    f = {
        k: v.contents()
        for k, v in r.fields.items()
        if not k.startswith("tokenizer.ggml.") or k.endswith("pre")
    }
    assert f["general.architecture"] == "qwen3"
    assert f["qwen3.context_length"] == 16384
    assert f["general.file_type"] == 15
    assert f["tokenizer.ggml.pre"] == "gpt-2"
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert len(r.fields["tokenizer.ggml.tokens"].contents()) == 512
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.0.attn_q_norm.weight"] == "F32"
    sd, _ = tinymodel.reference_state_dict(path)
    w = sd["model.layers.0.self_attn.q_proj.weight"]
    assert torch.isfinite(w).all() and 0.005 < w.std() < 0.2


def test_cli_writes_a_gguf(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    tinymodel.main(["--arch", "llama", "--layers", "1", "--qtype", "Q8_0", "--ctx", "16384", "-o", str(out)])
    assert capsys.readouterr().out.strip() == str(out)
    r = gguf.GGUFReader(out)
    assert r.fields["llama.context_length"].contents() == 16384
    assert r.fields["llama.block_count"].contents() == 1


def test_cli_tokenizer_kind(tmp_path):
    out = tmp_path / "spm.gguf"
    tinymodel.main(["--arch", "mistral", "--layers", "1", "--tokenizer", "spm", "-o", str(out)])
    r = gguf.GGUFReader(out)
    assert r.fields["tokenizer.ggml.model"].contents() == "llama"
    assert r.fields["tokenizer.ggml.tokens"].contents()[5:7] == ["<0x00>", "<0x01>"]
    assert "tokenizer.ggml.merges" not in r.fields and r.fields["tokenizer.ggml.add_bos_token"].contents()
