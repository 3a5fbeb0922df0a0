"""The CUDA staging pipeline's bookkeeping (slots, alignment, prefetch order), run on the CPU.

No GPU exists here, so torch.cuda's Event/Stream are replaced by stand-ins that log every record, wait
and synchronize in order; the slot logic, the 256-byte layout, the double buffering and the prefetch
across passes are the real code. The log shows the ordering CUDA would enforce: a slot is refilled only
after the compute that last used it recorded `free` and the fill synchronized on it, and compute waits
for the copy (`ready`). A pipeline that skips the `free` wait is caught (test_refill_check_...).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time

import pytest
import torch
from ollama_airllm.engine import Engine, EngineConfig
from ollama_airllm.engine.gguf_file import open_gguf
from ollama_airllm.engine.linear import QWeight
from ollama_airllm.engine.model import Transformer
from ollama_airllm.engine.weights import WeightReadError, WeightStore

PROMPT = [5, 100, 200, 300, 17, 42, 7, 99]


LOG: list[tuple[str, object]] = []  # ("record" | "sync" | "wait", event) and ("copy", None), in order


class _Event:
    def __init__(self, blocking: bool = False) -> None:
        self.recorded = 0
        self.blocking = blocking  # CUDA: a non-blocking event's synchronize() spins a core

    def record(self, stream=None) -> None:
        self.recorded += 1
        LOG.append(("record", self))

    def synchronize(self) -> None:
        LOG.append(("sync", self))


class _Stream:
    def __init__(self, *a, **k) -> None:
        self.waited: list[_Event] = []

    def synchronize(self) -> None:
        LOG.append(("stream-sync", self))

    def wait_event(self, e: _Event) -> None:
        assert e.recorded, "compute waited for a copy that was never queued"
        self.waited.append(e)
        LOG.append(("wait", e))


@contextlib.contextmanager
def _copy_stream(stream):
    LOG.append(("copy", None))  # the fill's copies into the slot start here
    yield


@pytest.fixture
def fake_cuda(monkeypatch):
    LOG.clear()
    compute = _Stream()
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: compute)
    monkeypatch.setattr(torch.cuda, "stream", _copy_stream)
    return compute


def refill_violations(slots) -> list[str]:
    """Fills of a slot that did not wait for its `free` event, recorded after compute last used the slot.

    A fill's copies start at a ("copy", None) entry and end with the record of the slot's `ready` event.
    Before the copies: since compute last waited on `ready` (its last use of the slot), `free` must have
    been recorded (compute queued all its work) and then synchronized (that work finished).
    """
    by_ready = {id(s.ready): s for s in slots}
    bad = []
    for c, (kind, _) in enumerate(LOG):
        if kind != "copy":
            continue
        ready = next(e for k, e in LOG[c:] if k == "record" and id(e) in by_ready)
        free = by_ready[id(ready)].free
        before = LOG[:c]
        last_use = max((i for i, (k, e) in enumerate(before) if k == "wait" and e is ready), default=-1)
        recorded = [i for i, (k, e) in enumerate(before) if k == "record" and e is free and i > last_use]
        synced = [i for i, (k, e) in enumerate(before) if k == "sync" and e is free]
        if not recorded or not synced or synced[-1] < recorded[0]:
            bad.append(f"fill at log entry {c} did not wait for the slot's free event")
    return bad


def _run_passes(path, resident, store_cls=WeightStore, passes=3):
    model = open_gguf(path)
    store = store_cls(model, torch.device("cpu"), torch.float32, resident, staged=True)
    fills: list[int] = []
    orig = store._fill

    def fill(slot, unit):
        fills.append(unit.index)
        orig(slot, unit)

    store._fill = fill
    tr = Transformer(model.spec, store, 64, 3)
    outs = [tr.forward(None, PROMPT, 0, "all") for _ in range(passes)]
    slots = store._staging
    store.close()
    return store, slots, fills, outs


@pytest.mark.parametrize("resident", [set(), {0, 2}])
def test_staged_pipeline_gives_the_same_logits(fake_cuda, tiny_gguf, resident):
    path = tiny_gguf("qwen2", "Q8_0", n_layers=4)
    want = Engine.load(path, EngineConfig(device="cpu", n_ctx=64, n_batch=3)).logits(PROMPT)
    # later passes reuse the prefetch queued by the head of the previous pass
    _, slots, fills, outs = _run_passes(path, resident)
    for out in outs:
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    streamed = [u for u in range(5) if u not in resident]
    assert len(slots) == 2
    assert fills[: len(streamed)] == streamed  # each streamed unit fetched in order ...
    assert fills == streamed * 3 + streamed[:1]  # ... once per pass, plus the next pass's first
    assert len(fake_cuda.waited) == 3 * len(streamed)  # compute waited for every staged copy
    for s in slots:  # each tensor of a slot starts at a multiple of 256 bytes into it
        offsets = [w.raw.data_ptr() - s.dev.data_ptr() for w in s.weights.values() if isinstance(w, QWeight)]
        assert offsets and all(a % 256 == 0 for a in offsets)
    assert refill_violations(slots) == []  # no slot was refilled before its free event


class _NoFreeWait(WeightStore):
    """A broken pipeline: fills a slot without waiting for the compute that last used it."""

    def _fill(self, s, u):
        free, s.free = s.free, _Event()  # the fill synchronizes a fresh event, not the slot's own
        try:
            super()._fill(s, u)
        finally:
            s.free = free


def test_refill_check_catches_a_missing_free_wait(fake_cuda, tiny_gguf):
    _, slots, _, _ = _run_passes(tiny_gguf("qwen2", "Q8_0", n_layers=4), set(), _NoFreeWait, passes=1)
    assert refill_violations(slots)


def _matrix_bytes(store, unit: int) -> int:
    return sum(r.nbytes for r in store.units[unit].refs.values() if len(r.shape) == 2)


def test_streamed_bytes_count_the_copies_made(fake_cuda, tiny_gguf):
    store, _, fills, _ = _run_passes(tiny_gguf("qwen2", "Q8_0", n_layers=4), {0, 2})
    assert fills[-1] == fills[0]  # the next pass's first unit was copied, though never used
    assert store.streamed_bytes == sum(_matrix_bytes(store, u) for u in fills)


def test_events_block_instead_of_spinning(fake_cuda, tiny_gguf):
    _, slots, _, _ = _run_passes(tiny_gguf("qwen2", "Q8_0", n_layers=4), set(), passes=1)
    assert slots and all(s.ready.blocking and s.free.blocking for s in slots)


class _SlowFill(WeightStore):
    """A fill still running when close() is called."""

    finished: list[int]

    def _fill(self, s, u):
        time.sleep(0.2)
        super()._fill(s, u)
        self.finished.append(u.index)


def test_close_waits_for_fills_and_copies_in_flight(fake_cuda, tiny_gguf):
    model = open_gguf(tiny_gguf("qwen2", "Q8_0", n_layers=4))
    store = _SlowFill(model, torch.device("cpu"), torch.float32, set(), staged=True)
    store.finished = []
    store.prefetch(1)
    store.close()
    assert store.finished == [1]  # the fill ran to its end before close() returned ...
    last_copy = max(i for i, (k, _) in enumerate(LOG) if k == "copy")
    syncs = [i for i, (k, s) in enumerate(LOG) if k == "stream-sync" and s is store._copy_stream]
    assert syncs and syncs[-1] > last_copy  # ... and the copy stream was drained after its copies


def _flaky_reads(model, fail: dict[int, int]):
    """model.raw raises OSError in the prefetch worker for the first fail[layer] reads of that layer."""
    orig = model.raw
    starts = {r.offset: i for i, refs in enumerate(model.layers) for r in refs.values()}

    def raw(ref):
        layer = starts.get(ref.offset)
        if threading.current_thread().name.startswith("oar-prefetch") and fail.get(layer, 0) > 0:
            fail[layer] -= 1
            raise OSError(5, "Input/output error")
        return orig(ref)

    model.raw = raw


def test_a_failed_fill_is_retried_once(fake_cuda, tiny_gguf):
    path = tiny_gguf("qwen2", "Q8_0", n_layers=4)
    want = Engine.load(path, EngineConfig(device="cpu", n_ctx=64, n_batch=3)).logits(PROMPT)
    model = open_gguf(path)
    fail = {2: 1}
    _flaky_reads(model, fail)
    store = WeightStore(model, torch.device("cpu"), torch.float32, set(), staged=True)
    out = Transformer(model.spec, store, 64, 3).forward(None, PROMPT, 0, "all")
    store.close()
    assert fail == {2: 0}
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_a_fill_that_fails_twice_fails_the_request_clearly(fake_cuda, tiny_gguf):
    path = tiny_gguf("qwen2", "Q8_0", n_layers=4)
    model = open_gguf(path)
    fail = {1: 2}
    _flaky_reads(model, fail)
    store = WeightStore(model, torch.device("cpu"), torch.float32, set(), staged=True)
    tr = Transformer(model.spec, store, 64, 3)
    msg = re.escape(f"cannot read the weights of layer 1 from {path} (tried twice): OSError: [Errno 5] ")
    with pytest.raises(WeightReadError, match=msg):
        tr.forward(None, PROMPT, 0, "all")
    store.done(1)
    assert fail == {1: 0}
    want = tr.forward(None, PROMPT, 0, "all")  # the read works again: so does the next request
    store.close()
    ref = Engine.load(path, EngineConfig(device="cpu", n_ctx=64, n_batch=3)).logits(PROMPT)
    torch.testing.assert_close(want, ref, rtol=0, atol=0)
