"""detect on broken sysfs trees: symlink loops, directories and FIFOs where files belong (issue 13, item 6).

Each case is one clear line and exit 1, never a traceback or a hang. detect runs in a subprocess with a
timeout, so a read that blocks fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from ollama_airllm.cli import main
from ollama_airllm.hardware.sysfs import MalformedSysfs, read_kfd_gpu_nodes

SYSFS = Path(__file__).parent / "fixtures" / "sysfs"
NODE1 = "sys/class/kfd/kfd/topology/nodes/1"
CARD1 = "sys/class/drm/card1"


def tree(tmp_path: Path, case: str = "rx7900xtx") -> Path:
    target = tmp_path / case
    shutil.copytree(SYSFS / case, target, symlinks=True)
    return target


def detect(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from ollama_airllm.cli import main; main()", "detect"]
    cmd += ["--sysfs-root", str(root), "--proc-root", str(root), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def loop(path: Path) -> None:
    """Replace `path` by a symlink that points at itself."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    os.symlink(path.name, path)


def as_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def as_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def as_device(path: Path) -> None:
    path.unlink()
    os.symlink("/dev/zero", path)  # endless: reading it would never stop


CASES = [
    ("properties loop", f"{NODE1}/properties", loop, "a symlink loop"),
    ("card1/device loop", f"{CARD1}/device", loop, "a symlink loop"),
    ("renderD128 loop", "sys/class/drm/renderD128", loop, "a symlink loop"),
    ("vendor loop", f"{CARD1}/device/vendor", loop, "a symlink loop"),
    ("properties is a directory", f"{NODE1}/properties", as_dir, "is a directory, not a regular file"),
    ("vendor is a directory", f"{CARD1}/device/vendor", as_dir, "is a directory, not a regular file"),
    ("properties is a FIFO", f"{NODE1}/properties", as_fifo, "is a FIFO, not a regular file"),
    ("vendor is a FIFO", f"{CARD1}/device/vendor", as_fifo, "is a FIFO, not a regular file"),
    ("uevent is a FIFO", f"{CARD1}/device/uevent", as_fifo, "is a FIFO, not a regular file"),
    ("meminfo is a FIFO", "proc/meminfo", as_fifo, "is a FIFO, not a regular file"),
    ("vendor is a device", f"{CARD1}/device/vendor", as_device, "is a character device, not a regular"),
]


@pytest.mark.parametrize(("what", "rel", "break_it", "reason"), CASES, ids=[c[0] for c in CASES])
def test_broken_sysfs_is_one_clear_line_exit_1(tmp_path, what, rel, break_it, reason):
    root = tree(tmp_path)
    break_it(root / rel)
    result = detect(root, "-q")
    assert result.returncode == 1, (what, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0] and rel.split("/")[-1] in lines[0], lines


def test_oversized_properties_file_is_refused(tmp_path):
    root = tree(tmp_path)
    path = root / NODE1 / "properties"
    path.write_text(path.read_text() + "x 1\n" * 40000)
    result = detect(root, "-q")
    assert result.returncode == 1 and "larger than 65536 bytes" in result.stderr, result.stderr


def test_saved_tool_output_fifo_is_a_usage_error(tmp_path):
    root = tree(tmp_path)
    fifo = tmp_path / "rocminfo.txt"
    os.mkfifo(fifo)
    result = detect(root, "-q", "--rocminfo-output", str(fifo))
    assert result.returncode == 2, result.stderr
    assert "is a FIFO, not a regular file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("models_dir", "reason"),
    [
        ("/var/lib", "/var/lib is shared"),
        ("/var/cache", "/var/cache is outside those places"),
        ("/home/u", "/home/u is shared"),
        ("/root/x", "/root/x is outside those places"),
        ("/opt/rocm", "/opt/rocm is outside those places"),
        ("/mnt/data", "use e.g. /mnt/data/ollama"),
    ],
)
def test_detect_models_dir_follows_the_profile_rules(models_dir, reason):
    result = CliRunner().invoke(
        main, ["detect", "--sysfs-root", str(SYSFS / "rx7900xtx"), "--models-dir", models_dir]
    )
    assert result.exit_code == 2, result.output
    assert "--models-dir" in result.stderr and reason in result.stderr, result.stderr


def test_detect_accepts_an_external_disk_directory():
    result = CliRunner().invoke(
        main,
        ["detect", "-q", "--sysfs-root", str(SYSFS / "rx7900xtx"), "--proc-root", str(SYSFS / "rx7900xtx"),
         "--models-dir", "/run/media/me/CACHE1/airllm"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "models_dir: /run/media/me/CACHE1/airllm\n" in result.stdout
    assert "cache_dir: /run/media/me/CACHE1/airllm/airllm\n" in result.stdout


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_properties_bytes_give_gpus_or_one_clear_error(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("fuzz")
    node = root / NODE1
    node.mkdir(parents=True)
    (node / "properties").write_bytes(data)
    try:
        read_kfd_gpu_nodes(root)
    except MalformedSysfs as exc:
        assert str(node / "properties") in exc.message and "\n" not in exc.message
