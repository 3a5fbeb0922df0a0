"""bench/isa.py compiles the GEMV for real GPU targets on this machine (no GPU) and counts its inner loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "isa.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600,
                          env=env)  # fmt: skip


def test_instructions_per_weight_for_nvidia_and_amd_targets():
    out = _run("--types", "Q4_K,Q6_K,F16", "--targets", "sm_90,gfx1100")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and result["targets"] == ["sm_90", "gfx1100"]
    for target in ("sm_90", "gfx1100"):
        assert set(result["instr_per_value"][target]) == {"Q4_K", "Q6_K", "F16"}
        assert set(result["instr_per_value_resident"][target]) == {"Q6_K"}  # padded to 224 bytes a block
        for name, x in result["instr_per_value"][target].items():
            assert 1 < x < 100, (target, name, x)  # a loop was found, and it is the GEMV's
            assert result["loop_instrs"][target][name] > 16


def test_an_unknown_type_is_one_line_and_exit_2():
    out = _run("--types", "Q4_K,Q9_9")
    assert out.returncode == 2 and out.stdout == ""
    line = out.stderr.strip()
    assert "\n" not in line
    assert line.startswith("bench/isa.py: --types 'Q4_K,Q9_9': Q9_9 not one of F32, F16,")
