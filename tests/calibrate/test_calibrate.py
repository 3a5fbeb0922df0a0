"""`ollama-airllm calibrate --quick` on this machine, and the doctor's calibration check.

Without a GPU the GPU rates are the documented defaults, marked as such; with one they are measured.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from ollama_airllm import fit
from ollama_airllm.calibrate import measure
from ollama_airllm.calibrate.record import (
    Calibration,
    gpu_set,
    gpu_set_shell,
    parse,
    staleness,
    utc_now,
)
from ollama_airllm.errors import UserError

MAIN = [sys.executable, "-c", "from ollama_airllm.cli import main; main()"]
GPU_RATES = ("host_to_device", "q4_k_gemv", "q4_k_gemm")


def _calibrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAIN, "calibrate", "--quick", *args], capture_output=True, text=True, timeout=300)


def _doctor(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAIN, "doctor", "-k", "calibration", "--calibration", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One quick calibration, its models directory a temp directory."""
    work = tmp_path_factory.mktemp("calibrate")
    (work / "models").mkdir()
    result = _calibrate("--output", str(work / "calibration.json"), "--models-dir", str(work / "models"))
    assert result.returncode == 0, result.stdout + result.stderr
    return work, result


def test_quick_calibration_writes_a_valid_file(calibrated):
    work, result = calibrated
    data = json.loads((work / "calibration.json").read_text())
    calibration = Calibration.model_validate(data)
    assert data["version"] == 1 and calibration.quick
    assert utc_now() - calibration.measured_at < timedelta(minutes=10)
    assert calibration.host.kernel == os.uname().release and calibration.host.torch == torch.__version__
    assert calibration.host.gpu_set == gpu_set()
    for name in ("host_memory_read", "models_dir_read", "cpu.q4_k_gemv", "cpu.q4_k_gemm"):
        rate = calibration.rates[name]
        assert rate.measured and rate.value > 0 and rate.why is None, (name, rate)
    assert calibration.rates["cpu.q4_k_gemm"].unit == "TFLOP/s"
    assert calibration.rates["models_dir_read"].unit == "GB/s"
    assert list((work / "models").iterdir()) == []  # its temp file is gone
    assert f"wrote {work / 'calibration.json'}" in result.stdout


def test_gpu_rates_are_measured_or_marked_defaults(calibrated):
    """Each visible GPU gets measured rates; without one, the documented defaults say why."""
    work, result = calibrated
    calibration = Calibration.model_validate_json((work / "calibration.json").read_text())
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            assert all(calibration.rates[f"gpu{index}.{name}"].measured for name in GPU_RATES)
        return
    for name in GPU_RATES:
        rate = calibration.rate(name, gpu=0)
        assert not rate.measured and rate.why.startswith("no GPU: torch"), rate
        assert rate.how.startswith("default"), rate
        assert f"gpu.{name}" in result.stdout and "not measured: no GPU" in result.stdout
    assert calibration.rate("host_to_device", gpu=0).value == 25.0
    assert not any(name.startswith("gpu0.") for name in calibration.rates)


def test_llama_cpu_rates_are_written_as_documented_defaults(calibrated):
    """calibrate runs no llama-server: llama.cpp's per-thread CPU rates are the documented defaults, marked
    so, and the planner reads them from the file."""
    work, result = calibrated
    calibration = Calibration.model_validate_json((work / "calibration.json").read_text())
    for name in ("cpu.llama_weight_read", "cpu.llama_gemm"):
        rate = calibration.rates[name]
        assert not rate.measured and rate.why == "calibrate does not run llama-server", rate
        assert rate.value == measure.DEFAULTS[name].value and "per llama-server thread" in rate.how
        assert name in result.stdout
    values = {name: r.value for name, r in calibration.rates.items()}
    rates = fit.rates_from_calibration(values, "q8_0", 3)
    assert rates.cpu_weight_read == 3 * calibration.rates["cpu.llama_weight_read"].value


def test_a_missing_models_dir_is_reported_and_defaulted(tmp_path):
    out = tmp_path / "c.json"
    result = _calibrate("-o", str(out), "--models-dir", str(tmp_path / "nope"))
    assert result.returncode == 0, result.stderr
    rate = Calibration.model_validate_json(out.read_text()).rates["models_dir_read"]
    assert not rate.measured and rate.why == f"{tmp_path / 'nope'} is not a directory"
    assert rate.value == 3.0 and rate.how.startswith("default (estimate)")


def _small_file_limit() -> None:
    """In the child: files may not grow past 1 KiB (EFBIG instead of SIGXFSZ), a real failing write."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path):
    out = tmp_path / "calibration.json"
    out.write_text("old calibration")
    result = subprocess.run(
        [*MAIN, "calibrate", "--quick", "-o", str(out), "--models-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_small_file_limit,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot write {out}: File too large" in result.stderr and "Traceback" not in result.stderr
    assert f"not measured: cannot use a test file in {tmp_path}: File too large" in result.stdout
    assert out.read_text() == "old calibration"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"]


def test_an_output_that_cannot_be_written_is_refused_before_measuring(tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "c.json"
    result = _calibrate("-o", str(out), "--models-dir", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == f"Error: cannot write {out}: {tmp_path / 'file'} is not a directory"
    assert result.stdout == ""  # nothing was measured


def test_an_output_that_is_a_directory_is_a_usage_error(tmp_path):
    result = _calibrate("-o", str(tmp_path), "--models-dir", str(tmp_path))
    assert result.returncode == 2 and "is a directory" in result.stderr, result.stderr


def test_gpu_set_reads_what_the_doctors_shell_command_prints(tmp_path):
    devices = tmp_path / "bus" / "pci" / "devices"
    for slot, cls, vendor, device in [
        ("0000:03:00.0", "0x030000", "0x1002", "0x744c"),
        ("0000:00:02.0", "0x038000", "0x8086", "0x4680"),
        ("0000:00:1f.3", "0x040300", "0x8086", "0x7ad0"),  # audio: not a display device
    ]:
        (devices / slot).mkdir(parents=True)
        for name, value in (("class", cls), ("vendor", vendor), ("device", device)):
            (devices / slot / name).write_text(value + "\n")
    printed = subprocess.run(["sh", "-c", gpu_set_shell(str(tmp_path))], capture_output=True, text=True)
    assert gpu_set(tmp_path) == ["0000:00:02.0 0x8086:0x4680", "0000:03:00.0 0x1002:0x744c"]
    assert sorted(printed.stdout.splitlines()) == gpu_set(tmp_path)
    assert gpu_set(tmp_path / "none") == []


def test_staleness_names_age_kernel_and_gpus(calibrated):
    work, _ = calibrated
    calibration = Calibration.model_validate_json((work / "calibration.json").read_text())
    now, kernel, gpus = calibration.measured_at, calibration.host.kernel, calibration.host.gpu_set
    assert staleness(calibration, now + timedelta(days=89), kernel, gpus) == []
    old = staleness(calibration, now + timedelta(days=91), kernel, gpus)
    assert len(old) == 1 and old[0].startswith("it is 91 days old")
    assert staleness(calibration, now, "9.9.9-other", gpus) == [
        f"it was taken under kernel {kernel}, this host runs 9.9.9-other"
    ]
    moved = staleness(calibration, now, kernel, [*gpus, "0000:09:00.0 0x1002:0x7550"])
    assert len(moved) == 1 and "this host has [" in moved[0] and "0x1002:0x7550" in moved[0]


def test_a_damaged_file_is_one_line_naming_the_field():
    with pytest.raises(UserError, match=r"^c.json: version: "):
        parse('{"version": 2}', "c.json")
    with pytest.raises(UserError, match=r"^c.json: not JSON"):
        parse("{", "c.json")


def test_doctor_fails_without_a_calibration(tmp_path):
    result = _doctor(tmp_path / "calibration.json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"no calibration at {tmp_path / 'calibration.json'}" in result.stdout
    assert (
        f"fix: measure them: `sudo ollama-airllm calibrate -o {tmp_path / 'calibration.json'}`"
        in result.stdout
    )


def test_doctor_accepts_a_fresh_calibration(calibrated):
    work, _ = calibrated
    result = _doctor(work / "calibration.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "1 ok, 0 failed, 0 not applicable"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"measured_at": "2020-01-01T00:00:00Z"}, "is stale: it is "),
        ({"host.kernel": "1.0.0-old"}, "is stale: it was taken under kernel 1.0.0-old, this host runs"),
        (
            {"host.gpu_set": [*gpu_set(), "0000:ff:00.0 0x1002:0x744c"]},
            "0000:ff:00.0 0x1002:0x744c], this host",
        ),
        ({"version": 7}, "the calibration is damaged: "),
    ],
)
def test_doctor_reports_a_stale_or_damaged_calibration(calibrated, tmp_path, change, problem):
    work, _ = calibrated
    data = json.loads((work / "calibration.json").read_text())
    for key, value in change.items():
        parent, _, leaf = key.rpartition(".")
        (data[parent] if parent else data)[leaf] = value
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data))
    result = _doctor(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert problem in result.stdout, result.stdout
    assert "fix: measure again: `sudo ollama-airllm calibrate -o" in result.stdout


def test_quick_calibration_needs_no_root_or_profile(tmp_path):
    """The reference profile's models_dir (/var/lib/ollama) is used when --models-dir is not given."""
    out = tmp_path / "c.json"
    result = _calibrate("-o", str(out))
    assert result.returncode == 0, result.stderr
    assert Calibration.model_validate_json(out.read_text()).models_dir == "/var/lib/ollama"
