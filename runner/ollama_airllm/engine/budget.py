"""The device memory budget: what a load needs besides resident weights, and which units to keep resident.

Counted before any weight is made resident: the reserve, the KV caches of every slot, the work buffers
(prefill's reused dequantization buffer, as wide as the widest matrix or MoE expert slice, and on the CPU
numpy's temporaries for one chunk), the activations of one n_batch chunk (hidden states of a whole
context, attention scores, the FFN intermediate, the logits) and, when not every unit fits, the two
staging slots and (MoE) room for one layer's fetched experts (CUDA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import kernels
from .config import EngineConfig
from .gguf_file import ModelSpec
from .weights import Unit, staged_bytes, work_buffer_bytes

# numpy's temporaries while gguf-py dequantizes kernels.NUMPY_VALUES values (the CPU path): at most 5.3
# float32 copies of them, measured with tracemalloc for every block type
NUMPY_TEMP_BYTES = 6 * 4 * kernels.NUMPY_VALUES


@dataclass(frozen=True)
class Needs:
    """Bytes a load needs on the device besides resident weights."""

    kv: int
    work: int  # dequantization work buffer (+ numpy temporaries on the CPU)
    activations: int
    staging: int  # two staging slots (CUDA), needed only when some unit streams
    experts: int = 0  # MoE: bytes of every expert stack, resident or not (for the "everything fits" test)
    expert_fetch: int = 0  # MoE on CUDA: one layer's experts copied in (a prefill may select them all)

    @property
    def compute(self) -> int:
        """What llama.cpp calls the compute buffer: work buffers and activations."""
        return self.work + self.activations


def activation_bytes(spec: ModelSpec, n_ctx: int, n_batch: int, dtype: torch.dtype) -> int:
    """Peak activations of one forward pass: the hidden states of a whole context, then per n_batch
    chunk the norms, q/k/v, attention scores, FFN intermediate and float32 logits."""
    it = torch.empty((), dtype=dtype).element_size()
    nb = min(n_batch, n_ctx)
    qkv = (spec.n_head + 2 * spec.n_head_kv) * spec.head_dim
    per_token = 4 * spec.n_embd + 2 * qkv + 3 * spec.n_ff + n_ctx * spec.n_head
    logits = 2 * nb * spec.n_vocab * 4
    return it * (n_ctx * spec.n_embd + nb * per_token) + logits


def needs(
    spec: ModelSpec,
    units: list[Unit],
    config: EngineConfig,
    n_ctx: int,
    device: torch.device,
    dtype: torch.dtype,
    kv: int,
    expert_layers: list[int] = (),
) -> Needs:
    """What a load needs; expert_layers: each MoE layer's expert-stack bytes (empty for a dense model)."""
    work = work_buffer_bytes(units, device)
    if device.type == "cpu":
        work += NUMPY_TEMP_BYTES
    staging = 0
    if device.type == "cuda":
        staging = 2 * max(staged_bytes(u) for u in units)
    act = activation_bytes(spec, n_ctx, config.n_batch, dtype)
    fetch = max(expert_layers, default=0) if device.type == "cuda" else 0  # CPU: views of the file
    return Needs(kv, work, act, staging, sum(expert_layers), fetch)


def resident_cost(device: torch.device) -> Callable[[Unit], int]:
    """Device bytes of a unit made resident: its blocks (CUDA, Q6_K/Q3_K padded), or its dequantized copy
    (CPU)."""
    return (lambda u: u.device_bytes) if device.type == "cuda" else (lambda u: u.dense_bytes)


def weight_budget(free: int, config: EngineConfig, units: list[Unit], n: Needs, cost: Callable) -> int:
    """Bytes left for resident weights (experts included): free memory less the reserve, KV, compute and,
    when something must stream, the staging slots and the room for one layer's fetched experts."""
    left = free - config.reserve - n.kv - n.compute
    if sum(cost(u) for u in units) + n.experts <= left:
        return left  # everything resident: nothing streams, no staging slots
    return left - n.staging - n.expert_fetch


def choose_resident(units: list[Unit], config: EngineConfig, budget: int, cost: Callable) -> set[int]:
    """Resident units: as forced by config, else by bus bytes saved per byte of budget, within budget.

    Every streamed unit costs its raw bytes of transfer per forward pass, layer or head alike; keeping it
    resident costs cost(u) of the budget. Units go in by raw_bytes / cost(u), best first (ties: the head,
    then the layers in order); a unit that does not fit is passed over for the ones after it.
    """
    n_layer = len(units) - 1
    head = n_layer
    forced = config.resident_layers
    if forced is None and config.resident_fraction is not None:
        forced = round(config.resident_fraction * n_layer)
    if forced is not None:
        forced = max(0, min(int(forced), n_layer))
        return set(range(forced)) | ({head} if forced > 0 else set())
    order = sorted([units[head], *units[:n_layer]], key=lambda u: -u.raw_bytes / max(cost(u), 1))
    chosen: set[int] = set()
    for u in order:
        c = cost(u)
        if c <= budget:
            chosen.add(u.index)
            budget -= c
    return chosen
