"""Render hardening (issue 13, items 1 and 6): all-or-nothing output, and data directories outside
/var/lib/ollama that are made writable and created when missing but never re-owned."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from ollama_airllm.cli import main
from ollama_airllm.pkggen import render as pkgrender
from ollama_airllm.profile import default_profile_path, profile_from_yaml

DEFAULT_TEXT = default_profile_path().read_text()


def profile_with(models: str = "/var/lib/ollama", cache: str = "/var/lib/ollama/airllm"):
    text = DEFAULT_TEXT.replace("models_dir: /var/lib/ollama\n", f"models_dir: {models}\n")
    return profile_from_yaml(text.replace("cache_dir: /var/lib/ollama/airllm\n", f"cache_dir: {cache}\n"))


def render_cli(out: Path, profile: Path | None = None):
    args = ["render", "-o", str(out)] + (["--profile", str(profile)] if profile else [])
    return CliRunner().invoke(main, args)


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every path below `directory` with its bytes (None for directories)."""
    return {
        str(p.relative_to(directory)): None if p.is_dir() else p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if "__pycache__" not in p.parts
    }


# --- all or nothing -----------------------------------------------------------------------------------------


@pytest.fixture
def rendered(tmp_path) -> Path:
    out = tmp_path / "pkg"
    assert render_cli(out).exit_code == 0
    (out / "notes.txt").write_text("mine\n")  # not the package's: must stay
    other = tmp_path / "other.yaml"
    other.write_text(DEFAULT_TEXT.replace("host: 127.0.0.1:11434", "host: 0.0.0.0:11434"))
    return out


@pytest.mark.parametrize("entry", [".SRCINFO", "ollama-airllm-rocm.install", "PKGBUILD", pkgrender.TARBALL])
def test_failed_render_into_an_existing_directory_leaves_it_unchanged(rendered, entry):
    (rendered / entry).unlink()
    (rendered / entry).mkdir()  # a directory where the package has a file: the render must fail
    before = snapshot(rendered)
    result = render_cli(rendered, rendered.parent / "other.yaml")
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.strip() == (
        f"Error: {rendered / entry} is a directory where the package has a file; "
        "move it away and render again"
    )
    assert snapshot(rendered) == before  # ollama.env still the old one, no staging directory left


def test_rerender_replaces_the_package_and_keeps_other_files(rendered):
    result = render_cli(rendered, rendered.parent / "other.yaml")
    assert result.exit_code == 0, result.output
    assert "OLLAMA_HOST=0.0.0.0:11434\n" in (rendered / "ollama.env").read_text()
    assert (rendered / "notes.txt").read_text() == "mine\n"
    assert not [p.name for p in rendered.iterdir() if p.name.startswith(".") and p.name != ".SRCINFO"]
    assert stat.S_IMODE((rendered / "ollama-airllm.in").stat().st_mode) == 0o755


def test_a_new_directory_appears_complete(tmp_path):
    out = tmp_path / "new" / "pkg"
    assert render_cli(out).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert (out / "PKGBUILD").is_file() and (out / pkgrender.TARBALL).is_file()
    assert [p.name for p in out.parent.iterdir()] == ["pkg"]


# --- data directories ---------------------------------------------------------------------------------------


def test_default_profile_dirs_are_the_packages_own():
    files = pkgrender.render_package(profile_with())
    assert "d /var/lib/ollama/airllm 0750 ollama ollama -\n" in files["ollama.tmpfiles"].text
    unit = files["ollama.service"].text
    assert "ExecStartPre=" not in unit and "ReadWritePaths=" not in unit and "ProtectHome=yes\n" in unit


@pytest.mark.parametrize("unit", ["ollama.service", "ollama-airllm@.service"])
def test_external_disk_directory_is_writable_created_when_missing_never_reowned(unit):
    files = pkgrender.render_package(profile_with("/srv/ollama", "/run/media/me/CACHE1/airllm"))
    tmpfiles = files["ollama.tmpfiles"].text
    assert "/srv/ollama" not in tmpfiles and "/run/media" not in tmpfiles  # tmpfiles `d` would re-own them
    text = files[unit].text
    for path in ("/srv/ollama", "/run/media/me/CACHE1/airllm"):
        assert f"ReadWritePaths={path}\n" in text
        assert f"' mkdir {path}\n" in text
    assert "ProtectHome=yes\n" in text


@pytest.mark.parametrize("unit", ["ollama.service", "ollama-airllm@.service"])
def test_home_directory_is_bound_into_a_tmpfs_home(unit):
    text = pkgrender.render_package(profile_with("/home/me/models", "/home/me/models/airllm"))[unit].text
    assert "ProtectHome=tmpfs\n" in text and "ProtectHome=yes" not in text
    assert "BindPaths=/home/me/models\n" in text and "BindPaths=/home/me/models/airllm\n" in text
    assert "ReadWritePaths=/home" not in text  # ProtectHome= would hide it (systemd issue 7153)


def _create_command(unit_text: str, path: str) -> list[str]:
    """The ExecStartPre= line for `path` as argv, with systemd's `$$` unescaped and our own uid for ollama."""
    line = next(x for x in unit_text.splitlines() if x.startswith("ExecStartPre=+") and x.endswith(path))
    argv = shlex.split(line.removeprefix("ExecStartPre=+").replace("$$", "$"))
    return [arg.replace("ollama:ollama", f"{os.getuid()}:{os.getgid()}") for arg in argv]


def test_create_command_creates_a_missing_leaf_only_and_leaves_existing_dirs_alone(tmp_path):
    # The unit's command, run on paths below tmp_path (same text as rendered for /srv/ollama).
    text = pkgrender.render_package(profile_with("/srv/ollama"))["ollama.service"].text
    argv = _create_command(text, "/srv/ollama")
    assert argv[:2] == ["/usr/bin/sh", "-c"] and argv[-1] == "/srv/ollama"
    run = lambda target: subprocess.run([*argv[:-1], str(target)], capture_output=True, timeout=60)  # noqa: E731
    missing = tmp_path / "models"
    assert run(missing).returncode == 0
    assert stat.S_IMODE(missing.stat().st_mode) == 0o750
    existing = tmp_path / "mine"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o711)
    assert run(existing).returncode == 0
    assert stat.S_IMODE(existing.stat().st_mode) == 0o711  # not re-moded, not re-owned
    no_parent = tmp_path / "unmounted" / "airllm"
    result = run(no_parent)
    assert result.returncode != 0 and not (tmp_path / "unmounted").exists()  # never fakes a mount point
