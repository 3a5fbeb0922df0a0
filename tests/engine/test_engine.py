"""The GGUF streaming engine vs transformers: logits, greedy tokens, residency, prefix reuse, generation."""

from __future__ import annotations

import threading

import gguf
import pytest
import torch
import transformers
from ollama_airllm.devtools import tinymodel
from ollama_airllm.engine import ContextLengthError, Engine, EngineConfig, SamplingParams

PROMPT = [5, 100, 200, 300, 17, 42, 7, 99, 12, 250, 31, 64]
GREEDY = dict(temperature=0.0, n_predict=32, ignore_eos=True)


def _hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _load(path, **kw) -> Engine:
    return Engine.load(
        path, EngineConfig(device="cpu", n_ctx=kw.pop("n_ctx", 256), n_batch=kw.pop("n_batch", 5), **kw)
    )


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_f32_logits_match_transformers(tiny_hf, tiny_gguf, arch):
    """Everything streamed, prompt split in chunks of 5: logits equal transformers' full-model logits."""
    with torch.no_grad():
        want = _hf(tiny_hf(arch)).forward(torch.tensor([PROMPT])).logits[0]
    eng = _load(tiny_gguf(arch, "F32"), resident_layers=0)
    torch.testing.assert_close(eng.logits(PROMPT), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "qtype"),
    [
        ("llama", "F16"),
        ("qwen2", "BF16"),
        ("llama", "Q8_0"),
        ("qwen3", "Q4_0"),
        ("llama", "Q4_K"),
        ("qwen2", "Q5_K"),
        ("qwen3", "Q6_K"),
    ],
)
def test_quantized_logits_match_reference(tiny_gguf, arch, qtype):
    """Reference: transformers on gguf.quants' numpy dequantization of the same blocks."""
    path = tiny_gguf(arch, qtype)
    with torch.no_grad():
        want = tinymodel.reference_model(path)(torch.tensor([PROMPT])).logits[0]
    torch.testing.assert_close(_load(path, resident_layers=1).logits(PROMPT), want, rtol=1e-4, atol=1e-5)


def test_tied_embeddings_use_token_embd_as_head(tiny_hf, tiny_gguf):
    with torch.no_grad():
        want = _hf(tiny_hf("qwen3", tie_embeddings=True)).forward(torch.tensor([PROMPT])).logits[0]
    eng = _load(tiny_gguf("qwen3", "F32", tie_embeddings=True), resident_layers=0)
    torch.testing.assert_close(eng.logits(PROMPT), want, rtol=1e-4, atol=1e-5)


def test_llama3_rope_frequency_factors(tiny_hf, tiny_gguf):
    """Llama 3.1-style rope scaling: GGUF's rope_freqs.weight divides the rotary frequencies."""
    rope = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    prompt = PROMPT * 6  # long enough for the scaled low frequencies to matter
    with torch.no_grad():
        want = _hf(tiny_hf("llama", llama3_rope=rope)).forward(torch.tensor([prompt])).logits[0]
    eng = _load(tiny_gguf("llama", "F32", llama3_rope=rope))
    torch.testing.assert_close(eng.logits(prompt), want, rtol=1e-4, atol=1e-5)


def test_greedy_32_tokens_match_transformers(tiny_hf, tiny_gguf):
    hf = _hf(tiny_hf("llama", n_layers=4))
    with torch.no_grad():
        want = hf.generate(torch.tensor([PROMPT]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    eng = _load(tiny_gguf("llama", "F32", n_layers=4), resident_layers=0)
    res = eng.generate(0, PROMPT, SamplingParams(**GREEDY))
    assert res.tokens == want[0, len(PROMPT) :].tolist()
    assert res.stop_reason == "limit" and res.n_prompt == len(PROMPT) and res.n_cached == 0


@pytest.fixture(scope="module")
def q8_path(tiny_gguf):
    return tiny_gguf("llama", "Q8_0", n_layers=4)


def test_residency_and_prefix_reuse_do_not_change_outputs(q8_path):
    sampled = dict(temperature=0.9, top_k=50, top_p=0.95, min_p=0.0, seed=11, n_predict=12, ignore_eos=True)
    runs = {}
    for frac, n_resident in ((0.0, 0), (0.5, 2), (1.0, 4)):
        eng = _load(q8_path, resident_fraction=frac)
        assert eng.info.n_resident_layers == n_resident
        a = eng.generate(0, PROMPT, SamplingParams(**GREEDY))
        # continue the same conversation: the cached prefix is reused
        follow = PROMPT + a.tokens[:20] + [33, 44]
        b = eng.generate(0, follow, SamplingParams(**sampled))
        assert b.n_cached == len(PROMPT) + 20 and b.n_prompt == 2
        eng.clear_slot(0)
        c = eng.generate(0, follow, SamplingParams(**sampled))
        assert c.n_cached == 0
        runs[frac] = (eng.logits(PROMPT), a.tokens, b.tokens, c.tokens)
        assert b.tokens == c.tokens
    base = runs[0.0]
    for frac in (0.5, 1.0):
        assert torch.equal(runs[frac][0], base[0])
        assert runs[frac][1:] == base[1:]


def test_identical_prompt_recomputes_last_token(q8_path):
    eng = _load(q8_path)
    a = eng.generate(0, PROMPT, SamplingParams(**{**GREEDY, "n_predict": 4}))
    b = eng.generate(0, PROMPT, SamplingParams(**{**GREEDY, "n_predict": 4}))
    assert b.n_cached == len(PROMPT) - 1 and b.n_prompt == 1
    assert a.tokens == b.tokens


def test_stop_strings_callbacks_and_limits(q8_path):
    eng = _load(q8_path)
    full = eng.generate(0, PROMPT, SamplingParams(**GREEDY))
    text = full.text
    assert len(text) > 10
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    pieces = []
    res = eng.generate(
        0,
        PROMPT,
        SamplingParams(**{**GREEDY, "stop": [stop]}),
        on_token=lambda t, piece, p: pieces.append((t, piece)),
    )
    assert res.stop_reason == "word" and res.stopping_word == stop
    assert res.text == text[: text.index(stop)]
    assert "".join(p for _, p in pieces) == res.text
    assert all(stop not in p for _, p in pieces)
    assert [t for t, _ in pieces] == res.tokens

    res = eng.generate(0, PROMPT, SamplingParams(**{**GREEDY, "n_predict": 3, "n_probs": 4}))
    assert res.stop_reason == "limit" and len(res.tokens) == 3 and len(res.probs) == 3
    assert res.probs[0].top[0][0] == res.tokens[0] and len(res.probs[0].top) == 4


def test_context_limit_and_bad_prompts(q8_path):
    eng = _load(q8_path, n_ctx=20)
    res = eng.generate(0, PROMPT, SamplingParams(**{**GREEDY, "n_predict": -1}))
    assert res.stop_reason == "context"
    assert len(PROMPT) + len(res.tokens) == 20
    with pytest.raises(ContextLengthError):
        eng.generate(0, list(range(20)), SamplingParams(**GREEDY))
    with pytest.raises(ValueError, match="empty"):
        eng.generate(0, [], SamplingParams(**GREEDY))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.generate(0, [1, 99999], SamplingParams(**GREEDY))


def test_cancellation_between_layers_keeps_the_slot_consistent(q8_path):
    eng = _load(q8_path)
    state = {"tokens": 0, "checks": 0}

    def on_token(tok, piece, probs):
        state["tokens"] += 1

    def should_stop():  # after 2 tokens: once between tokens, then inside the next pass after one layer
        if state["tokens"] >= 2:
            state["checks"] += 1
        return state["checks"] > 2

    res = eng.generate(0, PROMPT, SamplingParams(**GREEDY), on_token=on_token, should_stop=should_stop)
    assert res.stop_reason == "cancelled" and len(res.tokens) == 2
    assert eng.slot_tokens(0) == PROMPT + res.tokens[:1]  # the cancelled pass did not count
    again = eng.generate(0, PROMPT, SamplingParams(**{**GREEDY, "n_predict": 6}))
    eng.clear_slot(0)
    fresh = eng.generate(0, PROMPT, SamplingParams(**{**GREEDY, "n_predict": 6}))
    assert again.tokens == fresh.tokens


class _OnlyEvenTokens:
    """A constraint: only even token ids, and done after 5 tokens."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def apply(self, logits: torch.Tensor) -> None:
        logits[1::2] = float("-inf")

    def accept(self, token: int) -> None:
        self.seen.append(token)

    def is_terminated(self) -> bool:
        return len(self.seen) >= 5


def test_constraint_masks_and_terminates(q8_path):
    eng = _load(q8_path)
    c = _OnlyEvenTokens()
    res = eng.generate(0, PROMPT, SamplingParams(temperature=1.0, seed=3, n_predict=20), constraint=c)
    assert res.tokens == c.seen and len(res.tokens) == 5 and res.stop_reason == "eos"
    assert all(t % 2 == 0 for t in res.tokens)


def test_slots_are_independent_under_threads(q8_path):
    prompts = [PROMPT, PROMPT[::-1]]
    eng = _load(q8_path, n_slots=2)
    want = [
        eng.generate(i, p, SamplingParams(**{**GREEDY, "n_predict": 10})).tokens
        for i, p in enumerate(prompts)
    ]
    for i in range(2):
        eng.clear_slot(i)
    got = [None, None]

    def work(i):
        got[i] = eng.generate(i, prompts[i], SamplingParams(**{**GREEDY, "n_predict": 10})).tokens

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


def test_embed_is_mean_of_final_normed_hidden_state(tiny_hf, tiny_gguf):
    with torch.no_grad():
        hidden = _hf(tiny_hf("qwen2")).model(torch.tensor([PROMPT])).last_hidden_state[0]
    emb = _load(tiny_gguf("qwen2", "F32")).embed(PROMPT)
    torch.testing.assert_close(torch.tensor(emb), hidden.mean(0), rtol=1e-4, atol=1e-5)


def test_tokenizer_matches_hf_and_info(tiny_hf_llama, tiny_gguf):
    hf_tok = transformers.AutoTokenizer.from_pretrained(tiny_hf_llama)
    path = tiny_gguf("llama", "F32")
    eng = _load(path, resident_layers=1)
    tok = eng.tokenizer
    texts = [
        "Hello world! def add(a, b):\n    return a + b",
        "  spaces\tand\nnewlines  ",
        "émoji 🙂 ok",
        "<|im_start|>user\nhi<|im_end|>\n<think>x</think>",
    ]
    for t in texts:
        assert tok.encode(t, add_special=False, parse_special=True) == hf_tok.encode(
            t, add_special_tokens=False
        )
        assert tok.decode(tok.encode(t, add_special=False, parse_special=True), special=True) == t
    plain = tok.encode("<|im_start|>", add_special=False, parse_special=False)
    assert plain != [3] and tok.decode(plain) == "<|im_start|>"
    assert tok.encode("<think>", add_special=False, parse_special=False) == [
        508
    ]  # user-defined: always parsed
    assert tok.token_to_piece(4) == b"" and tok.token_to_piece(4, special=True) == b"<|im_end|>"
    assert tok.bos_id == 1 and tok.eos_id == 2 and tok.eog_ids == {2, 4} and not tok.add_bos
    i = eng.info
    assert (i.architecture, i.n_layer, i.n_vocab, i.n_ctx, i.n_resident_layers, i.n_streamed_layers) == (
        "llama",
        2,
        512,
        256,
        1,
        1,
    )
    # sizes against gguf's tensor table: layer 1 streams, layer 0 and the head stay (F32 copies on the CPU)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    layer1 = sum(t.n_bytes for name, t in tensors.items() if name.startswith("blk.1."))
    kept = [t for name, t in tensors.items() if name.startswith("blk.0.") or name.startswith("output")]
    assert i.head_resident and i.streamed_bytes_per_pass == layer1
    assert i.host_bytes == layer1 + tensors["token_embd.weight"].n_bytes
    assert i.resident_bytes == sum(4 * int(t.n_elements) for t in kept)
    assert "<|im_start|>" in i.chat_template and i.file_type == "ALL_F32"


def test_device_choice(monkeypatch, tiny_gguf):
    from ollama_airllm.engine.config import resolve_device

    monkeypatch.setenv("OLLAMA_AIRLLM_DEVICE", "cpu")
    assert Engine.load(tiny_gguf("llama", "F32"), EngineConfig(device="cuda:3")).info.device == "cpu"
    monkeypatch.setenv("OLLAMA_AIRLLM_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"not supported|not valid"):
        resolve_device("auto")
    monkeypatch.delenv("OLLAMA_AIRLLM_DEVICE")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_long_prompts_split_into_sweeps(monkeypatch, q8_path):
    from ollama_airllm.engine import engine as engine_mod

    eng = _load(q8_path)
    want = eng.generate(0, PROMPT, SamplingParams(**{**GREEDY, "n_predict": 6}))
    eng.clear_slot(0)
    monkeypatch.setattr(engine_mod, "SWEEP_TOKENS", 5)
    got = eng.generate(0, PROMPT, SamplingParams(**{**GREEDY, "n_predict": 6}))
    assert got.tokens == want.tokens and got.n_prompt == len(PROMPT)
