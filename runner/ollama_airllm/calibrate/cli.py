"""`ollama-airllm calibrate`: measure the rates the runner plans with, and write calibration.json."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import click

from ..errors import UserError
from ..hardware.system import read_ram_bytes
from ..installed import machine_profile, profile_option
from . import measure
from .record import CALIBRATION_PATH, VERSION, Calibration, Host, Rate, gpu_set, save, utc_now


def run_calibration(models_dir: Path, sizes: measure.Sizes) -> Calibration:
    """Every measurement, in a fixed order; nothing is written here."""
    import torch

    started = time.monotonic()
    cpu = torch.device("cpu")
    cpu_gemv, cpu_gemm = measure.quantized_rates(cpu, sizes, lambda: None)
    cpu_q8_gemv, cpu_q8_gemm = measure.quantized_rates(cpu, sizes, lambda: None, measure.Q8_0)
    rates: dict[str, Rate] = {
        "host_memory_read": measure.host_memory_read(sizes, read_ram_bytes(Path("/"))),
        "models_dir_read": measure.models_dir_read(models_dir, sizes),
        "cpu.q4_k_gemv": cpu_gemv,
        "cpu.q4_k_gemm": cpu_gemm,
        "cpu.q8_0_gemv": cpu_q8_gemv,
        "cpu.q8_0_gemm": cpu_q8_gemm,
        "cpu.f32_gemm": measure.dense_gemm(cpu, sizes, torch.float32),
        **measure.gpu_rates(sizes),
        **{
            name: measure.DEFAULTS[name].model_copy(update={"why": "calibrate does not run llama-server"})
            for name in measure.LLAMA_CPU_RATE_NAMES
        },
    }
    host = Host(
        kernel=platform.release(),
        torch=torch.__version__,
        gpu_runtime=measure.gpu_runtime(),
        cpu_threads=torch.get_num_threads(),
        gpu_set=gpu_set(),
        devices=measure.devices(),
    )
    return Calibration(
        version=VERSION,
        measured_at=utc_now(),
        quick=sizes is measure.QUICK,
        duration_s=round(time.monotonic() - started, 2),
        host=host,
        models_dir=str(models_dir),
        rates=rates,
    )


def check_writable(output: Path) -> None:
    """Refuse before measuring when the file's directory cannot be created or written."""
    existing = output.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {output}: {existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot write {output}: {existing} is not writable (run with sudo)")


def _line(name: str, rate: Rate) -> str:
    status = "measured" if rate.measured else f"not measured: {rate.why}; using the default"
    return f"{name:<22} {rate.value:>10g} {rate.unit:<8} {status}"


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=CALIBRATION_PATH,
    show_default=True,
    help="Where to write the calibration (atomically).",
)
@click.option("--quick", is_flag=True, help="Small sizes (a few seconds): for tests, not for planning.")
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory whose read speed is measured (default: the profile's ollama.models_dir).",
)
@profile_option
def calibrate(output: Path, quick: bool, models_dir: Path | None, profile_path: Path | None) -> None:
    """Measure pinned host->GPU copies, host memory and models-directory reads, and Q4_K GEMV/GEMM rates.

    What cannot be measured here (no GPU, a models directory that is missing or read-only) is reported
    and recorded as a documented default, marked "measured": false. About 30 s by default.
    Exit status: 0 written, 1 cannot write, 2 bad usage.
    """
    if models_dir is None:
        models_dir = Path(machine_profile(profile_path)[0].ollama.models_dir)
    check_writable(output)
    result = run_calibration(models_dir, measure.QUICK if quick else measure.FULL)
    for name, rate in result.rates.items():
        click.echo(_line(name, rate))
    save(result, output)
    click.echo(f"wrote {output} ({result.duration_s:g} s)")
