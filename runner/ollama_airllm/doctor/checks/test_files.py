"""Files and permissions: the package is installed, its files are intact, nothing is writable by others."""

from __future__ import annotations

import shlex

from ollama_airllm.doctor import probe
from ollama_airllm.doctor.outcome import fail, not_applicable

# Files every build of the package installs (the Ollama binary only in full builds: see the Ollama checks).
EXPECTED = (
    "/usr/lib/systemd/system/ollama.service",
    "/usr/lib/systemd/system/ollama-airllm@.service",
    "/usr/lib/sysusers.d/ollama.conf",
    "/usr/lib/tmpfiles.d/ollama.conf",
    probe.ENV_FILE,
    probe.RUNNER_BIN,
    "/usr/bin/ollama-airllm",
)


def test_package_installed(host, facts):
    """the package is installed and owns its files"""
    if not host.exists("pacman"):
        not_applicable("no pacman on this host (not an Arch install)")
    if facts.package is None:
        fail(
            f"pacman does not know the package {probe.PACKAGE}",
            "build and install it: `./build-all.sh`, or `makepkg -si` in the project checkout",
        )
    missing = [path for path in EXPECTED if path not in facts.package_files]
    if missing:
        fail(
            f"package {facts.package} does not ship {', '.join(missing)}",
            "reinstall a current build of the package (`./build-all.sh`)",
        )


def test_profile_found(loaded_profile):
    """a hardware profile to check against is found (the installed one, else the reference profile)"""
    if loaded_profile.profile is None:
        fail(
            f"no usable profile: {loaded_profile.source}",
            "reinstall the package (it installs the profile it was rendered from), or pass --profile FILE",
        )


def test_package_files_intact(host, facts):
    """every installed file is present with the mode, owner and content the package recorded"""
    if facts.package is None:
        not_applicable("pacman does not know the package (see the check above)")
    facts.require_root()
    result = host.run(f"pacman -Qkk {shlex.quote(facts.package)}")
    # Edited backup files (/etc/default/ollama) are expected; pacman reports them as warnings too.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.startswith("warning:") and probe.ENV_FILE not in line
    ]
    if result.rc != 0 and not problems:
        problems = [(result.stderr or result.stdout).strip()]
    if problems:
        fail(
            "pacman -Qkk found altered or missing files:\n" + "\n".join("  " + p for p in problems),
            f"reinstall the package: `pacman -U` the built file, or `pacman -S {facts.package}`",
        )


def test_files_not_writable_by_others(host, facts):
    """no installed file or directory is writable by group or others, and all are owned by root"""
    paths = (
        sorted(facts.package_files) if facts.package_files else [p for p in EXPECTED if host.file(p).exists]
    )
    if not paths:
        not_applicable("nothing of the package is installed")
    quoted = " ".join(shlex.quote(p) for p in paths)
    out = host.run(f"stat -c '%a|%U|%F|%n' -- {quoted} 2>/dev/null").stdout
    bad = []
    for line in out.splitlines():
        mode, owner, kind, path = line.split("|", 3)
        if path == "/var/lib/ollama" or path.startswith("/var/lib/ollama/") or kind == "symbolic link":
            continue  # the state directory belongs to ollama (see its own check)
        if int(mode, 8) & 0o022 or owner != "root":
            bad.append(f"{path} is {owner} mode {mode}")
    if bad:
        fail(
            "installed files writable by non-root users or not owned by root:\n"
            + "\n".join("  " + b for b in bad),
            "restore them: `pacman -Qkk` lists them; `chown root:root` and `chmod go-w` each, or reinstall",
        )
