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

from ..engine.dequant import backend_for, row_bytes
from ..engine.linear import QWeight
from ..engine.linear import linear as engine_linear
from ..engine.weights import chunk_rows
from .record import Rate

MIB = 1 << 20
GB = 1e9
Q4_K = GGMLQuantizationType.Q4_K
Q8_0 = GGMLQuantizationType.Q8_0
GPU_RATE_NAMES = (
    "host_to_device", "memory_read", "f16_gemm", "q4_k_gemv", "q4_k_gemm", "q8_0_gemv", "q8_0_gemm"
)
"""Rates measured per GPU (gpuN.NAME); without a GPU those with a default below are written as gpu.NAME."""
CHUNK = 8 * MIB

# Used when the rate cannot be measured here; each says where the number comes from. The planner
# (ollama_airllm.fit.DEFAULT_RATES, airllmrunner.DefaultRates) uses the same numbers when calibration.json
# lacks one; q8_0 rates fall back to the q4_k ones there.
DEFAULTS = {
    "host_memory_read": Rate(
        value=50.0,
        unit="GB/s",
        measured=False,
        how="default (estimate): dual-channel DDR5, 58-77 GB/s expected, 62.8 GB/s measured at 4400 MT/s",
    ),
    "memory_read": Rate(
        value=800.0,
        unit="GB/s",
        measured=False,
        how="default (estimate): about 80 % of the RX 7900 XTX's 960 GB/s VRAM bandwidth",
    ),
    "f16_gemm": Rate(
        value=40.0,
        unit="TFLOP/s",
        measured=False,
        how="default (estimate): a third of the RX 7900 XTX's 123 TFLOP/s fp16 peak, for llama.cpp's prompt "
        "kernels",
    ),
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
        how="default (conservative estimate, not measured on a GPU): the RX 7900 XTX's 960 GB/s VRAM "
        "bandwidth over the ~57x memory traffic of element-wise Q4_K dequantization; the engine's Triton "
        "GEMV reads the blocks directly and should do better: run ollama-airllm calibrate",
    ),
    "q4_k_gemm": Rate(
        value=15.0,
        unit="TFLOP/s",
        measured=False,
        how="default (conservative estimate, not measured on a GPU): a quarter of the RX 7900 XTX's "
        "61 TFLOP/s fp32 peak, for the chunked dequantization in front of each GEMM",
    ),
    "models_dir_read": Rate(
        value=3.0,
        unit="GB/s",
        measured=False,
        how="default (estimate): an NVMe PCIe 3.0 x4 SSD's sequential read (about 3.5 GB/s rated)",
    ),
    "cpu.llama_weight_read": Rate(
        value=6.8,
        unit="GB/s",
        measured=False,
        how="default, per llama-server thread: llama-server b11076 decoding a 529 MB Q8_0 Llama with -t 1 "
        "-ngl 0 on a 2-core AVX-512 Xeon VM, 12.8-13.4 tok/s x 529 MB (bench/plan.py); the planner "
        "multiplies it by llama-server's threads and takes the slower of it and host_memory_read",
    ),
    "cpu.llama_gemm": Rate(
        value=0.07,
        unit="TFLOP/s",
        measured=False,
        how="default, per llama-server thread: the same llama-server's prompt, 70 tok/s x 2 x 498 M "
        "parameters on one thread (bench/plan.py); about two thirds of torch's fp32 matmul there",
    ),
}
LLAMA_CPU_RATE_NAMES = ("cpu.llama_weight_read", "cpu.llama_gemm")
"""llama.cpp's own CPU kernels: not measured by calibrate (it runs no llama-server), written as defaults."""


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


def _weights(qtype: GGMLQuantizationType, sizes: Sizes, device: torch.device) -> torch.Tensor:
    """Random Q4_K or Q8_0 blocks, sane fp16 scales (d = 2^-7; Q4_K: dmin = 2^-10), raw bytes on `device`."""
    if qtype == Q8_0:
        raw = torch.randint(0, 256, (sizes.rows * sizes.cols // 32, 34), dtype=torch.uint8)
        raw[:, 0:2] = torch.tensor([0x00, 0x20], dtype=torch.uint8)
    else:
        raw = torch.randint(0, 256, (sizes.rows * sizes.cols // 256, 144), dtype=torch.uint8)
        raw[:, 0:4] = torch.tensor([0x00, 0x20, 0x00, 0x14], dtype=torch.uint8)
    return raw.reshape(-1).to(device)


def _dtype(device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def quantized_rates(
    device: torch.device, sizes: Sizes, sync: Callable[[], None], qtype: GGMLQuantizationType = Q4_K
) -> tuple[Rate, Rate]:
    """(GEMV, GEMM) of the engine's own path: its linear() on a weight kept in `qtype` blocks (QWeight),
    with the backend and the reused dequantization buffer the engine gives it on this device."""
    raw, dtype = _weights(qtype, sizes, device), _dtype(device)
    shape = (sizes.rows, sizes.cols)
    work = torch.empty(chunk_rows(device), sizes.cols, dtype=dtype, device=device)
    weight = QWeight(raw.view(sizes.rows, -1), qtype, shape, work, backend_for(device))

    def linear(x: torch.Tensor) -> Callable[[], torch.Tensor]:
        return lambda: engine_linear(x, weight)

    one = torch.randn(1, sizes.cols, dtype=dtype, device=device)
    many = torch.randn(sizes.tokens, sizes.cols, dtype=dtype, device=device)
    gemv_s = best_seconds(linear(one), sizes, sync)
    gemm_s = best_seconds(linear(many), sizes, sync)
    what = (
        f"{sizes.rows}x{sizes.cols} {qtype.name} ({row_bytes(qtype, sizes.cols) * sizes.rows // 1024} KiB), "
        f"the engine's linear() ({backend_for(device)}, {str(dtype).removeprefix('torch.')}) on {device}"
    )
    gemv = Rate(
        value=round(raw.numel() / gemv_s / GB, 3),
        unit="GB/s",
        measured=True,
        how=f"{what}, 1 token; GB/s of {qtype.name} bytes",
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
    """Per visible GPU N: gpuN.NAME for GPU_RATE_NAMES; the defaults (gpu.NAME) when there is none."""
    if not torch.cuda.is_available():
        backend = "ROCm" if torch.version.hip else "CUDA" if torch.version.cuda else "no GPU backend"
        why = f"no GPU: torch {torch.__version__} ({backend}) sees none"
        return _defaults("gpu", why)
    rates = {}
    for index in range(torch.cuda.device_count()):
        rates.update(_one_gpu(index, sizes))
    return rates


def _defaults(prefix: str, why: str) -> dict[str, Rate]:
    return {
        f"{prefix}.{k}": DEFAULTS[k].model_copy(update={"why": why}) for k in GPU_RATE_NAMES if k in DEFAULTS
    }


def gpu_memory_read(device: torch.device, sizes: Sizes) -> Rate:
    """torch.sum over a float32 buffer in VRAM: what llama.cpp's decode kernels are bound by."""
    buf = torch.ones(sizes.transfer // 4, dtype=torch.float32, device=device)
    seconds = best_seconds(buf.sum, sizes, lambda: torch.cuda.synchronize(device))
    return Rate(
        value=round(buf.numel() * 4 / seconds / GB, 2),
        unit="GB/s",
        measured=True,
        how=f"torch.sum over a {sizes.transfer // MIB} MiB float32 buffer on {device}, best of {sizes.reps}",
    )


def dense_gemm(device: torch.device, sizes: Sizes, dtype: torch.dtype = torch.float16) -> Rate:
    """A plain matmul of tokens x cols by cols x rows: a proxy for llama.cpp's prompt kernels."""
    a = torch.randn(sizes.tokens, sizes.cols, dtype=dtype, device=device)
    b = torch.randn(sizes.cols, sizes.rows, dtype=dtype, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    seconds = best_seconds(lambda: a @ b, sizes, sync)
    return Rate(
        value=round(2 * sizes.rows * sizes.cols * sizes.tokens / seconds / 1e12, 4),
        unit="TFLOP/s",
        measured=True,
        how=f"{str(dtype).removeprefix('torch.')} {sizes.tokens}x{sizes.cols} @ {sizes.cols}x{sizes.rows} on "
        f"{device}",
    )


def _one_gpu(index: int, sizes: Sizes) -> dict[str, Rate]:
    """GPU `index`'s rates; a failure there (out of memory, no pinned memory) gives the defaults."""
    device = torch.device("cuda", index)
    sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    try:
        rates = {
            "host_to_device": host_to_device(index, sizes),
            "memory_read": gpu_memory_read(device, sizes),
            "f16_gemm": dense_gemm(device, sizes),
        }
        rates["q4_k_gemv"], rates["q4_k_gemm"] = quantized_rates(device, sizes, sync)
        rates["q8_0_gemv"], rates["q8_0_gemm"] = quantized_rates(device, sizes, sync, Q8_0)
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return _defaults(f"gpu{index}", f"measuring on {device} failed: {first}")
    finally:
        torch.cuda.empty_cache()
    return {f"gpu{index}.{k}": v for k, v in rates.items()}


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
