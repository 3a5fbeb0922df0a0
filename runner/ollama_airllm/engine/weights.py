"""Where each layer's weights live: resident on the device, or streamed from the mapped file per use.

Units are the repeating layers 0..n_layer-1 plus the output head (output_norm + output) as unit n_layer.
The token embedding always stays in the mapped file; only the rows a batch needs are dequantized.

CPU: resident units are dequantized once (F32 is copied, like a model loaded into RAM); streamed units
use the mapped bytes in place (F32 zero-copy; other types are dequantized per use) and the next unit is
read ahead with madvise(WILLNEED).

CUDA/HIP: resident units keep their raw (quantized) bytes on the device and are dequantized per use;
streamed units go mmap -> pinned staging buffer (a worker thread) -> device staging buffer (async copy on
a dedicated stream, event-ordered) -> dequantized on the compute stream. Two staging slots double-buffer:
unit i+1 is copied while unit i computes, and the first streamed unit of the next pass is prefetched
while the head of this one runs.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .dequant import dequantize, row_bytes
from .gguf_file import GGUFModel, TensorRef

READAHEAD_INTERVAL = 1.0  # seconds between page-cache read-ahead hints for the same unit (CPU)


@dataclass
class Unit:
    """A group of tensors loaded together: one repeating layer, or the head. Bytes: raw in file / dense."""

    index: int
    refs: dict[str, TensorRef]
    raw_bytes: int
    dense_bytes: int


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
        raw = sum(r.nbytes for r in refs.values())
        dense = sum(r.numel * itemsize for r in refs.values())
        units.append(Unit(i, refs, raw, dense))
    return units


@dataclass
class _StagingSlot:
    """One CUDA staging slot: pinned host bytes + device bytes + the events that order their reuse."""

    pinned: torch.Tensor
    dev: torch.Tensor
    ready: torch.cuda.Event
    free: torch.cuda.Event
    unit: int = -1
    future: Future | None = None
    layout: dict[str, tuple[int, int]] = field(default_factory=dict)


class WeightStore:
    """Hands out each unit's weights as compute-ready tensors and keeps the streaming pipeline going."""

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
        self.streamed_bytes = 0  # bytes read from the file for streamed units since load
        self._resident: dict[int, dict[str, torch.Tensor]] = {}
        self._advised: dict[int, float] = {}  # unit -> time of its last read-ahead hint
        self._staged = device.type == "cuda" if staged is None else staged
        ff = model.globals.get("rope_freqs.weight")
        self.rope_freqs = None if ff is None else dequantize(model.raw(ff), ff.qtype, ff.shape).clone()
        emb = model.globals["token_embd.weight"]
        self._emb = emb
        self._emb_rows = model.raw(emb).view(emb.shape[0], row_bytes(emb.qtype, emb.shape[1]))
        if self._staged:
            self._copy_stream = torch.cuda.Stream(device)
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="oar-prefetch")
            size = max(
                (self.units[i].raw_bytes + 256 * len(self.units[i].refs) for i in self.streamed), default=0
            )
            self._staging = [self._new_slot(size) for _ in range(2)] if self.streamed else []
            self._current: int | None = None  # the streamed unit being computed: never refill its slot
            self._lock = threading.Lock()
        for i in sorted(self.resident):
            self._resident[i] = self._load_resident(self.units[i])

    # --- sizes -------------------------------------------------------------------------------------------

    def resident_bytes(self) -> int:
        total = 0
        for t in self._resident.values():
            total += sum(x.numel() * x.element_size() for x in t.values() if not self.model.is_file_view(x))
        return total

    def staging_bytes(self) -> int:
        if self._staged:
            return sum(s.dev.numel() for s in self._staging)
        return 0

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

    def get(self, unit: int) -> dict[str, torch.Tensor]:
        """Compute-ready weights of `unit`; call done(unit) after the last kernel that uses them is queued."""
        if unit in self._resident:
            w = self._resident[unit]
            if self._staged:
                return {k: self._dense(v, self.units[unit].refs[k]) for k, v in w.items()}
            return w
        u = self.units[unit]
        self.streamed_bytes += u.raw_bytes
        if not self._staged:
            return {k: dequantize(self.model.raw(r), r.qtype, r.shape, self.dtype) for k, r in u.refs.items()}
        slot = self._slot_for(unit)
        self._current = unit
        slot.future.result()
        torch.cuda.current_stream(self.device).wait_event(slot.ready)
        return {
            k: dequantize(slot.dev[a:b], u.refs[k].qtype, u.refs[k].shape, self.dtype)
            for k, (a, b) in slot.layout.items()
        }

    def done(self, unit: int) -> None:
        if self._staged and unit not in self._resident:
            for s in self._staging:
                if s.unit == unit:
                    s.free.record(torch.cuda.current_stream(self.device))

    def prefetch(self, unit: int | None) -> None:
        """Start bringing `unit` closer to the device (CPU: page-cache read-ahead; CUDA: staging copy)."""
        if unit is None or unit in self._resident:
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
        if self._staged:
            self._pool.shutdown(wait=True)
        self._resident.clear()

    # --- internals ---------------------------------------------------------------------------------------

    def _dense(self, raw: torch.Tensor, ref: TensorRef) -> torch.Tensor:
        return dequantize(raw, ref.qtype, ref.shape, self.dtype)

    def _load_resident(self, u: Unit) -> dict[str, torch.Tensor]:
        if self._staged:  # raw bytes on the device, dequantized per use
            return {k: self.model.raw(r).to(self.device) for k, r in u.refs.items()}
        out = {}
        for k, r in u.refs.items():
            t = dequantize(self.model.raw(r), r.qtype, r.shape, self.dtype)
            out[k] = t.clone() if self.model.is_file_view(t) else t
        return out

    def _new_slot(self, size: int) -> _StagingSlot:
        free = torch.cuda.Event()
        free.record(torch.cuda.current_stream(self.device))
        return _StagingSlot(
            pinned=torch.empty(size, dtype=torch.uint8, pin_memory=self.device.type == "cuda"),
            dev=torch.empty(size, dtype=torch.uint8, device=self.device),
            ready=torch.cuda.Event(),
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

    def _fill(self, s: _StagingSlot, u: Unit) -> None:
        """Worker thread: wait until the slot's last user finished, then file -> pinned -> device.

        Each tensor's async device copy is queued as soon as its bytes are in the pinned buffer, so the
        DMA of one tensor overlaps the host copy of the next.
        """
        s.free.synchronize()
        pos, layout = 0, {}
        with torch.cuda.stream(self._copy_stream):
            for k, r in u.refs.items():
                end = pos + r.nbytes
                s.pinned[pos:end].copy_(self.model.raw(r))
                s.dev[pos:end].copy_(s.pinned[pos:end], non_blocking=True)
                layout[k] = (pos, end)
                pos = (end + 255) // 256 * 256
            s.ready.record(self._copy_stream)
        s.layout = layout
