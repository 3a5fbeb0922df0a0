"""bench/kernels.py runs in CI: its JSON line says every type is exact, the GEMV is within tolerance and the
CPU path's peak extra memory is bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kernels.py"


def test_bench_kernels_meets_its_targets():
    out = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["types"]) == 16
    assert all(result["dequant_exact"].values()), result["dequant_exact"]
    assert max(result["gemv_max_rel_err"].values()) < 1e-5, result["gemv_max_rel_err"]
    assert 0 <= result["peak_extra_ratio"] <= 1.25
