"""gpt-oss as llama.cpp's convert_hf_to_gguf writes it, against transformers' GptOssForCausalLM.

The tiny model (tinyarch): 3 layers, even ones sliding over 4 positions, odd ones full; q/k/v/o biases;
random attention sinks; YaRN (factor 8, original context 512, not truncated, as GptOssConfig); a MoE FFN of
4 experts, top-2 with router and expert biases (moe.py). The converter keeps experts unquantized here (the
checkpoint has no MXFP4 blocks); llama-quantize then makes Q8_0 / Q4_K_M files whose reference is
transformers on gguf-py's dequantization of the same file (tinyarch.reference_model).
"""

from __future__ import annotations

import subprocess

import pytest
import torch
import transformers
from ollama_airllm.devtools import llamacpp, tinyarch
from ollama_airllm.engine import Engine, EngineConfig, SamplingParams
from ollama_airllm.engine import rope as rotary
from ollama_airllm.engine.gguf_file import open_gguf
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tests.server.conftest import _required_tool

PROMPT = [5, 100, 200, 300, 17, 42, 7, 99, 12, 250, 31, 64]
GREEDY = dict(temperature=0.0, n_predict=24, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(HF dir, F32 GGUF by convert_hf_to_gguf)."""
    _required_tool("LLAMA_CONVERT_PY", "tests/setup.d/31-llama-convert.sh")
    d = tmp_path_factory.mktemp("gptoss")
    hf = tinyarch.make_hf_model(d / "hf", "gpt-oss")
    return hf, llamacpp.convert(hf, d / "gptoss-F32.gguf")


def _load(path, **kw) -> Engine:
    return Engine.load(path, EngineConfig(device="cpu", n_ctx=256, n_batch=5, **kw))


@pytest.mark.parametrize("resident", [0, 3])
def test_f32_logits_match_transformers(model, resident):
    hf, path = model
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor([PROMPT])).logits[0]
    torch.testing.assert_close(
        _load(path, resident_layers=resident).logits(PROMPT), want, rtol=1e-4, atol=1e-5
    )


def test_greedy_tokens_match_transformers(model):
    hf, path = model
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref.generate(torch.tensor([PROMPT]), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    res = _load(path, resident_layers=1).generate(0, PROMPT, SamplingParams(**GREEDY))
    assert res.tokens == want[0, len(PROMPT) :].tolist()


def test_layout_from_the_converters_metadata(model):
    spec = open_gguf(model[1]).spec
    assert [a.window for a in spec.layout.layers] == [4, None, 4]
    assert spec.rope == rotary.Rope(150000.0, yarn=rotary.Yarn(8.0, 512, 32.0, 1.0, None, truncate=False))
    assert {a.rope for a in spec.layout.layers} == {spec.rope}
    assert spec.layout.q_scale == 1 / 4 and spec.layout.final_softcap is None
    assert (spec.moe.gating, spec.moe.act, spec.moe.n_expert, spec.moe.n_used) == (
        "topk-softmax",
        "swiglu-oai",
        4,
        2,
    )


@pytest.mark.parametrize("truncate", [True, False])
def test_yarn_frequencies_and_scale_equal_transformers(truncate):
    params = {
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    }
    cfg = transformers.GptOssConfig(
        head_dim=64,
        rope_parameters={**params, "truncate": truncate, "original_max_position_embeddings": 4096},
    )
    want, want_scale = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
    got, scale = rotary.inv_freq(rotary.Rope(150000.0, yarn=rotary.Yarn(32.0, 4096, truncate=truncate)), 64)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert scale == pytest.approx(want_scale, rel=1e-12)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict:
    """{qtype: (GGUF by llama-quantize, HF dir)} for a hidden-256 model (K-quant rows)."""
    _required_tool("LLAMA_CONVERT_PY", "tests/setup.d/31-llama-convert.sh")
    quantize = _required_tool("LLAMA_QUANTIZE_BIN", "tests/setup.d/30-llama-server.sh")
    d = tmp_path_factory.mktemp("gptoss-q")
    hf = tinyarch.make_hf_model(d / "hf", "gpt-oss", hidden=256)
    f32 = llamacpp.convert(hf, d / "F32.gguf")
    out = {}
    for qtype in ("Q8_0", "Q4_K_M"):
        path = d / f"{qtype}.gguf"
        done = subprocess.run([quantize, str(f32), str(path), qtype], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        out[qtype] = (path, hf)
    return out


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_quantized_logits_match_transformers_on_the_same_file(quantized, qtype):
    path, hf = quantized[qtype]
    with torch.no_grad():
        want = tinyarch.reference_model(path, hf)(torch.tensor([PROMPT])).logits[0]
    got = _load(path, resident_layers=1).logits(PROMPT)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)


def _mxfp4_checkpoint_model(hf_dir):
    """transformers' GptOssForCausalLM with the checkpoint's MXFP4 expert blocks decoded by transformers
    (integrations.mxfp4.convert_moe_packed_tensors): independent of the converter and of gguf-py."""
    from safetensors.torch import load_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    cfg = transformers.AutoConfig.from_pretrained(hf_dir)
    del cfg.quantization_config
    state = load_file(hf_dir / "model.safetensors")
    for name in [n for n in state if n.endswith("_blocks")]:
        base = name.removesuffix("_blocks")
        state[base] = convert_moe_packed_tensors(
            state.pop(name), state.pop(base + "_scales"), dtype=torch.float32
        )
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.load_state_dict(state, strict=True)
    return model


def test_mxfp4_experts_match_transformers_decoding_of_the_checkpoint(tmp_path):
    """OpenAI's format: experts as MXFP4 blocks; convert_hf_to_gguf repacks them to GGUF MXFP4 (type 39)."""
    _required_tool("LLAMA_CONVERT_PY", "tests/setup.d/31-llama-convert.sh")
    hf = tinyarch.make_hf_model(tmp_path / "hf", "gpt-oss", mxfp4=True)
    path = llamacpp.convert(hf, tmp_path / "mxfp4.gguf")
    assert {r.qtype.name for r in open_gguf(path).layers[0].values() if r.name.endswith("exps.weight")} == {
        "MXFP4"
    }
    with torch.no_grad():
        want = _mxfp4_checkpoint_model(hf)(torch.tensor([PROMPT])).logits[0]
    for resident in (0, 3):
        got = _load(path, resident_layers=resident).logits(PROMPT)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)


def test_attention_sinks_and_window_equal_transformers_eager_attention():
    """attend() with per-head sinks on a sliding layer, against modeling_gpt_oss's eager attention."""
    from ollama_airllm.engine.attention import attend, visible
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    from tests.engine.test_gemma3 import _eager_module

    torch.manual_seed(0)
    T, pos, nh, nkv, hd = 3, 5, 4, 2, 16
    q, k, v = torch.randn(T, nh, hd), torch.randn(nkv, pos + T, hd), torch.randn(nkv, pos + T, hd)
    sinks = torch.randn(nh)
    mask = torch.zeros(T, pos + T).masked_fill(~visible(T, pos, 4, "cpu"), torch.finfo(torch.float32).min)
    want, _ = eager_attention_forward(
        _eager_module(nh, nkv, sinks),
        q.transpose(0, 1)[None],
        k[None],
        v[None],
        mask[None, None],
        scaling=0.25,
    )
    got = attend(q, k, v, visible(T, pos, 4, "cpu"), scale=0.25, sinks=sinks)
    torch.testing.assert_close(got, want[0], rtol=1e-5, atol=1e-6)


def _fuse_qkv(src, dst) -> None:
    """A copy of an F32 gpt-oss GGUF with each layer's q/k/v weights and biases fused into attn_qkv.*,
    as Ollama's converter writes OpenAI's original checkpoints (and llama.cpp reads them)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch="gpt-oss")
    for f in reader.fields.values():
        if f.name != "general.architecture" and not f.name.startswith("GGUF."):
            sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    for i in range(reader.fields["gpt-oss.block_count"].contents()):
        for part in ("weight", "bias"):
            qkv = [tensors.pop(f"blk.{i}.attn_{a}.{part}") for a in "qkv"]
            tensors[f"blk.{i}.attn_qkv.{part}"] = np.concatenate(qkv, axis=0)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_fused_qkv_as_ollama_writes_it(model, tmp_path):
    path = model[1]
    fused = tmp_path / "fused.gguf"
    _fuse_qkv(path, fused)
    assert "attn_qkv.weight" in open_gguf(fused).layers[0]
    torch.testing.assert_close(_load(fused).logits(PROMPT), _load(path).logits(PROMPT), rtol=1e-6, atol=1e-6)
