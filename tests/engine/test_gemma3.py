"""Dense Gemma 3 as llama.cpp's convert_hf_to_gguf writes it, against transformers' Gemma3ForCausalLM.

The tiny model (tinyarch) has 7 layers: 0-4 and 6 slide over a window of 4 positions with the local rope
(base 10000), layer 5 attends to everything with base 1e6 and linear scaling 8; embeddings are scaled by
sqrt(n_embd), norms are stored as 1 + w, the final logits are soft-capped at 3. Prompts are longer than
the window and are fed in chunks of 5, so chunks start inside a window.
"""

from __future__ import annotations

import subprocess
import sys

import gguf
import pytest
import torch
import transformers
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata
from ollama_airllm.devtools import llamacpp, tinyarch
from ollama_airllm.engine import Engine, EngineConfig, ModelFileError, SamplingParams
from ollama_airllm.engine.gguf_file import open_gguf

from tests.server.conftest import _required_tool

PROMPT = [5, 100, 200, 300, 17, 42, 7, 99, 12, 250, 31, 64]
GREEDY = dict(temperature=0.0, n_predict=24, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(HF dir, F32 GGUF by convert_hf_to_gguf)."""
    _required_tool("LLAMA_CONVERT_PY", "tests/setup.d/31-llama-convert.sh")
    d = tmp_path_factory.mktemp("gemma3")
    hf = tinyarch.make_hf_model(d / "hf", "gemma3")
    return hf, llamacpp.convert(hf, d / "gemma3-F32.gguf")


def _hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _load(path, **kw) -> Engine:
    return Engine.load(path, EngineConfig(device="cpu", n_ctx=kw.pop("n_ctx", 256), n_batch=5, **kw))


def _with_metadata(src, dst, new: dict, remove=()) -> None:
    """A copy of the GGUF `src` with metadata keys replaced/added (`new`) or removed."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch=reader.fields["general.architecture"].contents())
    copy_with_new_metadata(reader, writer, new, list(remove))


@pytest.mark.parametrize("resident", [0, 7])
def test_f32_logits_match_transformers(model, resident):
    hf, path = model
    with torch.no_grad():
        want = _hf(hf)(torch.tensor([PROMPT])).logits[0]
    torch.testing.assert_close(
        _load(path, resident_layers=resident).logits(PROMPT), want, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("graphs", [False, True])
def test_greedy_tokens_match_transformers(model, graphs):
    """Decoding through the KV cache, well past the window; also through the decode graphs' fixed-shape
    steps (run eagerly on the CPU), whose sliding layers mask the window at the device position."""
    hf, path = model
    with torch.no_grad():
        want = _hf(hf).generate(torch.tensor([PROMPT]), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    eng = _load(path, resident_layers=2, graphs=graphs)
    res = eng.generate(0, PROMPT, SamplingParams(**GREEDY))
    assert res.tokens == want[0, len(PROMPT) :].tolist()
    assert (eng.info.graphs.runs == [(0, 2), (7, 8)]) if graphs else eng.info.graphs is None


def test_layout_from_the_converters_metadata(model):
    spec = open_gguf(model[1]).spec
    lay = spec.layout
    assert [a.window for a in lay.layers] == [4, 4, 4, 4, 4, None, 4]
    assert {a.rope.theta for i, a in enumerate(lay.layers) if i != 5} == {10000.0}
    assert (lay.layers[5].rope.theta, lay.layers[5].rope.linear) == (1e6, 8.0)
    assert lay.layers[0].rope.linear == 1.0  # llama.cpp: rope_freq_scale_train_swa = 1
    assert (lay.q_scale, lay.final_softcap, lay.embed_scale) == (1 / 4, 3.0, 8.0)


def _pattern_file(model, tmp_path, value) -> str:
    out = str(tmp_path / "pattern.gguf")
    key = "gemma3.attention.sliding_window_pattern"
    if isinstance(value, list):
        new = {key: MetadataDetails(gguf.GGUFValueType.ARRAY, value, sub_type=gguf.GGUFValueType.BOOL)}
    else:
        new = {key: MetadataDetails(gguf.GGUFValueType.UINT32, value)}
    _with_metadata(model[1], out, new)
    return out


def test_sliding_window_pattern_key_sets_the_layers(model, tmp_path):
    """llama.cpp's load_swa_pattern: every n-th layer global, or one flag per layer."""
    every2 = open_gguf(_pattern_file(model, tmp_path, 2)).spec.layout.layers
    assert [a.window for a in every2] == [4, None, 4, None, 4, None, 4]
    flags = [True, False, False, True, True, True, False]
    listed = open_gguf(_pattern_file(model, tmp_path, flags)).spec.layout.layers
    assert [a.window is not None for a in listed] == flags


def test_bad_pattern_and_rope_scaling_are_one_line_errors(model, tmp_path):
    with pytest.raises(
        ModelFileError, match=r"sliding_window_pattern is an array \(3 values\); must be an array"
    ):
        open_gguf(_pattern_file(model, tmp_path, [True, False, True]))
    out = str(tmp_path / "longrope.gguf")
    scaling = MetadataDetails(gguf.GGUFValueType.STRING, "longrope")
    _with_metadata(model[1], out, {"gemma3.rope.scaling.type": scaling})
    with pytest.raises(
        ModelFileError, match=r"rope scaling 'longrope' is not supported \(supported: none, linear, yarn\)"
    ):
        open_gguf(out)
    out = str(tmp_path / "partial.gguf")
    _with_metadata(
        model[1], out, {"gemma3.rope.dimension_count": MetadataDetails(gguf.GGUFValueType.UINT32, 8)}
    )
    r = subprocess.run(
        [sys.executable, "-m", "ollama_airllm.engine", "info", "--device", "cpu", out],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "partial rotary embedding (rope.dimension_count=8, head dim 16) is not supported" in r.stderr


def _eager_module(n_head: int, n_kv: int, sinks=None):
    """The attributes transformers' eager_attention_forward reads from its attention module."""
    return type("M", (), {"num_key_value_groups": n_head // n_kv, "training": False, "sinks": sinks})()


def test_attention_softcap_and_window_equal_transformers_eager_attention():
    """attend() with a window and Gemma 2-style attention soft-capping, against modeling_gemma3's eager
    attention on the same mask: a chunk of 3 queries at positions 5..7 over 8 cached keys."""
    from ollama_airllm.engine.attention import attend, visible
    from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward

    torch.manual_seed(0)
    T, pos, nh, nkv, hd = 3, 5, 4, 2, 16
    q, k, v = torch.randn(T, nh, hd), torch.randn(nkv, pos + T, hd), torch.randn(nkv, pos + T, hd)
    mask = torch.zeros(T, pos + T).masked_fill(~visible(T, pos, 4, "cpu"), torch.finfo(torch.float32).min)
    want, _ = eager_attention_forward(
        _eager_module(nh, nkv),
        q.transpose(0, 1)[None],
        k[None],
        v[None],
        mask[None, None],
        scaling=0.3,
        softcap=2.0,
    )
    got = attend(q, k, v, visible(T, pos, 4, "cpu"), scale=0.3, softcap=2.0)
    torch.testing.assert_close(got, want[0], rtol=1e-5, atol=1e-6)
