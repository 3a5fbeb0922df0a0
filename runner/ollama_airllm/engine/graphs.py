"""One-token decode through the resident layers as captured CUDA/HIP graphs: one launch per run of layers.

A decode step launches some fifteen kernels per layer from Python; for a resident layer those launches
take longer than the kernels. So each run of consecutive resident units (dense layers, and the head when
it follows them) is captured once per KV cache and context bucket, then replayed. The captured step has
fixed shapes (attention.Fixed): the position is a device tensor and attention reads the first `bucket`
cache rows under a mask, so one graph serves every position below its bucket. Buckets double from 256 to
4096, then grow by 4096, up to the context, so a step reads at most twice the KV rows it needs, or 4096
more. Streamed layers stay eager (their weights arrive while the step runs), as do MoE layers (which
experts a token needs is known only on the device).

Each new graph is replayed once at once, for the step it was captured at; if that replay does not give what
the eager run of the step gave, or the capture fails (a driver without some graph support), the graphs are
turned off with one warning and decode goes on eagerly.

capture=False runs the same fixed-shape step eagerly: the CPU tests prove it equal to the eager path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .attention import Fixed

log = logging.getLogger("ollama_airllm.engine")

FIRST_BUCKET = 256
CHECK_RTOL = CHECK_ATOL = 1e-2  # a replay against the eager run of the same step: same kernels, same inputs
BUCKET_STEP = 4096


def bucket(n: int, n_ctx: int) -> int:
    """The cache rows a step at n positions (its own included) attends to: see the module docstring."""
    b = FIRST_BUCKET
    while b < min(n, BUCKET_STEP):
        b *= 2
    if n > BUCKET_STEP:
        b = -(-n // BUCKET_STEP) * BUCKET_STEP
    return min(b, n_ctx)


def resident_runs(n_layer: int, resident: set[int], moe_layers: set[int]) -> dict[int, int]:
    """{first unit: end} of each run of consecutive resident units that are not MoE layers; unit n_layer is
    the head, so a run that ends at n_layer + 1 returns logits."""
    runs: dict[int, int] = {}
    start = None
    for u in range(n_layer + 2):
        ok = u <= n_layer and u in resident and u not in moe_layers
        if ok and start is None:
            start = u
        elif not ok and start is not None:
            runs[start] = u
            start = None
    return runs


@dataclass
class GraphStats:
    """The captured runs and how often they were captured and replayed (live counters, for /props)."""

    runs: list[tuple[int, int]]
    captured: int = 0
    replayed: int = 0
    off: str | None = None  # why the graphs were turned off, if they were

    def as_json(self) -> dict:
        return {"runs": [list(r) for r in self.runs], "captured": self.captured, "replayed": self.replayed,
                "off": self.off}  # fmt: skip


@dataclass
class _Step:
    """One captured run at one bucket: its input and position buffers, its graph and its output."""

    x: torch.Tensor
    pos: torch.Tensor
    graph: torch.cuda.CUDAGraph | None = None
    out: torch.Tensor | None = field(default=None, repr=False)


class DecodeGraphs:
    """The resident runs of a Transformer, replayed for one-token decode."""

    def __init__(self, tf, capture: bool = True) -> None:
        self.tf = tf
        spec = tf.spec
        moe = {i for i in range(spec.n_layer) if "ffn_gate_inp.weight" in tf.store.units[i].refs}
        self.runs = resident_runs(spec.n_layer, tf.store.resident, moe)
        self.capture = capture
        self.stats = GraphStats(sorted(self.runs.items()))
        self._steps: dict[tuple[int, ...], _Step] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None  # one pool: runs never overlap

    def run(self, first: int, x: torch.Tensor, cache, pos: int) -> torch.Tensor:
        """Units first..end-1 (one of self.runs) for the token x [1, n_embd] at `pos`: the hidden state
        after them, or the logits [n_vocab] when the run ends with the head. The result is this step's
        buffer, valid until its next replay. Afterwards self.runs may be empty: the graphs were turned off."""
        length = bucket(pos + 1, cache.n_ctx)
        key = (cache.k.data_ptr(), cache.n_ctx, first, length)  # what the graph's addresses and strides are
        step = self._steps.get(key)
        if step is None:
            step = self._make(first, x, cache, pos, length)
            if self.runs:  # not turned off
                self._steps[key] = step
            return step.out
        step.x.copy_(x)
        step.pos.fill_(pos)
        if step.graph is None:
            step.out = self._units(first, step, cache, length)
        else:
            step.graph.replay()
        self.stats.replayed += 1
        return step.out

    def _units(self, first: int, step: _Step, cache, length: int) -> torch.Tensor:
        """The fixed-shape step itself: what is captured."""
        tf, n_layer = self.tf, self.tf.spec.n_layer
        at = Fixed(step.pos, length)
        x = step.x
        end = self.runs[first]
        for i in range(first, min(end, n_layer)):
            x = tf._layer(tf.store.get(i), x, cache, i, at)
        if end > n_layer:
            return tf._head(tf.store.get(n_layer), x, "last")
        return x

    def _make(self, first: int, x: torch.Tensor, cache, pos: int, length: int) -> _Step:
        """A new step, run once for real (on a side stream, which also compiles its kernels) and then,
        with capture, recorded: the recording computes nothing, so K/V are written once, by the real run."""
        step = _Step(x.clone(), torch.tensor([pos], dtype=torch.long, device=x.device))
        if not self.capture:
            step.out = self._units(first, step, cache, length)
            return step
        main = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self._units(first, step, cache, length)
        main.wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            # thread_local: the prefetch thread goes on copying the next streamed unit while this one records
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                step.out = self._units(first, step, cache, length)
            graph.replay()  # the same step again (its K/V rewritten with the same values)
            if not torch.allclose(step.out.float(), out.float(), rtol=CHECK_RTOL, atol=CHECK_ATOL):
                diff = (step.out.float() - out.float()).abs().max().item()
                raise RuntimeError(f"its replay differs from the eager step by up to {diff:.3g}")
        except RuntimeError as e:  # CUDA/HIP errors are RuntimeErrors
            why = " ".join(str(e).split())
            self._turn_off(f"capturing units {first}-{self.runs[first] - 1} failed: {why}")
            step.out = out
            return step
        step.graph = graph
        self.stats.captured += 1
        return step

    def _turn_off(self, why: str) -> None:
        log.warning("decode graphs off, decoding eagerly: %s", why)
        self.stats.off = why
        self.runs = {}
        self._steps.clear()
