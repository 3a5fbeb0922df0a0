"""bench/plan.py in its bounded quick mode: it runs llama-server and the runner, prints the JSON verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "plan.py"

pytestmark = [pytest.mark.llamaserver, pytest.mark.slow]


def test_quick_bench_prints_predictions_measurements_and_ratios():
    binary = os.environ.get("LLAMA_SERVER_BIN")
    if not binary:
        if os.environ.get("CI"):
            pytest.fail("LLAMA_SERVER_BIN is not set; under CI the bench test must run (tests/setup.sh)")
        pytest.skip("LLAMA_SERVER_BIN is not set")
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(doc) >= {"llama_server", "runner", "within_target", "model_bytes", "calibration", "quick"}
    for who in ("llama_server", "runner"):
        assert set(doc[who]) == {"decode_tps", "prompt_tps"}
        for rate in doc[who].values():
            assert set(rate) == {"predicted", "measured", "ratio"}
            assert rate["predicted"] > 0 and rate["measured"] > 0 and rate["ratio"] > 0, doc
    assert doc["quick"] is True and isinstance(doc["within_target"], bool)
    assert "ratio" in result.stdout.splitlines()[2]
