"""Static checks of the rendered package with the real tools: bash -n, shellcheck, makepkg --printsrcinfo,
systemd-analyze verify/security, and a real makepkg build of the runner-only variant.

makepkg refuses to run as root, so as root these tests run it as the unprivileged user `nobody` (runuser) on a
copy of the files that user owns; as any other user they run it directly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from ollama_airllm.pkggen import render as pkgrender
from ollama_airllm.profile import load_profile

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "packaging" / "profiles").glob("*.yaml"))
BUILD_USER = "nobody"
MAX_EXPOSURE = 3.0
BUILD_TOOLS = ("setuptools", "build", "installer", "wheel")


def unavailable(reason: str) -> None:
    """Skip with the reason on a developer machine; under CI (CI set) a missing prerequisite fails the run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; under CI every static check must run (tests/run.sh sets it up)")
    pytest.skip(reason)


def need(tool: str) -> str:
    """The path of `tool`, or skip (fail under CI) saying which setup step installs it."""
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} is not installed (tests/setup.d/10-apt.sh installs it)")
    return path


@pytest.fixture(scope="module")
def shared_tmp() -> Iterator[Path]:
    """A temp dir the build user can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="oar-pkg-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def render_to(profile: Path, variant: str, out: Path) -> Path:
    files = pkgrender.render_package(load_profile(profile), variant)
    return pkgrender.write_package(files, out)


def as_builder(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in `cwd` as a non-root user; `cwd` is handed to that user first."""
    base_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(cwd)}
    base_env.update(env or {})
    if os.geteuid() == 0:
        need("runuser")
        subprocess.run(["chown", "-R", f"{BUILD_USER}:", str(cwd)], check=True)
        cmd = [
            "runuser",
            "-u",
            BUILD_USER,
            "--",
            "env",
            "-i",
            *[f"{k}={v}" for k, v in base_env.items()],
            *cmd,
        ]
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **base_env}
    )


@pytest.mark.parametrize("name", ["PKGBUILD", "ollama-airllm-rocm.install", "build-all.sh"])
def test_committed_shell_files_pass_bash_n_and_shellcheck(name):
    subprocess.run(["bash", "-n", REPO / name], check=True)
    shellcheck = need("shellcheck")
    result = subprocess.run([shellcheck, "-x", "-s", "bash", name], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_committed_wrappers_pass_shellcheck():
    shellcheck = need("shellcheck")
    result = subprocess.run(
        [shellcheck, "airllm-runner.in", "ollama-airllm.in"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def render_files_only(profile: Path, variant: str, out: Path) -> Path:
    """Just the rendered files (no project tree): enough for the static checks."""
    out.mkdir(parents=True)
    out.chmod(0o755)
    for name, rendered in pkgrender.render_package(load_profile(profile), variant).items():
        (out / name).write_bytes(rendered.data)
    return out


@pytest.mark.parametrize("variant", pkgrender.VARIANTS)
def test_printsrcinfo_and_shellcheck_on_every_profile(variant, shared_tmp):
    """Every profile for the real package; the runner-only variant does not depend on the profile's GPUs."""
    makepkg, shellcheck = need("makepkg"), need("shellcheck")
    profiles = PROFILES if variant == "full" else [REPO / "packaging/profiles/rx7900xtx.yaml"]
    dirs = [render_files_only(p, variant, shared_tmp / f"{p.stem}-{variant}") for p in profiles]
    scripts = [d / name for d in dirs for name in ("PKGBUILD", "ollama-airllm-rocm.install")]
    for script in scripts:
        subprocess.run(["bash", "-n", script], check=True)
    result = subprocess.run([shellcheck, "-s", "bash", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda out: as_builder([makepkg, "--printsrcinfo"], out), dirs))
    for out, result in zip(dirs, results, strict=True):
        assert result.returncode == 0, f"{out.name}: {result.stderr}"
        assert result.stdout == (out / ".SRCINFO").read_text(), out.name


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_units_verify_and_score_at_most_3(profile, shared_tmp):
    analyze = need("systemd-analyze")
    out = render_files_only(profile, "full", shared_tmp / f"units-{profile.stem}")
    # A root with the host's units (for sysinit.target & co.), the two units and stand-ins for their binaries.
    root = shared_tmp / f"root-{profile.stem}"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    for exe in ("ollama", "ollama-airllm"):
        (root / "usr/bin" / exe).write_text("#!/bin/sh\n")
        (root / "usr/bin" / exe).chmod(0o755)
    for unit in ("ollama.service", "ollama-airllm@.service"):
        shutil.copy(out / unit, root / "usr/lib/systemd/system" / unit)
    verify = subprocess.run(
        [analyze, "verify", f"--root={root}", "ollama.service", "ollama-airllm@test.service"],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    for unit in ("ollama.service", "ollama-airllm@.service"):
        security = subprocess.run(
            [analyze, "security", "--offline=true", str(out / unit)], capture_output=True, text=True
        )
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
        assert match, security.stdout + security.stderr
        assert float(match[1]) <= MAX_EXPOSURE, security.stdout


@pytest.mark.slow
def test_runner_only_variant_builds_with_real_makepkg(shared_tmp):
    """The CI variant builds end to end with Debian's makepkg (as an unprivileged user)."""
    makepkg = need("makepkg")
    wheels = os.environ.get("OAR_PYBUILD_WHEELS")
    if not wheels or not Path(wheels).is_dir():
        unavailable(f"no wheels at OAR_PYBUILD_WHEELS={wheels!r} (tests/setup.d/25-pkgbuild-wheels.sh)")
    work = shared_tmp / "build"
    work.mkdir()
    # The build user's python3: Debian's, with build tools new enough for pyproject.toml (PEP 639 license).
    subprocess.run(["/usr/bin/python3", "-m", "venv", work / "venv"], check=True)
    subprocess.run(
        [work / "venv/bin/pip", "install", "-q", "--no-index", "--find-links", wheels, "-U", *BUILD_TOOLS],
        check=True,
    )
    out = render_to(REPO / "packaging/profiles/rx7900xtx.yaml", "runner-only", work / "pkg")
    result = as_builder([makepkg, "--nodeps", "--noconfirm"], out, {"PATH": f"{work}/venv/bin:/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (package,) = out.glob("ollama-airllm-rocm-*-any.pkg.tar*")
    listing = subprocess.run(["bsdtar", "-tf", package], capture_output=True, text=True, check=True).stdout
    for path in (
        "usr/bin/ollama-airllm", "usr/lib/ollama/airllm-runner", "etc/default/ollama",
        "etc/ollama-airllm/profile.yaml",
        "usr/lib/systemd/system/ollama.service", "usr/lib/systemd/system/ollama-airllm@.service",
        "usr/lib/sysusers.d/ollama.conf", "usr/lib/tmpfiles.d/ollama.conf",
        "usr/share/ollama-airllm/packaging/profiles/rx7900xtx.yaml",
        "usr/share/ollama-airllm/packaging/templates/PKGBUILD.full.j2",
        "usr/share/ollama-airllm/airllm.patch",
        "usr/share/ollama-airllm/pyproject.toml", "usr/share/ollama-airllm/runner/ollama_airllm/cli.py",
    ):  # fmt: skip
        assert f"\n{path}\n" in f"\n{listing}", path
    assert re.search(
        r"^usr/lib/ollama-airllm/lib/python3\.\d+/site-packages/ollama_airllm/cli\.py$", listing, re.M
    )
    assert "usr/bin/ollama\n" not in listing  # the Ollama part is not in this variant
    assert not re.search(r"^usr/lib/ollama-airllm/bin/", listing, re.M)  # pywheels.py dropped the scripts
    # The installed project tree is the checksummed source archive, file for file (no build leftovers).
    with tarfile.open(out / pkgrender.TARBALL) as tar:
        archived = {m.name.split("/", 1)[1] for m in tar.getmembers()}
    installed = {p.removeprefix("usr/share/ollama-airllm/") for p in listing.splitlines()
                 if p.startswith("usr/share/ollama-airllm/") and not p.endswith("/")}  # fmt: skip
    assert installed == archived | {"airllm.patch"}
    runner = subprocess.run(["bsdtar", "-xOf", package, "usr/lib/ollama/airllm-runner"], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert "@SITE@" not in runner and "/usr/lib/ollama-airllm/lib/python3" in runner


def test_a_missing_tool_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"oar-no-such-tool is not installed .*under CI"):
        need("oar-no-such-tool")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="oar-no-such-tool is not installed"):
        need("oar-no-such-tool")
