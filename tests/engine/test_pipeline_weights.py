"""What the WeightStore hands out: matrices in their GGUF blocks (QWeight) where that bounds memory, dense
tensors where that is fast; norms and biases always dense."""

from __future__ import annotations

import torch
from ollama_airllm.engine.gguf_file import open_gguf
from ollama_airllm.engine.linear import QWeight
from ollama_airllm.engine.weights import WeightStore

from tests.engine.test_staging import fake_cuda  # noqa: F401  (the stand-in CUDA events and streams)

CPU = torch.device("cpu")


def _inside(t: torch.Tensor, buf: torch.Tensor) -> bool:
    return buf.data_ptr() <= t.data_ptr() < buf.data_ptr() + buf.numel() * buf.element_size()


def test_staged_units_are_blocks_on_the_device(fake_cuda, tiny_gguf):  # noqa: F811
    model = open_gguf(tiny_gguf("qwen2", "Q8_0", n_layers=4))
    store = WeightStore(model, CPU, torch.float32, {0, 4}, staged=True)
    resident, streamed = store.get(0), store.get(1)
    for w in (resident, streamed):
        assert isinstance(w["attn_q.weight"], QWeight) and w["attn_q.weight"].backend == "numpy"
        assert isinstance(w["attn_norm.weight"], torch.Tensor) and isinstance(w["attn_q.bias"], torch.Tensor)
    q = resident["attn_q.weight"]
    assert not model.is_file_view(q.raw) and q.raw.shape == (q.shape[0], q.shape[1] // 32 * 34)
    slot = next(s for s in store._staging if s.unit == 1)
    assert all(_inside(w.raw, slot.dev) for w in streamed.values() if isinstance(w, QWeight))
    assert store.get(1) is streamed  # no per-use rebuild of the hand-out
    store.close()


def test_cpu_units_are_dense_when_resident_and_mapped_blocks_when_streamed(tiny_gguf):
    model = open_gguf(tiny_gguf("llama", "Q4_K", n_layers=2))
    store = WeightStore(model, CPU, torch.float32, {0})
    resident, streamed = store.get(0), store.get(1)
    assert all(isinstance(w, torch.Tensor) for w in resident.values())  # dequantized once
    assert all(isinstance(streamed[k], QWeight) for k in ("attn_q.weight", "ffn_down.weight"))
    assert model.is_file_view(streamed["ffn_down.weight"].raw)  # in place, in the mapped file
    assert isinstance(streamed["ffn_norm.weight"], torch.Tensor)
    assert store.get(1) is streamed and store.get(0) is resident
    store.close()
    f32 = open_gguf(tiny_gguf("llama", "F32", n_layers=2))
    store = WeightStore(f32, CPU, torch.float32, set())
    assert f32.is_file_view(store.get(1)["ffn_down.weight"])  # F32 streams as a zero-copy view
    store.close()


def test_resident_q6_k_blocks_are_padded_to_16_bytes_and_multiply_the_same(fake_cuda, tiny_gguf):  # noqa: F811
    """A resident Q6_K matrix on the device takes 224 bytes a block (16-byte aligned, for the GEMV's loads),
    the budget counts those bytes, and its products equal the streamed (file-layout) copy's."""
    from ollama_airllm.engine.budget import resident_cost
    from ollama_airllm.engine.linear import linear

    model = open_gguf(tiny_gguf("qwen3", "Q6_K", n_layers=2))
    store = WeightStore(model, CPU, torch.float32, {0}, staged=True)
    resident, streamed = store.get(0), store.get(1)
    q = resident["ffn_down.weight"]
    nb = q.shape[1] // 256
    assert (q.stride, q.raw.shape) == (224, (q.shape[0], nb * 224))
    assert streamed["ffn_down.weight"].stride is None
    unit = store.units[0]
    ref = model.layers[0]["ffn_down.weight"]
    assert unit.device_bytes - unit.raw_bytes >= ref.nbytes // 210 * 14  # the padding is in the cost
    assert resident_cost(torch.device("cuda"))(unit) == unit.device_bytes
    x = torch.randn(20, q.shape[1], generator=torch.Generator().manual_seed(0))
    padded, plain = linear(x, q), linear(x, store.qweight(model.raw(ref), ref.qtype, ref.shape))
    torch.testing.assert_close(padded, plain, rtol=0, atol=0)
    store.close()
