"""The calibration file: its schema, the machine it describes, and when it is stale.

/var/lib/ollama/airllm/calibration.json, version 1:

    {"version": 1, "measured_at": "2026-12-01T20:00:00Z", "quick": false, "duration_s": 21.4,
     "host": {"kernel": "6.12.1-arch1-1", "torch": "2.15.0", "gpu_runtime": "ROCm 7.2.0",
              "cpu_threads": 16, "gpu_set": ["0000:03:00.0 0x1002:0x744c"], "devices": ["cuda:0 AMD ..."]},
     "models_dir": "/var/lib/ollama",
     "rates": {"host_memory_read": {"value": 58.1, "unit": "GB/s", "measured": true, "how": "..."},
               "gpu0.host_to_device": {...}, "gpu.q4_k_gemv": {"value": 17.0, "measured": false,
                                       "why": "no GPU ...", "how": "default: ..."}, ...}}

Rate names: `host_memory_read`, `models_dir_read`, `cpu.q4_k_gemv`, `cpu.q4_k_gemm`, `cpu.q8_0_gemv`,
`cpu.q8_0_gemm`, `cpu.f32_gemm` (plain matmul; all these cpu.* are the engine's own CPU path),
`cpu.llama_weight_read` and `cpu.llama_gemm` (llama.cpp's CPU kernels per thread: always the documented
defaults, as calibrate runs no llama-server; edit them to override), and per GPU N `gpuN.host_to_device`,
`gpuN.memory_read` (VRAM), `gpuN.f16_gemm`, `gpuN.q4_k_gemv`, `gpuN.q4_k_gemm`, `gpuN.q8_0_gemv`,
`gpuN.q8_0_gemm`; `gpu.*` (no index) are the defaults written when no GPU could be measured. GB/s is
1e9 bytes/s; GEMV rates count quantized weight bytes, GEMM rates TFLOP/s. The planner (ollama_airllm.fit,
airllmrunner in Ollama) reads them.
"""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from ..atomicfile import write_atomic
from ..errors import UserError

VERSION = 1
CALIBRATION_PATH = Path("/var/lib/ollama/airllm/calibration.json")
MAX_AGE = timedelta(days=90)
FIX = "sudo ollama-airllm calibrate"


def gpu_set_shell(sysfs: str = "/sys") -> str:
    """A shell command printing the PCI display devices (class 0x03xxxx) as "SLOT VENDOR:DEVICE" lines.

    The doctor runs it on the checked host; gpu_set() reads the same files, so both describe a machine alike.
    """
    return (
        f"for d in {shlex.quote(sysfs)}/bus/pci/devices/*; do case $(cat $d/class 2>/dev/null) in 0x03*) "
        'echo "${d##*/} $(cat $d/vendor):$(cat $d/device)";; esac; done'
    )


class Rate(BaseModel):
    """One number: measured here, or a documented default with the reason it was not measured."""

    model_config = ConfigDict(extra="forbid")
    value: float = Field(ge=0)
    unit: Literal["GB/s", "TFLOP/s"]
    measured: bool
    how: str
    why: str | None = None


class Host(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kernel: str
    torch: str
    gpu_runtime: str | None
    cpu_threads: int
    gpu_set: list[str]
    devices: list[str]


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1]
    measured_at: AwareDatetime
    quick: bool
    duration_s: float
    host: Host
    models_dir: str
    rates: dict[str, Rate]

    def rate(self, name: str, gpu: int | None = None) -> Rate:
        """A rate by name; for a GPU, its own measurement, else the `gpu.` default."""
        if gpu is None:
            return self.rates[name]
        return self.rates.get(f"gpu{gpu}.{name}") or self.rates[f"gpu.{name}"]


def gpu_set(sysfs: Path = Path("/sys")) -> list[str]:
    """This machine's PCI display devices as gpu_set_shell() prints them, sorted."""
    found = []
    for dev in sorted((sysfs / "bus" / "pci" / "devices").glob("*")):
        try:
            if not (dev / "class").read_text().startswith("0x03"):
                continue
            found.append(
                f"{dev.name} {(dev / 'vendor').read_text().strip()}:{(dev / 'device').read_text().strip()}"
            )
        except OSError:
            continue
    return sorted(found)


def save(calibration: Calibration, path: Path) -> None:
    """Write the file atomically (0644: the service reads it), creating its directory."""
    data = (calibration.model_dump_json(indent=2) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, mode=0o644)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def parse(text: str, source: str) -> Calibration:
    """A calibration from its JSON text; a one-line UserError naming `source` when it is not one."""
    try:
        return Calibration.model_validate(json.loads(text))
    except ValueError as exc:  # json.JSONDecodeError and pydantic's ValidationError
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "top level"
            raise UserError(f"{source}: {where}: {first['msg']}") from None
        raise UserError(f"{source}: not JSON ({exc})") from None


def load(path: Path = CALIBRATION_PATH) -> Calibration | None:
    """The calibration at `path`, None when there is none (a damaged file is a UserError)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    return parse(text, str(path))


def staleness(calibration: Calibration, now: datetime, kernel: str, gpus: list[str]) -> list[str]:
    """Why the calibration no longer describes this machine (empty when it still does)."""
    reasons = []
    age = now - calibration.measured_at
    if age > MAX_AGE:
        reasons.append(f"it is {age.days} days old (measured {calibration.measured_at:%Y-%m-%d}; limit 90)")
    if calibration.host.kernel != kernel:
        reasons.append(f"it was taken under kernel {calibration.host.kernel}, this host runs {kernel}")
    if sorted(calibration.host.gpu_set) != sorted(gpus):
        reasons.append(
            f"it was taken with GPUs [{', '.join(calibration.host.gpu_set) or 'none'}], "
            f"this host has [{', '.join(sorted(gpus)) or 'none'}]"
        )
    return reasons


def utc_now() -> datetime:
    return datetime.now(UTC)
