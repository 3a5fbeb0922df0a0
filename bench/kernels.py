"""The quantized-weight kernels on this machine's CPU, every GGUF type, against gguf-py's numpy reference.

    python bench/kernels.py

- dequant_exact: the Triton dequantization (under Triton's CPU interpreter) equals gguf-py bit for bit;
- gemv_max_rel_err: the Triton GEMV on the blocks against float64 matmul of the reference weights;
- peak_extra_ratio: the CPU path's peak extra resident memory while it multiplies one 4096 x 4096 Q4_K
  tensor (dequantized in chunks into one reused buffer), over that tensor's dense float32 size; measured with
  the kernel's peak-RSS counter (VmHWM, reset through /proc/self/clear_refs) in a child process whose glibc
  maps every block over 64 KiB afresh (MALLOC_MMAP_THRESHOLD_), so freed temporaries cannot hide in the
  heap that the warm-up grew. Target <= 1.25.

Runs in well under 3 minutes on 2 cores; the last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined: no GPU is needed

import numpy as np
import torch
from ollama_airllm.kernels import QTYPES, dequantize, gemv, matmul, work_buffer
from ollama_airllm.kernels.testdata import random_blocks, reference

ROWS, BLOCKS = 37, 3


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def check_type(name: str) -> tuple[bool, float]:
    q = QTYPES[name]
    k = (q.block if q.block > 1 else 32) * BLOCKS
    raw = random_blocks(name, ROWS, k, seed=11)
    ref = reference(raw, name, k)
    ours = dequantize(torch.from_numpy(raw), name, k).numpy()
    exact = bool(np.array_equal(ours.view(np.uint32), ref.view(np.uint32)))
    x = torch.randn(4, k, generator=torch.Generator().manual_seed(11))
    want = x.double() @ torch.from_numpy(ref).double().T
    got = gemv(x, torch.from_numpy(raw), name, k).double()
    return exact, float((got - want).abs().max() / want.abs().max())


def peak_extra_ratio(n: int = 4096, k: int = 4096, chunk: int = 256) -> float:
    """Peak extra RSS of the CPU path for one n x k Q4_K tensor, over its dense float32 bytes."""
    raw = torch.from_numpy(random_blocks("Q4_K", n, k, seed=5))
    x = torch.randn(16, k)
    work = work_buffer(chunk, k, raw.device)
    matmul(x, raw, "Q4_K", k, work=work, backend="numpy")  # warm-up: allocator and page faults
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    matmul(x, raw, "Q4_K", k, work=work, backend="numpy")
    extra = (_status_kib("VmHWM") - before) * 1024
    return max(extra, 0) / (n * k * 4)


def main() -> None:
    started = time.monotonic()
    exact, errors = {}, {}
    for name in QTYPES:
        exact[name], errors[name] = check_type(name)
        print(f"{name:<7} dequant bit-exact: {exact[name]!s:<5}  gemv max rel err: {errors[name]:.2e}")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    child = subprocess.run([sys.executable, __file__, "--peak"], capture_output=True, text=True, env=env)
    if child.returncode:
        raise SystemExit(f"the peak-memory child failed: {child.stderr.strip()[-2000:]}")
    ratio = float(child.stdout.strip().splitlines()[-1])
    print(f"CPU path, 4096 x 4096 Q4_K: peak extra memory {ratio:.3f} x the dense tensor (target <= 1.25)")
    print(f"{time.monotonic() - started:.1f} s")
    print(
        json.dumps(
            {
                "types": list(QTYPES),
                "dequant_exact": exact,
                "gemv_max_rel_err": errors,
                "peak_extra_ratio": round(ratio, 4),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--peak"]:
        print(peak_extra_ratio())
    else:
        main()
