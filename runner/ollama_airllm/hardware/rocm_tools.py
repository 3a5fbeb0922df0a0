"""Fallbacks for what sysfs lacks, `rocminfo` text and `rocm-smi --showmeminfo vram --json`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass

_AGENT_RE = re.compile(r"^\*+\s*\n\s*Agent\s+\d+\s*\n\*+\s*$", re.MULTILINE)
_FIELD_RE = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9 ()/_-]*?):\s*(.*?)\s*$")
_LEADING_INT_RE = re.compile(r"^([0-9]+)")


@dataclass(frozen=True)
class RocmAgent:
    """One GPU agent from rocminfo."""

    name: str
    marketing_name: str | None
    node: int | None
    chip_id: int | None
    bdfid: int | None
    uuid: str | None
    global_pool_bytes: int | None
    apu: bool


def parse_rocminfo(text: str) -> list[RocmAgent]:
    """The GPU agents in `rocminfo` output (CPU agents dropped; blocks told apart by `Device Type`)."""
    agents = []
    for block in _AGENT_RE.split(text)[1:]:
        top: dict[str, str] = {}
        pool_bytes: int | None = None
        segment = ""
        for line in block.splitlines():
            match = _FIELD_RE.match(line)
            if match is None:
                continue
            indent, key, value = len(match[1]), match[2], match[3]
            if indent <= 2:
                top.setdefault(key, value)
            elif key == "Segment":
                segment = value
            elif (
                key == "Size" and pool_bytes is None and segment.startswith("GLOBAL") and "COARSE" in segment
            ):
                size = _leading_int(value)
                pool_bytes = size * 1024 if size is not None and value.endswith("KB") else size
        if top.get("Device Type") != "GPU":
            continue
        uuid = top.get("Uuid")
        agents.append(
            RocmAgent(
                name=top.get("Name", ""),
                marketing_name=top.get("Marketing Name") or None,
                node=_leading_int(top.get("Node", "")),
                chip_id=_leading_int(top.get("Chip ID", "")),
                bdfid=_leading_int(top.get("BDFID", "")),
                uuid=uuid if uuid and uuid != "GPU-XX" else None,
                global_pool_bytes=pool_bytes,
                apu=top.get("Memory Properties", "") == "APU",
            )
        )
    return agents


def _leading_int(value: str) -> int | None:
    match = _LEADING_INT_RE.match(value.strip())
    return int(match[1]) if match else None


def parse_rocm_smi_vram(text: str) -> dict[int, int]:
    """rocm-smi's own device ordinal -> `VRAM Total Memory (B)` from `rocm-smi --showmeminfo vram --json`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    totals = {}
    for key, fields in data.items():
        match = re.fullmatch(r"card([0-9]+)", key)
        if match is None or not isinstance(fields, dict):
            continue
        raw = fields.get("VRAM Total Memory (B)")
        if isinstance(raw, str | int) and str(raw).isdigit():
            totals[int(match[1])] = int(raw)
    return totals


def run_tool(argv: list[str], timeout: float = 20.0) -> str | None:
    """Output of a ROCm tool, or None when it is not installed or fails."""
    exe = shutil.which(argv[0]) or shutil.which(f"/opt/rocm/bin/{argv[0]}")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
