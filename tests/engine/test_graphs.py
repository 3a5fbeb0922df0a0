"""Decode graphs: the fixed-shape step they capture equals the eager decode, and is fit to be captured.

Capture needs a GPU. What it records is graphs.DecodeGraphs._units on attention.Fixed; here that step runs
eagerly on the CPU (EngineConfig(graphs=True)). A replay is correct only if (1) the step computes what the
eager path computes, at every position of its bucket, and (2) it launches the same operations on the same
shapes whatever the position, none of which reads a device value back to the host. (1) is checked on
logits and greedy tokens; (2) on the aten operations the step dispatches, recorded at two positions.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from ollama_airllm.engine import Engine, EngineConfig, SamplingParams
from ollama_airllm.engine.graphs import BUCKET_STEP, FIRST_BUCKET, _Step, bucket, resident_runs
from torch.utils._python_dispatch import TorchDispatchMode

PROMPT = [5, 100, 200, 300, 17, 42, 7, 99, 12, 250, 31, 64]
GREEDY = dict(temperature=0.0, n_predict=24, ignore_eos=True)
# aten operations that hand a device value to the host (a sync, which capture forbids) or whose output
# shape depends on the data
HOST_READS = {"_local_scalar_dense", "item", "nonzero", "unique", "_unique2", "masked_select", "is_nonzero",
              "equal", "allclose"}  # fmt: skip


def _load(path, **kw) -> Engine:
    return Engine.load(path, EngineConfig(device="cpu", n_batch=kw.pop("n_batch", 5), **kw))


@given(n=st.integers(1, 200_000), n_ctx=st.integers(1, 200_000))
def test_a_bucket_holds_the_step_and_wastes_little(n, n_ctx):
    n = min(n, n_ctx)
    b = bucket(n, n_ctx)
    assert n <= b <= n_ctx
    assert b == n_ctx or b <= max(FIRST_BUCKET, 2 * n, n + BUCKET_STEP - 1)
    assert b == n_ctx or b in (FIRST_BUCKET << k for k in range(5)) or b % BUCKET_STEP == 0


def test_runs_are_the_consecutive_resident_dense_units():
    assert resident_runs(4, {0, 1, 2, 3, 4}, set()) == {0: 5}
    assert resident_runs(4, {0, 1, 4}, set()) == {0: 2, 4: 5}
    assert resident_runs(4, {0, 1, 2, 3}, {2}) == {0: 2, 3: 4}
    assert resident_runs(4, set(), set()) == {}


@pytest.mark.parametrize(("arch", "resident"), [("llama", None), ("qwen3", 1), ("qwen2", 0)])
def test_fixed_steps_decode_like_the_eager_path(tiny_gguf, arch, resident):
    """Greedy tokens and one step's logits agree: everything resident (one run with the head), one layer
    resident (a run, then a streamed layer, then the head alone) and nothing resident (no runs)."""
    path = tiny_gguf(arch, "F32", n_layers=3)
    eager = _load(path, n_ctx=64, resident_layers=resident, graphs=False)
    fixed = _load(path, n_ctx=64, resident_layers=resident, graphs=True)
    runs = {None: [(0, 4)], 1: [(0, 1), (3, 4)], 0: []}[resident]
    assert fixed.info.graphs.runs == runs and eager.info.graphs is None
    want = eager.generate(0, PROMPT, SamplingParams(**GREEDY))
    got = fixed.generate(0, PROMPT, SamplingParams(**GREEDY))
    assert got.tokens == want.tokens
    steps = GREEDY["n_predict"] - 1  # the first token comes from the prompt's pass
    assert fixed.info.graphs.captured == 0  # the CPU records nothing
    assert fixed.info.graphs.replayed == (steps - 1) * len(runs)  # each run's first step makes its buffers
    seq = PROMPT + want.tokens
    torch.testing.assert_close(_step_logits(fixed, seq), _step_logits(eager, seq), rtol=1e-5, atol=1e-5)


def test_buckets_and_slots_each_get_their_own_step(tiny_gguf):
    """A decode that crosses the first bucket (256 rows) and two slots taking turns: each (slot, bucket)
    has its own step, and the tokens are the eager path's."""
    path = tiny_gguf("llama", "F32", n_layers=2)
    prompt = [(7 * i + 3) % 500 for i in range(FIRST_BUCKET - 6)]
    params = SamplingParams(**{**GREEDY, "n_predict": 12})
    eager = _load(path, n_ctx=512, n_slots=2, graphs=False, n_batch=64)
    fixed = _load(path, n_ctx=512, n_slots=2, graphs=True, n_batch=64)
    for slot, p in ((0, prompt), (1, prompt[3:]), (0, [*prompt, 9])):
        assert fixed.generate(slot, p, params).tokens == eager.generate(slot, p, params).tokens
    assert len(fixed.backend.transformer.graphs._steps) == 4  # slots 0 and 1, buckets 256 and 512


def test_a_step_dispatches_the_same_operations_at_every_position_of_its_bucket(tiny_gguf):
    """What a replay needs: the same aten operations on the same shapes, strides and constant arguments at
    positions 3 and 40 of the 64-row bucket, and none that reads a device value on the host."""
    eng = _load(tiny_gguf("qwen3", "F32", n_layers=2), n_ctx=64, graphs=True)
    graphs = eng.backend.transformer.graphs
    cache = eng.backend.new_cache(64)
    x = torch.randn(1, eng.info.n_embd)
    ops = {}
    for p in (3, 40):
        with _Dispatched() as rec:
            graphs._units(0, _Step(x.clone(), torch.tensor([p])), cache, bucket(p + 1, 64))
        ops[p] = rec.ops
    assert ops[3] == ops[40]
    names = {name for name, _ in ops[3]}
    assert not names & HOST_READS
    assert {"index_copy_", "index_select"} <= names  # K/V written and rope rows read at the device position


class _Dispatched(TorchDispatchMode):
    """Records each aten operation with the shapes, dtypes and strides of its tensors and its other args."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        sig = tuple(
            (tuple(a.shape), a.dtype, a.stride()) if isinstance(a, torch.Tensor) else repr(a) for a in leaves
        )
        self.ops.append((func.overloadpacket.__name__, sig))
        return func(*args, **kwargs)


def _step_logits(eng: Engine, seq: list[int]) -> torch.Tensor:
    """The logits of seq's last token, decoded as one step after the rest was prefilled in a fresh cache."""
    cache = eng.backend.new_cache(eng.info.n_ctx)
    eng.backend.forward(cache, seq[:-1], 0, "last", None)
    return eng.backend.forward(cache, seq[-1:], len(seq) - 1, "last", None)


def test_the_load_log_and_props_name_the_runs(tiny_gguf):
    from ollama_airllm.server.loglines import load_lines
    from ollama_airllm.server.routes.props import _engine

    path = tiny_gguf("llama", "F32", n_layers=3)
    lines = {r: load_lines(_load(path, n_ctx=64, resident_layers=r, graphs=True).info) for r in (None, 1, 0)}
    assert "load_tensors: decode graphs: layers 0-2 + output replayed as one graph each" in lines[None]
    assert "load_tensors: decode graphs: layer 0, output replayed as one graph each" in lines[1]
    assert not [x for x in lines[0] if "decode graphs" in x]
    eng = _load(path, n_ctx=64, graphs=True)
    eng.generate(0, PROMPT, SamplingParams(**GREEDY))
    replayed = GREEDY["n_predict"] - 2
    assert _engine(eng.info)["graphs"] == {"runs": [[0, 4]], "captured": 0, "replayed": replayed, "off": None}


class _FailingCapture:
    """Stand-ins for torch.cuda's capture API (no GPU here): recording fails as a driver without some
    graph support fails it, when the capture ends."""

    def __init__(self, *a, **k) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    def wait_stream(self, other) -> None:
        pass


def test_a_capture_that_fails_turns_the_graphs_off_and_decode_goes_on(tiny_gguf, monkeypatch, caplog):
    """The capture API is a stand-in here (no GPU): the step's eager run stands, one warning is logged,
    /props says why, and the tokens are the eager path's."""
    from ollama_airllm.engine.graphs import DecodeGraphs

    for name, value in (("graph_pool_handle", lambda: None), ("CUDAGraph", _FailingCapture),
                        ("graph", _FailingCapture), ("Stream", _FailingCapture),
                        ("current_stream", lambda device=None: _FailingCapture()),
                        ("stream", lambda s: contextlib.nullcontext())):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, value)
    path = tiny_gguf("llama", "F32", n_layers=3)
    want = _load(path, n_ctx=64, graphs=False).generate(0, PROMPT, SamplingParams(**GREEDY))
    eng = _load(path, n_ctx=64, graphs=False)
    tf = eng.backend.transformer
    tf.graphs = DecodeGraphs(tf, capture=True)
    eng.info.graphs = tf.graphs.stats
    with caplog.at_level(logging.WARNING, logger="ollama_airllm.engine"):
        got = eng.generate(0, PROMPT, SamplingParams(**GREEDY))
    assert got.tokens == want.tokens
    (warning,) = [r.getMessage() for r in caplog.records if "decode graphs off" in r.getMessage()]
    assert warning == (
        "decode graphs off, decoding eagerly: capturing units 0-3 failed: "
        "CUDA error: operation not permitted when stream is capturing"
    )
    assert tf.graphs.runs == {} and eng.info.graphs.captured == 0 and eng.info.graphs.off in warning
