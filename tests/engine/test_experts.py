"""Expert-aware streaming (issue 10): only the routed experts are read, sliced from the mapped file without
a copy; a prefill reads the union of its tokens' experts; resident experts and LRU cache hits read nothing;
fetch_all (airllm's way) reads every expert. Routing is checked against transformers' router outputs.
Staged (CUDA) experts are QWeights on the WeightStore's work buffer, which the budget sizes for them.
"""

from __future__ import annotations

import pytest
import torch
from ollama_airllm import kernels
from ollama_airllm.devtools import tinymoe
from ollama_airllm.engine import Engine, EngineConfig, SamplingParams
from ollama_airllm.engine.budget import NUMPY_TEMP_BYTES, needs
from ollama_airllm.engine.dequant import dequantize
from ollama_airllm.engine.experts import ExpertStore, build_expert_store, expert_bytes, plan_experts
from ollama_airllm.engine.gguf_file import open_gguf
from ollama_airllm.engine.linear import QWeight, linear
from ollama_airllm.engine.weights import WeightStore, build_units, chunk_rows

from tests.engine.test_moe import PROMPT, need_tools
from tests.engine.test_pipeline_weights import _inside
from tests.engine.test_staging import fake_cuda  # noqa: F401  (the stand-in CUDA events and streams)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    need_tools("LLAMA_CONVERT_PY")
    hf, files = tinymoe.build(tmp_path_factory.mktemp("experts"), "qwen3moe")
    return hf, files["F32"]


@pytest.fixture(scope="module")
def qwen_q8(qwen):
    """The same model quantized to Q8_0 (expert stacks in blocks) by llama-quantize."""
    need_tools("LLAMA_QUANTIZE_BIN")
    hf, _ = qwen
    return tinymoe.build(hf.parent, "qwen3moe", ("Q8_0",))[1]["Q8_0"]


def _experts(eng: Engine) -> ExpertStore:
    return eng.backend.transformer.experts


def _hf_union(hf_dir, tokens: list[int]) -> list[set[int]]:
    """Per layer, the experts transformers' router selects for any of `tokens` (one prefill)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model(torch.tensor([tokens]), output_router_logits=True)
    k = model.config.num_experts_per_tok
    return [set(torch.topk(r, k, dim=-1).indices.flatten().tolist()) for r in out.router_logits]


def test_expert_slice_is_a_view_of_the_mapped_file(qwen):
    hf, path = qwen
    from safetensors.torch import load_file

    model = open_gguf(path)
    store = ExpertStore(_weights(model), set())
    ex = store.fetch(1, [2])[2]
    assert model.is_file_view(ex.gate) and model.is_file_view(ex.down)
    w = load_file(hf / "model.safetensors")
    torch.testing.assert_close(ex.gate, w["model.layers.1.mlp.experts.2.gate_proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(ex.down, w["model.layers.1.mlp.experts.2.down_proj.weight"], rtol=0, atol=0)


def test_prefill_reads_the_union_of_its_tokens_experts(qwen):
    hf, path = qwen
    eng = Engine.load(path, EngineConfig(device="cpu", resident_layers=0, n_ctx=64))
    try:
        eng.logits(PROMPT)
        st = eng.info.experts
        union = _hf_union(hf, PROMPT)
        size = expert_bytes(eng.backend.model, 0)
        assert st.tokens == len(PROMPT)
        assert st.touched == sum(len(u) for u in union)
        assert st.bytes_read == st.touched * size and st.hits == 0
    finally:
        eng.close()


@pytest.mark.parametrize("resident", [0, 1, 2])
def test_decode_reads_only_the_top_k_experts_of_streamed_layers(qwen, resident):
    """Each decoded token reads k experts per streamed layer, nothing for resident ones (hits)."""
    _, path = qwen
    eng = Engine.load(path, EngineConfig(device="cpu", resident_layers=resident, n_ctx=64))
    try:
        st = eng.info.experts
        eng.generate(0, PROMPT[:3], SamplingParams(n_predict=1, temperature=0.0, ignore_eos=True))
        before = (st.tokens, st.bytes_read, st.touched, st.hits)
        eng.generate(0, PROMPT[:3], SamplingParams(n_predict=6, temperature=0.0, ignore_eos=True))
        tokens, read, touched, hits = (a - b for a, b in zip((st.tokens, st.bytes_read, st.touched, st.hits),
                                                             before, strict=True))  # fmt: skip
        size = expert_bytes(eng.backend.model, 0)
        assert st.resident_experts == resident * 4
        assert touched == 2 * 2 * tokens  # top-2 in each of 2 layers
        assert read == 2 * (2 - resident) * tokens * size
        assert hits == 2 * resident * tokens
        assert eng.info.experts.as_json()["cache_hit_rate"] == round(st.hit_rate, 4)
    finally:
        eng.close()


def test_lru_cache_hits_and_evicts_the_least_recently_used(qwen):
    _, path = qwen
    model = open_gguf(path)
    size = expert_bytes(model, 0)
    store = ExpertStore(_weights(model), set(), cache_bytes=2 * size)
    st = store.stats
    store.fetch(0, [0, 1])
    assert (st.bytes_read, st.hits) == (2 * size, 0)
    store.fetch(0, [0])  # hit; 1 is now the least recently used
    assert (st.bytes_read, st.hits) == (2 * size, 1)
    store.fetch(0, [2])  # evicts 1
    store.fetch(0, [0])
    assert (st.bytes_read, st.hits) == (3 * size, 2)
    store.fetch(0, [1])
    assert (st.bytes_read, st.hits) == (4 * size, 2)


def test_fetch_all_reads_every_expert_and_computes_the_same(qwen):
    _, path = qwen
    model = open_gguf(path)
    eng = Engine.load(path, EngineConfig(device="cpu", resident_layers=0, n_ctx=64))
    try:
        want = eng.logits(PROMPT[:1])
        routed = _experts(eng)
        all_store = ExpertStore(_weights(model), set(), fetch_all=True)
        eng.backend.transformer.experts = all_store
        torch.testing.assert_close(eng.logits(PROMPT[:1]), want, rtol=0, atol=0)
        assert all_store.stats.bytes_read == 2 * 4 * expert_bytes(model, 0)
        assert routed.stats.bytes_read == 2 * 2 * expert_bytes(model, 0)
    finally:
        eng.close()


def test_plan_puts_resident_layers_experts_first_then_caches_on_cuda(qwen):
    _, path = qwen
    model = open_gguf(path)
    layer = 4 * expert_bytes(model, 0)
    assert plan_experts(model, {0, 1}, 10 * layer, True, torch.float32) == ({0, 1}, 0)
    assert plan_experts(model, {0}, layer + 100, True, torch.float32) == ({0}, 100)
    assert plan_experts(model, {0}, 10 * layer, True, torch.float32) == ({0}, layer)  # at most layer 1's
    assert plan_experts(model, set(), 10 * layer, False, torch.float32) == (set(), 0)  # CPU: the file
    assert plan_experts(model, {0, 1}, layer, False, torch.float32) == ({0}, 0)  # F32 dense == raw


def test_memory_budget_left_after_the_layers_keeps_experts_resident(qwen):
    """load_gguf: what the budget has left after the resident layers goes to those layers' experts."""
    from ollama_airllm.engine.weights import build_units

    _, path = qwen
    model = open_gguf(path)
    units = sum(u.dense_bytes for u in build_units(model, torch.float32))
    one_layer = 4 * expert_bytes(model, 0)
    for budget, want in ((units, 0), (units + one_layer, 4), (units + 2 * one_layer, 8)):
        eng = Engine.load(path, EngineConfig(device="cpu", memory_budget=budget, n_ctx=64))
        try:
            assert (eng.info.n_resident_layers, eng.info.experts.resident_experts) == (2, want)
            assert eng.info.resident_bytes == units + want * expert_bytes(model, 0)
        finally:
            eng.close()


def test_expert_biases_are_sliced_per_expert(qwen, tmp_path):
    """gpt-oss-style ffn_*_exps.bias stacks [n_expert, n]: expert e gets row e (on the device, always)."""
    import numpy as np

    from tests.engine.test_damaged_gguf import _rewrite

    _, path = qwen
    rng = np.random.default_rng(0)
    biases = {
        "blk.0.ffn_gate_exps.bias": rng.standard_normal((4, 768)).astype(np.float32),
        "blk.0.ffn_up_exps.bias": rng.standard_normal((4, 768)).astype(np.float32),
        "blk.0.ffn_down_exps.bias": rng.standard_normal((4, 256)).astype(np.float32),
    }
    model = open_gguf(_rewrite(path, tmp_path / "biased.gguf", tensors=biases))
    ex = ExpertStore(_weights(model), set()).fetch(0, [3])[3]
    for name, got in (("gate", ex.gate_bias), ("up", ex.up_bias), ("down", ex.down_bias)):
        assert torch.equal(got, torch.from_numpy(biases[f"blk.0.ffn_{name}_exps.bias"][3]))


def test_the_work_buffer_is_as_wide_as_the_widest_expert_matrix(qwen):
    """ffn_down_exps' experts have n_ff_exp columns, more than any dense matrix has: the budget's work bytes
    and the WeightStore's buffer are sized by them."""
    _, path = qwen
    model = open_gguf(path)
    units = build_units(model, torch.float32)
    down = model.layers[0]["ffn_down_exps.weight"].shape[2]
    dense = max(r.shape[1] for u in units for r in u.refs.values() if len(r.shape) == 2)
    assert down == model.spec.moe.n_ff > max(dense, model.spec.n_embd)
    cfg = EngineConfig(device="cpu", n_ctx=64)
    assert needs(model.spec, units, cfg, 64, CPU, torch.float32, 0).work == (
        chunk_rows(CPU) * down * 4 + NUMPY_TEMP_BYTES
    )
    cuda = torch.device("cuda")  # sizes only: a torch.device("cuda") object needs no GPU
    assert needs(model.spec, units, cfg, 64, cuda, torch.bfloat16, 0).work == chunk_rows(cuda) * down * 2
    store = WeightStore(model, CPU, torch.float32, set())
    assert store.work_bytes() == chunk_rows(CPU) * down * 4
    store.close()


def test_staged_expert_qweights_use_the_weight_stores_work_buffer(fake_cuda, qwen_q8):  # noqa: F811
    """Resident and streamed experts alike: a prefill through one dequantizes into the shared buffer (no
    buffer of its own per call), even for the widest expert matrix."""
    model = open_gguf(qwen_q8)
    weights = WeightStore(model, CPU, torch.float32, {0}, staged=True)
    experts = build_expert_store(model, weights, 10**9)  # layer 0's experts resident, layer 1's cached
    assert experts.stats.resident_experts == 4 and experts.stats.cache_bytes > 0
    buf, gen = weights._work, torch.Generator().manual_seed(0)
    for layer in (0, 1):
        ex = experts.fetch(layer, [1])[1]
        for w in (ex.gate, ex.up, ex.down):
            assert isinstance(w, QWeight) and w.backend == "numpy"
            assert w.work.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
            assert _inside(w.work, buf) and w.work.shape == (chunk_rows(CPU), w.shape[1])
        assert model.is_file_view(ex.down.raw) == (layer == 1)  # resident experts are copies
        x = torch.randn(kernels.GEMV_MAX_TOKENS + 8, ex.down.shape[1], generator=gen)
        dense = dequantize(ex.down.raw.reshape(-1), ex.down.qtype, ex.down.shape)
        torch.testing.assert_close(linear(x, ex.down), x @ dense.T)
    experts.close()
    weights.close()


def _weights(model) -> WeightStore:
    """A CPU WeightStore with nothing resident: what a stand-alone ExpertStore hangs off."""
    return WeightStore(model, CPU, torch.float32, set())
