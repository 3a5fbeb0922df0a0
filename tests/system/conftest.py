"""The container stage's machinery: makepkg as an unprivileged user, a booted systemd-nspawn container
on an overlay of the cached Debian rootfs (tests/setup.d/50-rootfs.sh), and the stage's printed notes.

The host has no systemd as PID 1 and no machined, so the container runs with --register=no --keep-unit;
commands reach it with `nsenter -t <its PID 1> -a`. It is always torn down (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOTFS = os.environ.get("OAR_ROOTFS", "")
BUILD_UID = 65534  # nobody: makepkg refuses to run as root
BUILD_VENV = "/opt/oar-venv"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_VENV = "/opt/oar-host-venv"
SYSTEM_PTH = "/usr/lib/python3/dist-packages/zz-oar-host-venv.pth"
PYVER = f"python{sys.version_info[0]}.{sys.version_info[1]}"

# Arch's systemd package ships alpm hooks that run these after every transaction touching the
# matching paths (20-systemd-sysusers.hook, 35-systemd-tmpfiles.hook, 30-systemd-daemon-reload-system.hook).
# Debian's pacman has no systemd hooks, so the stage installs equivalents before `pacman -U`.
ALPM_HOOKS = {
    "20-systemd-sysusers.hook": ("Install Upgrade", "usr/lib/sysusers.d/*.conf", "/usr/bin/systemd-sysusers"),
    "30-systemd-daemon-reload-system.hook": (
        "Install Upgrade Remove",
        "usr/lib/systemd/system/*",
        "/usr/bin/systemctl daemon-reload",
    ),
    "35-systemd-tmpfiles.hook": (
        "Install Upgrade",
        "usr/lib/tmpfiles.d/*.conf",
        "/usr/bin/systemd-tmpfiles --create",
    ),
}


def _hook_text(operations: str, target: str, command: str) -> str:
    ops = "".join(f"Operation = {op}\n" for op in operations.split())
    return (
        f"[Trigger]\nType = Path\n{ops}Target = {target}\n\n"
        f"[Action]\nDescription = {command}\nWhen = PostTransaction\nExec = {command}\n"
    )


class StageNotes:
    """Lines the stage prints at the end of the run (exposure scores, wall time, what was not built)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.started = time.monotonic()

    def add(self, line: str) -> None:
        self.lines.append(line)


_NOTES = StageNotes()


@pytest.fixture(scope="session")
def stage_notes() -> StageNotes:
    return _NOTES


def pytest_terminal_summary(terminalreporter) -> None:
    if _NOTES.lines:
        terminalreporter.section("container stage")
        for line in _NOTES.lines:
            terminalreporter.write_line(line)


def unavailable(reason: str) -> None:
    """Skip with the reason on a developer machine; under CI (CI set) a missing prerequisite fails the run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; under CI the container stage must run (tests/run.sh sets it up)")
    pytest.skip(reason)


def require_container_host() -> None:
    """Skip (fail under CI) with the reason when this machine cannot run the stage."""
    if os.geteuid() != 0:
        unavailable("the container stage needs root (systemd-nspawn, overlay mounts)")
    missing = [t for t in ("systemd-nspawn", "nsenter", "makepkg", "debootstrap") if shutil.which(t) is None]
    if missing:
        unavailable(f"missing tools: {', '.join(missing)} (tests/setup.d/10-apt.sh installs them)")
    if not ROOTFS or not Path(ROOTFS, "usr/lib/systemd/systemd").exists():
        unavailable(f"no cached rootfs at OAR_ROOTFS={ROOTFS!r} (tests/setup.d/50-rootfs.sh builds it)")


# --- makepkg as an unprivileged user -----------------------------------------------------------------------


def makepkg(pkgbuild_dir: Path, out_dir: Path) -> list[Path]:
    """Build with makepkg as `nobody`; returns the package files.

    The build runs this venv's Python (the project needs a newer setuptools than Debian's) as `python3`, seen
    at /opt/oar-venv. A private mount namespace puts empty tmpfs on /root and /opt and binds back only the
    venv and the interpreter it was made from, read-only: the build user sees nothing else of root's home.
    """
    work = Path(tempfile.mkdtemp(prefix="oar-makepkg-"))
    src = work / "build"
    shutil.copytree(pkgbuild_dir, src, symlinks=True)
    for sub in ("srcdest", "builddir", "out"):
        (work / sub).mkdir()
    for dirpath, dirnames, filenames in os.walk(work):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), BUILD_UID, BUILD_UID)
    os.chmod(work, 0o755)
    venv, base = os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)
    stage = work / "toolchain"
    mounts = [
        f"mkdir -p {stage}/venv {stage}/base",
        f"mount --bind -o ro {shlex.quote(venv)} {stage}/venv",
        f"mount --bind -o ro {shlex.quote(base)} {stage}/base",
        "mount -t tmpfs -o mode=0755,size=1m oar-root /root",
        "mount -t tmpfs -o mode=0755,size=1m oar-opt /opt",
        f"mkdir -p {BUILD_VENV} {shlex.quote(base)}",
        f"mount --bind {stage}/venv {BUILD_VENV}",
        f"mount --bind {stage}/base {shlex.quote(base)}",
    ]
    env = {
        "HOME": str(work),
        "PATH": f"{BUILD_VENV}/bin:/usr/bin:/bin",
        "PKGDEST": str(work / "out"),
        "SRCDEST": str(work / "srcdest"),
        "BUILDDIR": str(work / "builddir"),
        "PKGEXT": ".pkg.tar.zst",
        "LANG": "C.UTF-8",
    }
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    build = (
        f"cd {src} && setpriv --reuid={BUILD_UID} --regid={BUILD_UID} --clear-groups "
        f"env -i {assignments} makepkg --nodeps --noconfirm --cleanbuild"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", "\n".join([*mounts, build])],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        if result.returncode != 0:
            raise AssertionError(
                f"makepkg failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        moved = []
        for pkg in sorted((work / "out").glob("*.pkg.tar.zst")):
            target = out_dir / pkg.name
            shutil.move(pkg, target)
            os.chown(target, 0, 0)
            moved.append(target)
        return moved
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- the container -----------------------------------------------------------------------------------------


class Container:
    """A booted systemd-nspawn container on a throwaway overlay of the cached rootfs."""

    def __init__(self, rootfs: str, venv: str) -> None:
        self.rootfs = rootfs
        self.venv = venv
        self.name = f"oar-ci-{uuid.uuid4().hex[:8]}"
        self.work = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.root = self.work / "root"
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def host_path(self, path: str) -> Path:
        """Where a path inside the container is, seen from the host (writes land in the overlay)."""
        return self.root / path.lstrip("/")

    def start(self, timeout: float = 120) -> None:
        for d in ("upper", "work", "root"):
            (self.work / d).mkdir()
        subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.rootfs},upperdir={self.work / 'upper'},workdir={self.work / 'work'}",
                str(self.root),
            ],
            check=True,
        )
        self._prepare()
        log = open(self.work / "console.log", "wb")  # noqa: SIM115 (kept open while the container runs)
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--boot",
                f"--machine={self.name}",
                f"--directory={self.root}",
                "--private-network",
                "--console=pipe",
                f"--bind-ro={self.venv}:{HOST_VENV}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the container did not start:\n{self.console()}")
            self.leader = self._find_leader()
            time.sleep(0.2)
        while True:
            state = self.run(
                "systemctl is-system-running --wait", check=False, timeout=timeout
            ).stdout.strip()
            if state in {"running", "degraded"} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if state != "running":
            failed = self.run("systemctl --failed --no-legend --plain", check=False).stdout
            raise AssertionError(f"the container booted {state!r}; failed units:\n{failed}")

    def _prepare(self) -> None:
        # The container has loopback only (--private-network): network-online.target, which the units want,
        # would wait 2 minutes for systemd-networkd-wait-online to give up.
        self.host_path("/etc/systemd/system/systemd-networkd-wait-online.service").symlink_to("/dev/null")
        hooks = self.host_path("/etc/pacman.d/hooks")
        hooks.mkdir(parents=True, exist_ok=True)
        for name, spec in ALPM_HOOKS.items():
            (hooks / name).write_text(_hook_text(*spec))
        conf = self.host_path("/etc/pacman.conf")
        conf.write_text(
            conf.read_text().replace("[options]\n", "[options]\nHookDir = /etc/pacman.d/hooks/\n", 1)
        )
        self.host_path("/var/lib/pacman").mkdir(parents=True, exist_ok=True)
        # Arch's python-* packages (torch, transformers, fastapi...) stand in as the host venv: the
        # container's python3 (the venv's minor version) gets its site-packages at the end of sys.path.
        self.host_path(SYSTEM_PTH).write_text(f"{HOST_VENV}/lib/{PYVER}/site-packages\n")

    def _find_leader(self) -> int:
        assert self.proc is not None
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
            if fields.get("PPid", "").strip() == str(self.proc.pid) and fields.get("NSpid", "").split()[
                -1:
            ] == ["1"]:
                return int(status.parent.name)
        return 0

    def run(
        self, command: str, check: bool = True, timeout: float = 300, user: str | None = None, stdin: str = ""
    ):
        """Run a shell command inside the container as root (or `user`), with a clean environment."""
        if user:
            command = f"setpriv --reuid={user} --regid={user} --init-groups sh -c {shlex.quote(command)}"
        argv = [
            "nsenter",
            "-t",
            str(self.leader),
            "-a",
            "--",
            "env",
            "-i",
            f"PATH={CONTAINER_PATH}",
            "LANG=C.UTF-8",
            "HOME=/root",
            "sh",
            "-c",
            command,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the container, `{command}` exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                f"{result.stderr[-3000:]}"
            )
        return result

    def write(self, path: str, text: str) -> None:
        """Write a file inside the running container (its /run and /tmp are not in the overlay)."""
        self.run(f"cat > {shlex.quote(path)}", stdin=text)

    def console(self) -> str:
        try:
            return (self.work / "console.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # Killing the container's PID 1 ends every process in its PID namespace.
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(timeout=10)
        if os.path.ismount(self.root):
            subprocess.run(["umount", str(self.root)], check=False)
            if os.path.ismount(self.root):
                subprocess.run(["umount", "--lazy", str(self.root)], check=False)
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(scope="module")
def container():
    """A booted container for one test module; always torn down."""
    require_container_host()
    box = Container(ROOTFS, os.path.realpath(sys.prefix))

    def on_sigterm(signum, frame):  # a CI timeout: tear down, then die as asked
        box.stop()
        signal.signal(signum, previous)
        os.kill(os.getpid(), signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm) or signal.SIG_DFL
    try:
        box.start()
        yield box
    finally:
        signal.signal(signal.SIGTERM, previous)
        box.stop()


# --- the package pair and the pacman steps -----------------------------------------------------------------

CI_PROFILE = Path(__file__).resolve().parents[2] / "packaging" / "profiles" / "rx6700xt.yaml"


@dataclass
class Packages:
    """The CI variant built twice: pkgrel N and N+1 (with a different /etc/default/ollama)."""

    first: Path
    second: Path
    second_version: str


def render_ci_variant(dest: Path, profile: Path, pkgrel: int, keep_alive: str | None = None) -> Path:
    """`ollama-airllm render --variant runner-only` into `dest` at `pkgrel` (optionally other keep_alive)."""
    from ollama_airllm.pkggen.render import render_package, write_package
    from ollama_airllm.profile import load_profile, validate_profile

    loaded = load_profile(profile)
    if keep_alive is not None:
        data = loaded.model_dump(mode="json")
        data["ollama"]["keep_alive"] = keep_alive
        loaded = validate_profile(data, f"{profile} with keep_alive {keep_alive}")
    write_package(render_package(loaded, "runner-only"), dest)
    pkgbuild = dest / "PKGBUILD"
    text = pkgbuild.read_text()
    assert "\npkgrel=1\n" in text
    pkgbuild.write_text(text.replace("\npkgrel=1\n", f"\npkgrel={pkgrel}\n"))
    return dest


@pytest.fixture(scope="module")
def packages(tmp_path_factory, stage_notes):
    """The CI variant for pkgrel 1 and 2; the stage's wall time is measured from here to the teardown."""
    require_container_host()
    root = tmp_path_factory.mktemp("ci-package")
    started = time.monotonic()
    first = makepkg(render_ci_variant(root / "src1", CI_PROFILE, 1), root / "out")
    second = makepkg(render_ci_variant(root / "src2", CI_PROFILE, 2, keep_alive="10m"), root / "out2")
    stage_notes.add(
        f"rendered the runner-only variant from {CI_PROFILE.name} (it has an HSA override); pkgrel 2 has "
        "keep_alive 10m, so /etc/default/ollama differs"
    )
    stage_notes.add(
        f"makepkg (as nobody) built {', '.join(p.name for p in first + second)} in "
        f"{time.monotonic() - started:.1f} s"
    )
    stage_notes.add(
        "NOT built here: Ollama v0.34.4 with its ROCm/HIP backend (no ROCm toolchain or GPU here); "
        "the CI variant leaves /usr/bin/ollama out"
    )
    # name-pkgver-pkgrel-arch.pkg.tar.zst
    yield Packages(first[0], second[0], "-".join(second[0].name.split("-")[-3:-1]))
    stage_notes.add(
        f"container stage wall time: {time.monotonic() - started:.1f} s "
        "(build, boot, install, checks, upgrade, remove, teardown)"
    )
