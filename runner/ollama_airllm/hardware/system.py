"""System RAM from /proc/meminfo and free disk space where models live."""

from __future__ import annotations

import shutil
from pathlib import Path

from .sysfs import MalformedSysfs, read_small_file


def read_ram_bytes(proc_root: Path) -> int | None:
    """MemTotal from `<proc_root>/proc/meminfo` in bytes; None when the file is absent."""
    path = proc_root / "proc" / "meminfo"
    try:
        text = read_small_file(path).decode("ascii", errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "MemTotal":
            parts = rest.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1] == "kB":
                return int(parts[0]) * 1024
            raise MalformedSysfs(f"{path}: MemTotal should read '<number> kB', got {rest.strip()!r}")
    raise MalformedSysfs(f"{path}: no MemTotal line")


def free_disk_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None
