"""Where each layer's weights live: resident on the device, or streamed from the mapped file per use.

Units are the repeating layers 0..n_layer-1 plus the output head (output_norm + output) as unit n_layer.
The token embedding always stays in the mapped file; only the rows a batch needs are dequantized. Norm
weights and biases (1-D, tiny) of every unit are kept dense on the device from the start.

Matrices are handed out as dense tensors or as `QWeight`s (still in their GGUF blocks, multiplied by the
kernels package: a GEMV on the blocks for a few tokens, chunked dequantization into one reused work buffer
and a GEMM for more). The work buffer is as wide as the widest matrix, MoE experts included: the
ExpertStore makes its QWeights with qweight() too, so no matmul allocates one of its own.

CPU: resident units are dequantized once (F32 is copied, like a model loaded into RAM); streamed units
use the mapped bytes in place: F32 as a zero-copy dense view, every other type as a QWeight over the
mapped blocks (numpy dequantization of a chunk of rows at a time into the work buffer: bounded memory).
The next unit is read ahead with madvise(WILLNEED).

CUDA/HIP (staged): resident units keep their raw blocks on the device as QWeights (F32/F16/BF16 matrices
are converted to the compute dtype once); streamed units go mmap -> pinned staging buffer (a worker
thread) -> device staging buffer (async copy on a dedicated stream, event-ordered) and are QWeight views
into that buffer. Two staging slots double-buffer: unit i+1 is copied while unit i computes, and the first
streamed unit of the next pass is prefetched while the head of this one runs. A failed fill is retried
once, then the request fails with WeightReadError; close() waits for every copy in flight.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import torch
from gguf import GGMLQuantizationType

from .. import kernels
from .dequant import FLOAT_VIEWS, backend_for, dequantize, row_bytes
from .gguf_file import GGUFModel, TensorRef
from .linear import QWeight

READAHEAD_INTERVAL = 1.0  # seconds between page-cache read-ahead hints for the same unit (CPU)
ALIGN = 256  # byte alignment of each tensor inside a staging slot


class WeightReadError(RuntimeError):
    """A streamed unit's bytes could not be brought to the device, even on a second try."""


def chunk_rows(device: torch.device) -> int:
    """Rows dequantized at a time by prefill (and by every CPU use of a QWeight)."""
    return 256 if device.type == "cpu" else 1024


def max_cols(units: list[Unit]) -> int:
    """The widest matrix's column count (k of its matmul), over the units' matrices and the slices
    [rows, cols] that one expert takes of their 3-D expert stacks."""
    dense = (r.shape[1] for u in units for r in u.refs.values() if _is_matrix(r))
    experts = (r.shape[2] for u in units for r in u.experts.values() if len(r.shape) == 3)
    return max((*dense, *experts), default=0)


def work_buffer_bytes(units: list[Unit], device: torch.device) -> int:
    """Bytes of the reused dequantization buffer: chunk_rows x the widest matrix x the work dtype."""
    return chunk_rows(device) * max_cols(units) * (4 if device.type == "cpu" else 2)


@dataclass
class Unit:
    """A group of tensors loaded together: one repeating layer, or the head. Bytes: raw in file / dense /
    resident on a GPU (matrices in their blocks, Q6_K and Q3_K at their padded stride; the rest dense).

    experts: the layer's MoE expert tensors, fetched per routed expert by the ExpertStore (not loaded with
    the unit, not counted in its bytes)."""

    index: int
    refs: dict[str, TensorRef]
    raw_bytes: int
    dense_bytes: int
    device_bytes: int
    experts: dict[str, TensorRef] = field(default_factory=dict)


def staged_bytes(u: Unit) -> int:
    """Bytes `u` takes in a staging slot: its matrices, each aligned to ALIGN (1-D tensors stay resident)."""
    return sum(-(-r.nbytes // ALIGN) * ALIGN for r in u.refs.values() if _is_matrix(r))


def is_expert_tensor(name: str) -> bool:
    """MoE expert stacks (ffn_{gate,up,down}_exps.*) are fetched per routed expert, not with their unit."""
    return "_exps." in name


def build_units(model: GGUFModel, dtype: torch.dtype) -> list[Unit]:
    """Layers 0..n_layer-1, then the head (output_norm + output, or token_embd when tied)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    head = {
        "output_norm.weight": model.globals["output_norm.weight"],
        "output.weight": model.globals.get("output.weight") or model.globals["token_embd.weight"],
    }
    units = []
    for i, all_refs in enumerate([*model.layers, head]):
        refs = {k: r for k, r in all_refs.items() if not is_expert_tensor(k)}
        experts = {k: r for k, r in all_refs.items() if is_expert_tensor(k)}
        raw = sum(r.nbytes for r in refs.values())
        dense = sum(r.numel * itemsize for r in refs.values())
        device = sum(_device_bytes(r, itemsize) for r in refs.values())
        units.append(Unit(i, refs, raw, dense, device, experts))
    return units


def _device_bytes(r: TensorRef, itemsize: int) -> int:
    """Bytes of `r` resident on a GPU: a block-type matrix in its blocks, at the resident stride."""
    if not _is_matrix(r) or r.qtype in FLOAT_VIEWS:
        return r.numel * itemsize
    q = kernels.qtype(GGMLQuantizationType(r.qtype).name)
    return r.nbytes // q.block_bytes * q.resident_block_bytes


def _is_matrix(r: TensorRef) -> bool:
    return len(r.shape) == 2


@dataclass
class _StagingSlot:
    """One CUDA staging slot: pinned host bytes + device bytes + the events that order their reuse."""

    pinned: torch.Tensor
    dev: torch.Tensor
    ready: torch.cuda.Event
    free: torch.cuda.Event
    unit: int = -1
    future: Future | None = None
    weights: dict[str, torch.Tensor | QWeight] = field(default_factory=dict)


class WeightStore:
    """Hands out each unit's weights, ready to compute with, and keeps the streaming pipeline going."""

    def __init__(
        self,
        model: GGUFModel,
        device: torch.device,
        dtype: torch.dtype,
        resident: set[int],
        staged: bool | None = None,
    ) -> None:
        """staged: use the staging-slot pipeline (default: on CUDA). Tests force it on the CPU, with
        stand-in events and streams, to check its bookkeeping where no GPU exists."""
        self.model = model
        self.device = device
        self.dtype = dtype
        self.units = build_units(model, dtype)
        self.resident = set(resident)
        self.streamed = [u.index for u in self.units if u.index not in self.resident]
        self.streamed_bytes = 0  # bytes copied (staged) or read in place (CPU) for streamed units
        self._advised: dict[int, float] = {}  # unit -> time of its last read-ahead hint
        self._staged = device.type == "cuda" if staged is None else staged
        self._backend = backend_for(device)
        self._chunk = chunk_rows(device)
        self._work = kernels.work_buffer(self._chunk, max_cols(self.units), device).reshape(-1)
        ff = model.globals.get("rope_freqs.weight")
        self.rope_freqs = None if ff is None else dequantize(model.raw(ff), ff.qtype, ff.shape).clone()
        emb = model.globals["token_embd.weight"]
        self._emb = emb
        self._emb_rows = model.raw(emb).view(emb.shape[0], row_bytes(emb.qtype, emb.shape[1]))
        self._small = [self._load_small(u) for u in self.units]
        if self._staged:
            self._copy_stream = torch.cuda.Stream(device)
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="oar-prefetch")
            self._staging = [self._new_slot(self._slot_size()) for _ in range(2)] if self.streamed else []
            self._current: int | None = None  # the streamed unit being computed: never refill its slot
            self._lock = threading.Lock()
        # every unit's hand-out dict is built once: get() does no per-use work but the staging
        self._ready: dict[int, dict[str, torch.Tensor | QWeight]] = {
            i: self._load_resident(self.units[i]) for i in sorted(self.resident)
        }
        if not self._staged:
            self._ready.update({i: self._mapped(self.units[i]) for i in self.streamed})

    # --- sizes -------------------------------------------------------------------------------------------

    def resident_bytes(self) -> int:
        total = 0
        for i in self.resident:
            for x in self._ready[i].values():
                t = x.raw if isinstance(x, QWeight) else x
                if not self.model.is_file_view(t):
                    total += t.numel() * t.element_size()
        return total

    def staging_bytes(self) -> int:
        if self._staged:
            return sum(s.dev.numel() for s in self._staging)
        return 0

    @property
    def staged(self) -> bool:
        """Whether matrices are blocks copied to the device (CUDA; forced on the CPU by tests)."""
        return self._staged

    def qweight(
        self,
        raw: torch.Tensor,
        qtype: GGMLQuantizationType,
        shape: tuple[int, int],
        stride: int | None = None,
    ) -> QWeight:
        """A QWeight over `raw` (the blocks of a [rows, cols] matrix, on the device, `stride` bytes apart)
        that dequantizes into the shared work buffer with this store's kernels backend."""
        rows, k = shape
        work = self._work[: self._chunk * k].view(self._chunk, k)
        return QWeight(raw.view(rows, -1), qtype, (rows, k), work, self._backend, stride)

    def work_bytes(self) -> int:
        """The reused dequantization buffer's bytes."""
        return self._work.numel() * self._work.element_size()

    def next_streamed(self, unit: int) -> int | None:
        """The streamed unit used after `unit` (wrapping to the next pass), or None if nothing streams."""
        if not self.streamed:
            return None
        for i in self.streamed:
            if i > unit:
                return i
        return self.streamed[0]

    # --- access --------------------------------------------------------------------------------------------

    def embed(self, ids: list[int]) -> torch.Tensor:
        """Rows of the token embedding for `ids`, dequantized, on the device: [len(ids), n_embd]."""
        idx = torch.tensor(ids, dtype=torch.long)
        rows = self._emb_rows[idx].reshape(-1)
        if self._staged:
            rows = rows.to(self.device, non_blocking=False)
        return dequantize(rows, self._emb.qtype, (len(ids), self._emb.shape[1]), self.dtype)

    def get(self, unit: int) -> dict[str, torch.Tensor | QWeight]:
        """Weights of `unit`; call done(unit) after the last kernel that uses them is queued."""
        if unit in self.resident:
            return self._ready[unit]
        if not self._staged:
            self.streamed_bytes += self.units[unit].raw_bytes  # read from the mapped file by this use
            return self._ready[unit]
        slot = self._slot_for(unit)
        self._current = unit
        self._wait_filled(slot, unit)
        torch.cuda.current_stream(self.device).wait_event(slot.ready)
        return slot.weights

    def done(self, unit: int) -> None:
        if self._staged and unit not in self.resident:
            for s in self._staging:
                if s.unit == unit:
                    s.free.record(torch.cuda.current_stream(self.device))

    def prefetch(self, unit: int | None) -> None:
        """Start bringing `unit` closer to the device (CPU: page-cache read-ahead; CUDA: staging copy)."""
        if unit is None or unit in self.resident:
            return
        if not self._staged:
            # madvise walks every page even when all are cached (~0.6 ms per 40 MB layer, ~10% of a
            # CPU token), so repeat the hint for a unit at most once per READAHEAD_INTERVAL seconds: a model
            # that fits the page cache runs passes faster than that; one read from disk does not.
            now = time.monotonic()
            if now - self._advised.get(unit, -READAHEAD_INTERVAL) >= READAHEAD_INTERVAL:
                self._advised[unit] = now
                self.model.advise_willneed(list(self.units[unit].refs.values()))
            return
        self._slot_for(unit)

    def close(self) -> None:
        """Wait for every fill and device copy in flight, then drop the buffers they write into."""
        if self._staged:
            wait([s.future for s in self._staging if s.future is not None])  # blocks; failures are moot
            self._pool.shutdown(wait=True)
            self._copy_stream.synchronize()
            self._staging = []
        self._ready.clear()

    # --- internals ---------------------------------------------------------------------------------------

    def _load_small(self, u: Unit) -> dict[str, torch.Tensor]:
        """The unit's 1-D tensors (norms, biases), dense on the device."""
        return {
            k: dequantize(self.model.raw(r).to(self.device), r.qtype, r.shape, self.dtype)
            for k, r in u.refs.items()
            if not _is_matrix(r)
        }

    def _mapped(self, u: Unit) -> dict[str, torch.Tensor | QWeight]:
        """CPU, streamed: F32 matrices as zero-copy views of the file (when computing in float32), every
        other matrix as a QWeight over its mapped blocks."""
        out: dict[str, torch.Tensor | QWeight] = dict(self._small[u.index])
        for k, r in u.refs.items():
            if _is_matrix(r):
                raw = self.model.raw(r)
                dense = FLOAT_VIEWS.get(r.qtype) == self.dtype == torch.float32
                if dense:
                    out[k] = dequantize(raw, r.qtype, r.shape, self.dtype)
                else:
                    out[k] = self.qweight(raw, r.qtype, r.shape)
        return out

    def _load_resident(self, u: Unit) -> dict[str, torch.Tensor | QWeight]:
        out: dict[str, torch.Tensor | QWeight] = {}
        for k, r in u.refs.items():
            if not _is_matrix(r):
                t = self._small[u.index][k]
                out[k] = t.clone() if self.model.is_file_view(t) else t
                continue
            if self._staged and r.qtype not in FLOAT_VIEWS:  # the blocks, on the device
                rows, cols = r.shape
                raw = self.model.raw(r).to(self.device, copy=True).view(rows, -1)
                blocks, stride = kernels.resident_copy(raw, GGMLQuantizationType(r.qtype).name, cols)
                out[k] = self.qweight(blocks, r.qtype, r.shape, stride)
                continue
            t = dequantize(self.model.raw(r).to(self.device), r.qtype, r.shape, self.dtype)
            out[k] = t.clone() if self.model.is_file_view(t) else t
        return out

    def _slot_size(self) -> int:
        """Bytes of one staging slot: the biggest streamed unit's."""
        return max(staged_bytes(self.units[i]) for i in self.streamed)

    def _new_slot(self, size: int) -> _StagingSlot:
        free = torch.cuda.Event(blocking=True)  # a blocking event: its synchronize() sleeps, not spins
        free.record(torch.cuda.current_stream(self.device))
        return _StagingSlot(
            pinned=torch.empty(size, dtype=torch.uint8, pin_memory=self.device.type == "cuda"),
            dev=torch.empty(size, dtype=torch.uint8, device=self.device),
            ready=torch.cuda.Event(blocking=True),
            free=free,
        )

    def _slot_for(self, unit: int) -> _StagingSlot:
        with self._lock:
            for s in self._staging:
                if s.unit == unit:
                    return s
            s = next(x for x in self._staging if x.unit != self._current)
            s.unit = unit
            s.future = self._pool.submit(self._fill, s, self.units[unit])
            return s

    def _wait_filled(self, slot: _StagingSlot, unit: int) -> None:
        """Block until the slot's fill is done; a failed fill is retried once, then WeightReadError."""
        try:
            slot.future.result()
            return
        except Exception:  # a read or copy error: try once more
            with self._lock:
                slot.future = self._pool.submit(self._fill, slot, self.units[unit])
        try:
            slot.future.result()
        except Exception as e:
            with self._lock:
                slot.unit = -1  # nothing usable in the slot
            what = "the output head" if unit == len(self.units) - 1 else f"layer {unit}"
            raise WeightReadError(
                f"cannot read the weights of {what} from {self.model.path} (tried twice): "
                f"{type(e).__name__}: {e}"
            ) from e

    def _fill(self, s: _StagingSlot, u: Unit) -> None:
        """Worker thread: wait until the slot's last user finished, then file -> pinned -> device.

        Each tensor's async device copy is queued as soon as its bytes are in the pinned buffer, so the
        DMA of one tensor overlaps the host copy of the next. Only the copies made count as streamed.
        """
        s.free.synchronize()
        pos, weights, copied = 0, dict(self._small[u.index]), 0
        with torch.cuda.stream(self._copy_stream):
            for k, r in u.refs.items():
                if not _is_matrix(r):
                    continue
                end = pos + r.nbytes
                s.pinned[pos:end].copy_(self.model.raw(r))
                s.dev[pos:end].copy_(s.pinned[pos:end], non_blocking=True)
                copied += r.nbytes
                weights[k] = self.qweight(s.dev[pos:end], r.qtype, r.shape)
                pos = -(-end // ALIGN) * ALIGN
            s.ready.record(self._copy_stream)
        s.weights = weights
        with self._lock:
            self.streamed_bytes += copied
