"""HF checkpoint directories run through airllm 4.0.0 (its split + hooks), driven by the engine."""

from __future__ import annotations

import airllm.airllm_base
import torch
import transformers
from ollama_airllm.engine import Engine, EngineConfig, SamplingParams
from ollama_airllm.engine.hf_airllm import _no_clean_memory

PROMPT = [5, 100, 200, 300, 17, 42, 7, 99]


def test_airllm_path_matches_transformers(tiny_hf, tmp_path):
    hf = tiny_hf("qwen2")
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        want_logits = ref(torch.tensor([PROMPT])).logits[0]
        want_hidden = ref.model(torch.tensor([PROMPT])).last_hidden_state[0].mean(0)
        want = ref.generate(torch.tensor([PROMPT]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    eng = Engine.load(hf, EngineConfig(device="cpu", dtype="float32", n_ctx=128, hf_split_dir=str(tmp_path)))
    assert airllm.airllm_base.clean_memory is _no_clean_memory
    assert eng.info.backend == "airllm" and eng.info.n_layer == 2 and eng.info.n_streamed_layers == 2
    assert (tmp_path / "splitted_model").is_dir()
    torch.testing.assert_close(eng.logits(PROMPT), want_logits, rtol=1e-4, atol=1e-5)
    res = eng.generate(0, PROMPT, SamplingParams(temperature=0.0, n_predict=12, ignore_eos=True))
    assert res.tokens == want[0, len(PROMPT) :].tolist()
    # prefix reuse through the cropped DynamicCache gives the same continuation
    follow = PROMPT + res.tokens[:5]
    a = eng.generate(0, follow, SamplingParams(temperature=0.0, n_predict=6, ignore_eos=True))
    assert a.n_cached == len(follow) - 1
    assert a.tokens == res.tokens[5:11]
    torch.testing.assert_close(torch.tensor(eng.embed(PROMPT)), want_hidden, rtol=1e-4, atol=1e-5)
    assert eng.tokenizer.encode("hi <|im_end|>", add_special=False, parse_special=True)[-1] == 4
