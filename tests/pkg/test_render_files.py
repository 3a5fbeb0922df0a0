"""`ollama-airllm render`: the files it writes, their contents, atomic output, errors, the committed copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from ollama_airllm.cli import main
from ollama_airllm.pkggen import render as pkgrender
from ollama_airllm.pkggen.sources import PRIVATE_PYTHON
from ollama_airllm.profile import default_profile_path, load_profile

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "packaging" / "profiles").glob("*.yaml"))
COMMITTED = ("PKGBUILD", ".SRCINFO", "ollama-airllm-rocm.install", *pkgrender.AUX_FILES, pkgrender.TARBALL)
ENV_LINE = re.compile(r"^[A-Z_][A-Z0-9_]*=[A-Za-z0-9_./:,+@\[\]-]*$")


@pytest.fixture(scope="module")
def default_files() -> dict[str, pkgrender.RenderedFile]:
    return pkgrender.render_package(load_profile(default_profile_path()))


def test_committed_top_level_files_equal_render_output(default_files):
    stale = [name for name in COMMITTED if (REPO / name).read_bytes() != default_files[name].data]
    assert not stale, f"re-render with `ollama-airllm render -o .`: {stale} differ from the committed files"


def test_committed_wrappers_are_executable():
    for name in ("airllm-runner.in", "ollama-airllm.in", "build-all.sh"):
        assert (REPO / name).stat().st_mode & 0o111, name


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("variant", pkgrender.VARIANTS)
def test_env_file_is_systemd_environmentfile_syntax(profile, variant):
    env = pkgrender.render_package(load_profile(profile), variant)["ollama.env"].text
    lines = [line for line in env.splitlines() if line and not line.startswith("#")]
    bad = [line for line in lines if not ENV_LINE.fullmatch(line)]
    assert not bad
    keys = [line.split("=", 1)[0] for line in lines]
    assert len(keys) == len(set(keys))
    assert {"OLLAMA_HOST", "OLLAMA_MODELS", "ROCR_VISIBLE_DEVICES", "OLLAMA_AIRLLM", "AIRLLM_FORCE"} <= set(
        keys
    )
    assert "OLLAMA_AIRLLM_RUNNER=/usr/lib/ollama/airllm-runner" in lines


def test_env_file_values_follow_the_profile():
    env = pkgrender.render_package(load_profile(REPO / "packaging/profiles/rx6700xt.yaml"))["ollama.env"].text
    profile = load_profile(REPO / "packaging/profiles/rx6700xt.yaml")
    assert f"HSA_OVERRIDE_GFX_VERSION={profile.hsa_override_gfx_version}\n" in env
    assert f"ROCR_VISIBLE_DEVICES={profile.rocr_visible_devices}\n" in env
    default_env = pkgrender.render_package(load_profile(default_profile_path()))["ollama.env"].text
    assert "HSA_OVERRIDE_GFX_VERSION" not in default_env
    assert "OLLAMA_FLASH_ATTENTION=1\n" in default_env


def test_pkgbuild_pins_and_targets(default_files):
    pkgbuild = default_files["PKGBUILD"].text
    assert "pkgname=ollama-airllm-rocm\n" in pkgbuild
    assert "\npkgver=0.34.4.oar0.1.0\npkgrel=1\n" in pkgbuild  # Ollama's version, then ours
    assert "_targets=gfx1100\n" in pkgbuild
    assert (
        "git+https://github.com/ollama/ollama.git#commit=b2da9e468af2479058ae18c6d908ed29de410684" in pkgbuild
    )
    assert "llama.cpp.git#tag=b11081" in pkgbuild
    assert "provides=(ollama=0.34.4 ollama-rocm=0.34.4)" in pkgbuild
    assert "backup=(etc/default/ollama etc/ollama-airllm/profile.yaml)" in pkgbuild
    for src in PRIVATE_PYTHON:
        assert re.fullmatch(r"[0-9a-f]{64}", src.sha256), src.name
        assert f"  {src.sha256}\n" in pkgbuild
    # Never pip at build or run time; never bundle ROCm.
    assert "pip install" not in pkgbuild
    assert "RUNTIME_DEPENDENCY_SET" not in pkgbuild or "not its install() rules" in pkgbuild


def test_local_source_checksums_match_the_files(default_files):
    import hashlib

    srcinfo = default_files[".SRCINFO"].text
    sources = re.findall(r"^\tsource = (.*)$", srcinfo, re.M)
    sums = re.findall(r"^\tsha256sums = (.*)$", srcinfo, re.M)
    assert len(sources) == len(sums)
    for source, digest in zip(sources, sums, strict=True):
        if "://" in source:
            continue
        assert hashlib.sha256(default_files[source].data).hexdigest() == digest, source


def test_runner_only_variant_says_what_it_leaves_out():
    files = pkgrender.render_package(load_profile(default_profile_path()), "runner-only")
    pkgbuild = files["PKGBUILD"].text
    assert "the Ollama/HIP part is NOT built in this variant" in pkgbuild
    assert "git+https" not in pkgbuild and "cmake" not in pkgbuild.split("build()")[1]
    assert "arch=(any)" in pkgbuild


def test_install_script_has_only_messages(default_files):
    script = default_files["ollama-airllm-rocm.install"].text
    assert set(re.findall(r"^(\w+)\(\)", script, re.M)) == {
        "_oar_next_steps",
        "post_install",
        "post_upgrade",
        "pre_remove",
    }
    for forbidden in ("useradd", "groupadd", "usermod", "systemctl enable", "mkdir", "chown"):
        assert not re.search(rf"^\s*{forbidden}", script, re.M), forbidden


def test_units_keep_the_gpu_reachable(default_files):
    for name in ("ollama.service", "ollama-airllm@.service"):
        unit = default_files[name].text
        assert "DevicePolicy=closed" in unit
        assert "DeviceAllow=/dev/kfd rw" in unit and "DeviceAllow=char-drm rw" in unit
        assert "SupplementaryGroups=render video" in unit
        assert "EnvironmentFile=-/etc/default/ollama" in unit
        settings = [line for line in unit.splitlines() if not line.startswith("#")]
        assert not [
            line for line in settings if line.startswith(("PrivateDevices=", "MemoryDenyWriteExecute="))
        ]
    assert "EnvironmentFile=/etc/ollama-airllm/%i.conf" in default_files["ollama-airllm@.service"].text


def test_models_dir_outside_state_directory_is_writable_and_created(tmp_path):
    text = (
        default_profile_path().read_text().replace("models_dir: /var/lib/ollama", "models_dir: /srv/ollama")
    )
    profile_file = tmp_path / "p.yaml"
    profile_file.write_text(text)
    files = pkgrender.render_package(load_profile(profile_file))
    assert "ReadWritePaths=/srv/ollama\n" in files["ollama.service"].text
    assert "/srv/ollama" not in files["ollama.tmpfiles"].text  # not the package's: never re-owned at boot
    assert "chown -h ollama:ollama -- \"$$1\"; }' mkdir /srv/ollama\n" in files["ollama.service"].text
    assert "OLLAMA_MODELS=/srv/ollama\n" in files["ollama.env"].text


def test_render_cli_writes_a_self_contained_directory(tmp_path):
    out = tmp_path / "pkg"
    result = CliRunner().invoke(main, ["render", "-o", str(out)])
    assert result.exit_code == 0, result.output
    for name in (*COMMITTED, "airllm.patch", "profile.yaml"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.is_dir()]  # the project's tree travels as the tarball
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]  # no temp dir left behind
    # Again into the existing directory: files replaced in place, no temp files left.
    result = CliRunner().invoke(main, ["render", "-o", str(out), "--variant", "runner-only"])
    assert result.exit_code == 0, result.output
    assert "Ollama/HIP part is not built" in result.output
    assert "arch=(any)" in (out / "PKGBUILD").read_text()
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".pkg")]


def test_bad_profile_is_a_usage_error_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(default_profile_path().read_text().replace("host: 127.0.0.1:11434", "host: '$(reboot)'"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["render", "--profile", str(bad), "-o", str(out)])
    assert result.exit_code == 2
    assert "ollama.host" in result.output and "Traceback" not in result.output
    assert not out.exists()
    missing = CliRunner().invoke(main, ["render", "--profile", str(tmp_path / "nope.yaml"), "-o", str(out)])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_missing_patch_is_a_clear_error(tmp_path):
    profile = load_profile(default_profile_path())
    for variant in pkgrender.VARIANTS:
        with pytest.raises(pkgrender.RenderError, match=r"cannot read .*airllm\.patch"):
            pkgrender.render_package(profile, variant, root=tmp_path)
