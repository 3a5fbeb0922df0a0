"""build-all.sh on this (non-Arch) machine: --help, --render-only, the fallback path, failures and reruns."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what build-all.sh needs, so its out/ does not land in the real tree."""
    for name in ("build-all.sh", "pyproject.toml", "README.md", "airllm.patch"):
        shutil.copy2(REPO / name, tmp_path / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("runner", "packaging"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=ignore, symlinks=True)
    (tmp_path / "tests").mkdir()
    shutil.copytree(REPO / "tests/pkg", tmp_path / "tests/pkg", ignore=ignore, symlinks=True)
    return tmp_path


def run(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(checkout / "build-all.sh"), *args], capture_output=True, text=True, timeout=300
    )


def test_help():
    result = subprocess.run([REPO / "build-all.sh", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--profile FILE", "--render-only", "--no-install", "--help"):
        assert option in result.stdout


def test_usage_errors_exit_2(checkout):
    assert run(checkout, "--bogus").returncode == 2
    missing = run(checkout, "--profile", str(checkout / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_render_only_renders_validates_and_says_what_it_skipped(checkout):
    result = run(checkout, "--render-only")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith(
        "SKIPPED makepkg, pacman -U, systemctl enable, calibrate and doctor: --render-only was given"
    )
    assert sum("SKIPPED" in line for line in lines) == 1
    assert [line.split("] ", 1)[1] for line in lines if line.startswith("==> [")] == [
        "prerequisites", "python environment", "render package", "validate package",
    ]  # fmt: skip
    assert (checkout / "out/pkg/PKGBUILD").is_file()
    assert (checkout / "out/pkg/PKGBUILD").read_text() == (REPO / "PKGBUILD").read_text()
    assert "Overall exposure level" in (checkout / "out/logs/04-validate-package.log").read_text()
    # Idempotent: a second run succeeds and leaves the same files.
    again = run(checkout, "--render-only")
    assert again.returncode == 0, again.stdout + again.stderr
    assert (checkout / "out/pkg/PKGBUILD").read_text() == (REPO / "PKGBUILD").read_text()


def test_without_arch_it_falls_back_to_the_reference_profile(checkout):
    result = run(checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(
        "SKIPPED makepkg, pacman -U, systemctl enable, calibrate and doctor: this machine is not Arch Linux"
    )


def test_failing_step_is_named_with_its_log(checkout):
    bad = checkout / "bad.yaml"
    bad.write_text(
        (REPO / "packaging/profiles/rx7900xtx.yaml").read_text().replace("keep_alive: 5m", "keep_alive: soon")
    )
    result = run(checkout, "--render-only", "--profile", str(bad))
    assert result.returncode == 1
    assert "FAILED: render package" in result.stdout
    log = checkout / "out/logs/03-render-package.log"
    assert f"Log: {log}" in result.stdout
    assert "ollama.keep_alive" in log.read_text()
    assert "validate package" not in result.stdout


def test_skipped_checks_are_named_on_the_step_line_and_in_the_last_line(checkout, tmp_path):
    """Without shellcheck, makepkg and systemd-analyze, each skipped check is said with its Arch package."""
    missing = {"shellcheck", "makepkg", "systemd-analyze"}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for entry in dict.fromkeys(os.environ["PATH"].split(os.pathsep)):
        folder = Path(entry)
        if not folder.is_dir():
            continue
        for tool in folder.iterdir():
            target = bin_dir / tool.name
            if tool.name not in missing and not target.exists() and os.access(tool, os.X_OK):
                target.symlink_to(tool)
    assert not any(shutil.which(tool, path=str(bin_dir)) for tool in missing)
    result = subprocess.run(
        ["bash", str(checkout / "build-all.sh"), "--render-only"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": str(bin_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    validate = lines[lines.index("==> [4] validate package") + 1]
    expected = [
        "shellcheck (not installed; Arch package: shellcheck)",
        ".SRCINFO against makepkg --printsrcinfo (makepkg not installed; Arch package: pacman)",
        "systemd-analyze verify and security (not installed; Arch package: systemd)",
    ]
    assert validate.endswith("skipped: " + "; ".join(expected)), validate
    assert lines[-1].endswith("Checks skipped: " + "; ".join(expected) + "."), lines[-1]
