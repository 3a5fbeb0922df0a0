"""Engine settings, device choice and the memory budget."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

DEVICE_ENV = "OLLAMA_AIRLLM_DEVICE"
DEFAULT_RESERVE = 512 << 20
DEFAULT_MAX_CTX = 4096  # n_ctx=None: the model's training context, at most this


@dataclass
class EngineConfig:
    """How to load and run a model.

    device: "auto" | "cpu" | "cuda" | "cuda:N" (auto = cuda when torch sees a GPU;
        $OLLAMA_AIRLLM_DEVICE wins).
    n_ctx: context length of each slot (None = the model's training context, at most 4096).
    n_slots: parallel sequences, each with its own KV cache.
    n_batch: prompt tokens computed together inside one layer (one weight sweep covers the whole prompt).
    memory_budget: bytes of weights to keep resident on the device; None = free device memory minus
        `reserve`, the KV caches and the staging buffers.
    resident_layers / resident_fraction: force how many repeating layers stay resident (tests, bench);
        with either set, the output head is resident unless the forced count is 0.
    compression: HF-directory path only (airllm): None | "8bit" | "4bit".
    dtype: compute dtype; None = float32 on cpu, bfloat16 on cuda (float16 where bf16 is unsupported).
    hf_split_dir: where airllm writes its per-layer split of an HF checkpoint (None = inside the checkpoint).
    graphs: decode the resident layers through captured CUDA/HIP graphs (None = on a GPU; True on the CPU
        runs the same fixed-shape steps without capture; GGUF files only).
    """

    device: str = "auto"
    n_ctx: int | None = None
    n_slots: int = 1
    n_batch: int = 512
    memory_budget: int | None = None
    reserve: int = DEFAULT_RESERVE
    resident_layers: int | None = None
    resident_fraction: float | None = None
    compression: Literal["8bit", "4bit"] | None = None
    dtype: str | None = None
    hf_split_dir: str | None = None
    graphs: bool | None = None

    def __post_init__(self) -> None:
        if self.n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {self.n_slots}")
        if self.n_ctx is not None and self.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {self.n_ctx}")
        if self.n_batch < 1:
            raise ValueError(f"n_batch must be >= 1, got {self.n_batch}")
        if self.resident_fraction is not None and not 0.0 <= self.resident_fraction <= 1.0:
            raise ValueError(f"resident_fraction must be within [0, 1], got {self.resident_fraction}")
        if self.compression not in (None, "8bit", "4bit"):
            raise ValueError(f"compression must be none, 8bit or 4bit, got {self.compression!r}")

    def context_for(self, n_ctx_train: int) -> int:
        """Each slot's context: n_ctx, or the model's training context up to DEFAULT_MAX_CTX."""
        return self.n_ctx or min(n_ctx_train, DEFAULT_MAX_CTX)


def resolve_device(name: str) -> torch.device:
    """The torch device for `name`, with $OLLAMA_AIRLLM_DEVICE overriding it."""
    name = os.environ.get(DEVICE_ENV) or name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r} is not valid: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but torch sees no GPU (CUDA/ROCm)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise ValueError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    return dev


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        dt = {
            "float32": torch.float32,
            "f32": torch.float32,
            "float16": torch.float16,
            "f16": torch.float16,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
        }[name.lower()]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of float32, float16, bfloat16") from None
    return dt


def dtype_name(dtype: torch.dtype) -> str:
    """The dtype's name without the module: torch.float32 -> "float32"."""
    return str(dtype).removeprefix("torch.")


def device_free_bytes(device: torch.device) -> int:
    """Free memory on the device (host: available RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"
