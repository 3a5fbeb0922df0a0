"""bench/stream.py --moe in a bounded run (issue 10): with every layer streamed, a decoded token reads the
dense tensors plus only its top-k experts (<= 1.1x that bound), fetching every expert (airllm's way) reads
them all, and both produce the same tokens. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.engine.test_moe import need_tools

BENCH = Path(__file__).resolve().parents[2] / "bench" / "stream.py"
SMALL = [
    *("--layers", "3", "--hidden", "256", "--heads", "4", "--kv-heads", "2"),
    *("--experts", "6", "--used", "2", "--expert-ff", "256", "--tokens", "4"),
]


def test_bench_moe_reads_only_the_routed_experts(tmp_path):
    need_tools("LLAMA_CONVERT_PY")
    cmd = [sys.executable, str(BENCH), "--moe", *SMALL, "--repeats", "1", "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    per_expert = 3 * 256 * 256 * 4  # gate + up + down, F32
    assert r["top_k_expert_bytes_per_token"] == 3 * 2 * per_expert
    assert r["routed_vs_dense_plus_top_k"] <= 1.1
    assert r["routed_bytes_per_token"] == r["dense_bytes_per_token"] + r["top_k_expert_bytes_per_token"]
    assert r["all_experts_bytes_per_token"] == r["dense_bytes_per_token"] + 3 * 6 * per_expert
    assert r["tokens_match"] is True
    assert r["routed_tok_s"] > 0 and r["all_experts_tok_s"] > 0
    assert "(target <= 1.1)" in out.stdout and "routed/all-experts" in out.stdout


def test_bench_moe_usage_errors_exit_2(tmp_path):
    cmd = [sys.executable, str(BENCH), "--moe", "--experts", "2", "--used", "3"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "--used must be from 1 to --experts (2), got 3" in out.stderr
    assert "Traceback" not in out.stderr
