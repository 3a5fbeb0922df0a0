"""Fixtures of the installed-system checks: the profile, and what this host has (Ollama, an AMD GPU, root)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from ollama_airllm.doctor import probe
from ollama_airllm.doctor.outcome import not_applicable
from ollama_airllm.errors import UserError
from ollama_airllm.profile import Profile, default_profile_path, load_profile, profile_from_yaml

AMD_VENDOR = "0x1002"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--oar-profile",
        default=None,
        help="profile YAML on this machine (default: /etc/ollama-airllm/profile.yaml on the checked host)",
    )
    parser.addoption(
        "--oar-calibration",
        default=None,
        help="calibration file on the checked host (default: /var/lib/ollama/airllm/calibration.json)",
    )


# Report order: from "is it installed" to "does the GPU work".
ORDER = (
    "test_files",
    "test_accounts",
    "test_environment",
    "test_service",
    "test_network",
    "test_gpu",
    "test_runner",
    "test_calibration",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.module.__name__.rpartition(".")[2] if item.module else ""
        return ORDER.index(name) if name in ORDER else len(ORDER)

    items.sort(key=rank)


@dataclass(frozen=True)
class HostFacts:
    """What the checks need to know about one host before deciding whether they apply."""

    root: bool
    systemd: bool  # systemd is the running init (not a chroot or a plain container)
    systemd_run: bool  # systemd-run is installed (it runs commands in a unit's sandbox)
    package: str | None  # the installed package's name, if pacman knows it
    package_files: frozenset[str]
    ollama_bin: bool
    amd_gpu: bool
    kfd: bool

    def require_root(self) -> None:
        if not self.root:
            not_applicable("needs root to look inside the service; run `sudo ollama-airllm doctor` or --sudo")

    def require_systemd(self) -> None:
        if not self.systemd:
            not_applicable("systemd is not running on this host (a chroot or a container without an init)")

    def require_sandbox(self) -> None:
        """Checks that run a command with a unit's own sandbox need root, systemd and systemd-run."""
        self.require_root()
        self.require_systemd()
        if not self.systemd_run:
            not_applicable("systemd-run is missing, so no command can run with the unit's own sandbox")

    def require_ollama(self) -> None:
        if not self.ollama_bin:
            not_applicable(
                f"no Ollama binary at {probe.OLLAMA_BIN} and the installed package does not ship one "
                "(a build without the Ollama/HIP part, such as the CI package)"
            )

    def require_gpu(self) -> None:
        if not self.amd_gpu:
            not_applicable("no AMD GPU on this host (no PCI display device with vendor 0x1002)")
        if not self.kfd:
            not_applicable("no /dev/kfd (reported by the KFD check)")


@pytest.fixture(scope="module")
def facts(host: Any) -> HostFacts:
    package = None
    files: frozenset[str] = frozenset()
    if host.exists("pacman"):
        found = host.run(f"pacman -Qq {probe.PACKAGE}")
        if found.rc == 0 and found.stdout.strip():
            package = found.stdout.strip().splitlines()[0]
            listed = host.run(f"pacman -Qlq {package}").stdout.splitlines()
            files = frozenset(path.rstrip("/") for path in listed)
    vendors = host.run("cat /sys/class/drm/card*/device/vendor 2>/dev/null").stdout.split()
    ollama_bin = host.file(probe.OLLAMA_BIN).exists or probe.OLLAMA_BIN in files
    return HostFacts(
        root=probe.is_root(host),
        systemd=host.file("/run/systemd/system").is_directory,
        systemd_run=host.exists("systemd-run"),
        package=package,
        package_files=files,
        ollama_bin=ollama_bin,
        amd_gpu=AMD_VENDOR in vendors,
        kfd=host.file("/dev/kfd").exists,
    )


@dataclass(frozen=True)
class LoadedProfile:
    profile: Profile | None
    source: str  # where it came from, or why there is none


@pytest.fixture(scope="module")
def loaded_profile(host: Any, request: pytest.FixtureRequest) -> LoadedProfile:
    local = request.config.getoption("--oar-profile")
    if local:
        return LoadedProfile(load_profile(local), local)
    for path in probe.PROFILE_PATHS:
        remote = host.file(path)
        if remote.exists:
            try:
                return LoadedProfile(profile_from_yaml(remote.content_string, path), path)
            except UserError as exc:
                return LoadedProfile(None, exc.message)
    try:
        path = default_profile_path()
    except UserError:
        return LoadedProfile(None, f"none of {', '.join(probe.PROFILE_PATHS)} exists on the host")
    return LoadedProfile(load_profile(path), f"{path} (reference profile; none installed on the host)")


@pytest.fixture(scope="module")
def profile(loaded_profile: LoadedProfile) -> Profile:
    if loaded_profile.profile is None:
        not_applicable("no profile to compare with (see the profile check)")
    return loaded_profile.profile
