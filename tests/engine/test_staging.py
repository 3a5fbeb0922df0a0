"""The CUDA staging pipeline's bookkeeping (slots, layout, prefetch order), run on the CPU.

No GPU exists here, so torch.cuda's Event/Stream are replaced by stand-ins that record the calls; the
slot logic, the 256-byte layout, the double buffering and the prefetch across passes are the real code.
What this cannot check is CUDA's own ordering; the events are placed so that a fill of a slot starts only
after the compute that used it was queued and finished (free), and compute waits for the copy (ready).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from ollama_airllm.engine import Engine, EngineConfig
from ollama_airllm.engine.gguf_file import open_gguf
from ollama_airllm.engine.model import Transformer
from ollama_airllm.engine.weights import WeightStore

PROMPT = [5, 100, 200, 300, 17, 42, 7, 99]


class _Event:
    def __init__(self) -> None:
        self.recorded = 0

    def record(self, stream=None) -> None:
        self.recorded += 1

    def synchronize(self) -> None:
        assert self.recorded, "waited on an event that was never recorded"


class _Stream:
    def __init__(self, *a, **k) -> None:
        self.waited: list[_Event] = []

    def wait_event(self, e: _Event) -> None:
        assert e.recorded, "compute waited for a copy that was never queued"
        self.waited.append(e)


@pytest.fixture
def fake_cuda(monkeypatch):
    compute = _Stream()
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: compute)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    return compute


@pytest.mark.parametrize("resident", [set(), {0, 2}])
def test_staged_pipeline_gives_the_same_logits(fake_cuda, tiny_gguf, resident):
    path = tiny_gguf("qwen2", "Q8_0", n_layers=4)
    want = Engine.load(path, EngineConfig(device="cpu", n_ctx=64, n_batch=3)).logits(PROMPT)
    model = open_gguf(path)
    store = WeightStore(model, torch.device("cpu"), torch.float32, resident, staged=True)
    fills: list[int] = []
    orig = store._fill

    def fill(slot, unit):
        fills.append(unit.index)
        orig(slot, unit)

    store._fill = fill
    tr = Transformer(model.spec, store, 64, 3)
    for _ in range(3):  # later passes reuse the prefetch queued by the head of the previous pass
        torch.testing.assert_close(tr.forward(None, PROMPT, 0, "all"), want, rtol=0, atol=0)
    store.close()
    streamed = [u for u in range(5) if u not in resident]
    assert len(store._slots) == 2
    assert fills[: len(streamed)] == streamed  # each streamed unit fetched in order ...
    assert fills == streamed * 3 + streamed[:1]  # ... once per pass, plus the next pass's first
    assert len(fake_cuda.waited) == 3 * len(streamed)  # compute waited for every staged copy
    for s in store._slots:
        assert all(a % 256 == 0 for a, _ in s.layout.values())
