"""The measurements behind `ollama-airllm calibrate`, each bounded in bytes, repetitions and time.

Every rate is the best of a few timed runs after one warm-up run. Where a rate cannot be measured (no GPU,
a models directory that is missing or not writable) the documented default below is recorded instead,
marked `measured: false` with the reason.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from gguf import GGMLQuantizationType

from ..engine.dequant import dequantize, row_bytes
from .record import Rate

MIB = 1 << 20
GB = 1e9
Q4_K = GGMLQuantizationType.Q4_K
CHUNK = 8 * MIB

# Used when the rate cannot be measured here; each says where the number comes from.
DEFAULTS = {
    "host_to_device": Rate(
        value=25.0,
        unit="GB/s",
        measured=False,
        how="default: PCIe 4.0 x16, 28.4 GB/s measured on an RX 7900 XTX (rocm-bandwidth-test, ROCm issue "
        "2253), 24-26 GB/s on an RTX 4090",
    ),
    "q4_k_gemv": Rate(
        value=17.0,
        unit="GB/s",
        measured=False,
        how="default (estimate): the RX 7900 XTX's 960 GB/s VRAM bandwidth over the ~57x memory traffic of "
        "the engine's torch Q4_K dequantization per weight byte",
    ),
    "q4_k_gemm": Rate(
        value=15.0,
        unit="TFLOP/s",
        measured=False,
        how="default (estimate): a quarter of the RX 7900 XTX's 61 TFLOP/s fp32 peak, for the "
        "dequantization in front of each GEMM",
    ),
    "models_dir_read": Rate(
        value=3.0,
        unit="GB/s",
        measured=False,
        how="default (estimate): an NVMe PCIe 3.0 x4 SSD's sequential read (about 3.5 GB/s rated)",
    ),
}


@dataclass(frozen=True)
class Sizes:
    """How much each measurement moves; `budget_s` bounds the timed runs of one measurement."""

    memory: int
    disk: int
    transfer: int
    rows: int
    cols: int
    tokens: int
    reps: int
    budget_s: float


QUICK = Sizes(
    memory=64 * MIB, disk=32 * MIB, transfer=64 * MIB, rows=256, cols=2048, tokens=32, reps=2, budget_s=1.0
)
FULL = Sizes(
    memory=1024 * MIB,
    disk=256 * MIB,
    transfer=1024 * MIB,
    rows=4096,
    cols=4096,
    tokens=512,
    reps=3,
    budget_s=4.0,
)


def best_seconds(run: Callable[[], object], sizes: Sizes, sync: Callable[[], None] = lambda: None) -> float:
    """The fastest of up to `reps` timed runs (after one warm-up), stopping once `budget_s` is spent."""
    run()
    sync()
    best, started = math.inf, time.monotonic()
    for _ in range(sizes.reps):
        t0 = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - t0)
        if time.monotonic() - started > sizes.budget_s:
            break
    return max(best, 1e-9)


def host_memory_read(sizes: Sizes, ram_bytes: int | None) -> Rate:
    """torch.sum over a float32 buffer of min(size, RAM/8)."""
    nbytes = min(sizes.memory, ram_bytes // 8) if ram_bytes else sizes.memory
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    seconds = best_seconds(buf.sum, sizes)
    return Rate(
        value=round(buf.numel() * 4 / seconds / GB, 2),
        unit="GB/s",
        measured=True,
        how=f"torch.sum over a {buf.numel() * 4 // MIB} MiB float32 buffer, "
        f"{torch.get_num_threads()} threads, best of {sizes.reps}",
    )


def _read_back(fd: int, size: int) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while size > 0 and (n := os.readv(fd, [view])) > 0:
        size -= n


def models_dir_read(directory: Path, sizes: Sizes) -> Rate:
    """Write a temp file in `directory`, drop it from the page cache, time reading it back once."""
    why = None
    if not directory.is_dir():
        why = f"{directory} is not a directory"
    elif not os.access(directory, os.W_OK):
        why = f"{directory} is not writable (run as root)"
    elif shutil.disk_usage(directory).free < 4 * sizes.disk:
        why = f"{directory} has less than {4 * sizes.disk // MIB} MiB free"
    if why:
        return DEFAULTS["models_dir_read"].model_copy(update={"why": why})
    try:
        seconds = _timed_read(directory, sizes.disk)
    except OSError as exc:
        why = f"cannot use a test file in {directory}: {exc.strerror or exc}"
        return DEFAULTS["models_dir_read"].model_copy(update={"why": why})
    return Rate(
        value=round(sizes.disk / seconds / GB, 2),
        unit="GB/s",
        measured=True,
        how=f"wrote {sizes.disk // MIB} MiB in {directory}, fsync + posix_fadvise(DONTNEED) to drop it "
        "from the page cache, read it back once in 8 MiB reads (on tmpfs this is memory speed)",
    )


def _timed_read(directory: Path, size: int) -> float:
    """Seconds to read back a `size`-byte temp file written in `directory` and dropped from the cache."""
    fd, name = tempfile.mkstemp(prefix=".oar-calibrate-", dir=directory)
    try:
        block = os.urandom(CHUNK)
        for _ in range(size // CHUNK):
            os.write(fd, block)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        _read_back(fd, size)
        return max(time.perf_counter() - t0, 1e-9)
    finally:
        os.close(fd)
        Path(name).unlink(missing_ok=True)


def _q4_k_weights(sizes: Sizes, device: torch.device) -> torch.Tensor:
    """Random Q4_K blocks with sane fp16 scales (d = 2^-7, dmin = 2^-10), as raw bytes on `device`."""
    raw = torch.randint(0, 256, (sizes.rows * sizes.cols // 256, 144), dtype=torch.uint8)
    raw[:, 0:4] = torch.tensor([0x00, 0x20, 0x00, 0x14], dtype=torch.uint8)
    return raw.reshape(-1).to(device)


def _dtype(device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def quantized_rates(device: torch.device, sizes: Sizes, sync: Callable[[], None]) -> tuple[Rate, Rate]:
    """(GEMV, GEMM) of the engine's own path: dequantize the Q4_K bytes on the device, then F.linear."""
    raw, dtype = _q4_k_weights(sizes, device), _dtype(device)
    shape = (sizes.rows, sizes.cols)

    def linear(x: torch.Tensor) -> Callable[[], torch.Tensor]:
        return lambda: torch.nn.functional.linear(x, dequantize(raw, Q4_K, shape, dtype))

    one = torch.randn(1, sizes.cols, dtype=dtype, device=device)
    many = torch.randn(sizes.tokens, sizes.cols, dtype=dtype, device=device)
    gemv_s = best_seconds(linear(one), sizes, sync)
    gemm_s = best_seconds(linear(many), sizes, sync)
    what = (
        f"{sizes.rows}x{sizes.cols} Q4_K ({row_bytes(Q4_K, sizes.cols) * sizes.rows // 1024} KiB), "
        f"dequantize to {str(dtype).removeprefix('torch.')} + F.linear on {device}"
    )
    gemv = Rate(
        value=round(raw.numel() / gemv_s / GB, 3),
        unit="GB/s",
        measured=True,
        how=f"{what}, 1 token; GB/s of Q4_K bytes",
    )
    flops = 2 * sizes.rows * sizes.cols * sizes.tokens
    gemm = Rate(
        value=round(flops / gemm_s / 1e12, 4),
        unit="TFLOP/s",
        measured=True,
        how=f"{what}, {sizes.tokens} tokens",
    )
    return gemv, gemm


def host_to_device(index: int, sizes: Sizes) -> Rate:
    """Copy a pinned host buffer to GPU `index` (non_blocking, then synchronize)."""
    device = torch.device("cuda", index)
    src = torch.empty(sizes.transfer, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(sizes.transfer, dtype=torch.uint8, device=device)
    seconds = best_seconds(
        lambda: dst.copy_(src, non_blocking=True), sizes, lambda: torch.cuda.synchronize(device)
    )
    return Rate(
        value=round(sizes.transfer / seconds / GB, 2),
        unit="GB/s",
        measured=True,
        how=f"pinned {sizes.transfer // MIB} MiB host buffer -> {device}, best of {sizes.reps}",
    )


def gpu_rates(sizes: Sizes) -> dict[str, Rate]:
    """Per visible GPU N: gpuN.host_to_device, gpuN.q4_k_gemv, gpuN.q4_k_gemm; defaults when there is none."""
    if not torch.cuda.is_available():
        backend = "ROCm" if torch.version.hip else "CUDA" if torch.version.cuda else "no GPU backend"
        why = f"no GPU: torch {torch.__version__} ({backend}) sees none"
        return {
            f"gpu.{k}": DEFAULTS[k].model_copy(update={"why": why})
            for k in ("host_to_device", "q4_k_gemv", "q4_k_gemm")
        }
    rates = {}
    for index in range(torch.cuda.device_count()):
        rates.update(_one_gpu(index, sizes))
    return rates


def _one_gpu(index: int, sizes: Sizes) -> dict[str, Rate]:
    """GPU `index`'s three rates; a failure there (out of memory, no pinned memory) gives the defaults."""
    device = torch.device("cuda", index)
    try:
        h2d = host_to_device(index, sizes)
        gemv, gemm = quantized_rates(device, sizes, lambda: torch.cuda.synchronize(device))
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        why = f"measuring on {device} failed: {first}"
        return {
            f"gpu{index}.{k}": DEFAULTS[k].model_copy(update={"why": why})
            for k in ("host_to_device", "q4_k_gemv", "q4_k_gemm")
        }
    finally:
        torch.cuda.empty_cache()
    return {f"gpu{index}.host_to_device": h2d, f"gpu{index}.q4_k_gemv": gemv, f"gpu{index}.q4_k_gemm": gemm}


def devices() -> list[str]:
    """What the rates were measured on: the CPU and each visible GPU by name."""
    found = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        found += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return found


def gpu_runtime() -> str | None:
    if torch.version.hip:
        return f"ROCm {torch.version.hip}"
    return f"CUDA {torch.version.cuda}" if torch.version.cuda else None
