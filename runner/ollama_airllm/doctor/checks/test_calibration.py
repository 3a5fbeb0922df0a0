"""The machine's calibration: measured by `ollama-airllm calibrate`, and still describing this host."""

from __future__ import annotations

import shlex

from ollama_airllm.calibrate.record import CALIBRATION_PATH, FIX, gpu_set_shell, parse, staleness, utc_now
from ollama_airllm.doctor.outcome import fail
from ollama_airllm.errors import UserError


def test_calibration_current(host, request):
    """the calibration exists, is under 90 days old, and was taken with this host's GPUs and kernel"""
    path = request.config.getoption("--oar-calibration") or str(CALIBRATION_PATH)
    fix = FIX if path == str(CALIBRATION_PATH) else f"{FIX} -o {shlex.quote(path)}"
    file = host.file(path)
    if not file.exists:
        fail(f"no calibration at {path}: this machine's rates were never measured", f"measure them: `{fix}`")
    try:
        calibration = parse(file.content_string, path)
    except UserError as exc:
        fail(f"the calibration is damaged: {exc.message}", f"measure again: `{fix}`")
    kernel = host.run("uname -r").stdout.strip()
    gpus = [line.strip() for line in host.run(gpu_set_shell()).stdout.splitlines() if line.strip()]
    reasons = staleness(calibration, utc_now(), kernel, gpus)
    if reasons:
        fail(f"the calibration at {path} is stale: " + "; ".join(reasons), f"measure again: `{fix}`")
