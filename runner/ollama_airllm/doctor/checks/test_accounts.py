"""The ollama user and group, their access to the GPU groups, and the state directory they own."""

from __future__ import annotations

import shlex

from ollama_airllm.doctor import probe
from ollama_airllm.doctor.outcome import fail, not_applicable

SYSUSERS_FIX = "create it from the package's sysusers.d file: `systemd-sysusers`"
GPU_GROUPS = ("render", "video")


def test_ollama_group(host):
    """the ollama group exists"""
    if not host.group(probe.USER).exists:
        fail(f"there is no {probe.USER} group", SYSUSERS_FIX)


def test_ollama_user(host, profile, facts):
    """the ollama user is a locked system account with the ollama group and the models directory as home"""
    user = host.user(probe.USER)
    if not user.exists:
        fail(f"there is no {probe.USER} user", SYSUSERS_FIX)
    problems = []
    if user.uid >= 1000:
        problems.append(f"uid {user.uid} is not a system uid (below 1000)")
    if user.group != probe.USER:
        problems.append(f"primary group is {user.group}, not {probe.USER}")
    if not user.shell.endswith(("/nologin", "/false")):
        problems.append(f"login shell is {user.shell}, not nologin")
    homes = {"/var/lib/ollama", profile.ollama.models_dir}
    if user.home not in homes:
        problems.append(f"home is {user.home}, not {' or '.join(sorted(homes))}")
    if facts.root and not user.password.startswith(("!", "*")):
        problems.append("it has a usable password (system accounts are locked)")
    if problems:
        fail(
            f"the {probe.USER} user is not as the package declares it: " + "; ".join(problems),
            f"`userdel {probe.USER}` (its files stay) and run `systemd-sysusers` to recreate it",
        )


def test_gpu_groups(host, facts):
    """the ollama service gets the render and video groups (membership or SupplementaryGroups)"""
    facts.require_systemd()
    missing = [g for g in GPU_GROUPS if not host.group(g).exists]
    if missing:
        fail(
            f"group {', '.join(missing)} does not exist, so /dev/kfd and /dev/dri cannot be granted to it",
            "the systemd package creates them: reinstall systemd or run `systemd-sysusers`",
        )
    member_of = set(host.user(probe.USER).groups) if host.user(probe.USER).exists else set()
    for unit in (probe.SERVICE, probe.RUNNER_PROBE_INSTANCE):
        granted = member_of | set(probe.unit_groups(host, unit))
        lacking = [g for g in GPU_GROUPS if g not in granted]
        if lacking:
            fail(
                f"{unit.replace('@doctor', '@')} runs without group {', '.join(lacking)}: where /dev/kfd and "
                "/dev/dri/renderD* are mode 0660 the service cannot open the GPU and Ollama falls back "
                "to the CPU",
                f"add `SupplementaryGroups={' '.join(GPU_GROUPS)}` in a drop-in (`systemctl edit {unit}`) "
                f"or `usermod -aG {','.join(GPU_GROUPS)} {probe.USER}`",
            )


STATE_DIR = "/var/lib/ollama"


def _own(path: str) -> bool:
    """Whether the package owns `path` (tmpfiles.d creates and chowns it), or only creates it when missing."""
    return path == STATE_DIR or path.startswith(f"{STATE_DIR}/")


def test_models_dir(host, profile):
    """the models directory exists and no one but ollama (and its owner) can write into it"""
    path = profile.ollama.models_dir
    d = host.file(path)
    if not d.exists:
        fix = (
            "create it from the package's tmpfiles.d file: `systemd-tmpfiles --create`"
            if _own(path)
            else "start the service (it creates the directory when its parent exists) or create it yourself"
        )
        fail(f"{path} does not exist", fix)
    if not d.is_directory:
        fail(f"{path} is not a directory", "move it away and start the service again")
    problems = []
    if _own(path) and (d.user != probe.USER or d.group != probe.USER):
        problems.append(f"owned by {d.user}:{d.group}")
    if d.mode & 0o002 or (d.mode & 0o020 and d.group != probe.USER):
        problems.append(f"mode {d.mode:o} lets others write into it")
    if problems:
        fail(
            f"{path} is {', '.join(problems)}; it should be {probe.USER}:{probe.USER} 0750 or 0755",
            f"`chown -R {probe.USER}:{probe.USER} {shlex.quote(path)}` and `chmod 0750 {shlex.quote(path)}`",
        )


def test_models_dir_writable(host, profile, facts):
    """the ollama user can write the models directory (or the service can create it)"""
    _check_writable(host, facts, profile.ollama.models_dir, "Ollama cannot store models")


def test_airllm_cache_dir_writable(host, profile, facts):
    """the ollama user can write the runner's cache directory (or the service can create it)"""
    use = "the layer-streaming runner cannot cache split layers"
    _check_writable(host, facts, profile.airllm.cache_dir, use)


def _check_writable(host, facts, path: str, use: str) -> None:
    """Run as ollama: `path` is writable, or missing with a parent that tmpfiles.d or ExecStartPre= fills."""
    facts.require_root()
    if not host.user(probe.USER).exists:
        not_applicable(f"no {probe.USER} user (reported above)")
    quoted = shlex.quote(path)
    if not host.file(path).exists:
        parent = path.rsplit("/", 1)[0] or "/"
        if _own(path) or host.file(parent).is_directory:
            return  # created owned by ollama: by tmpfiles.d, or by the unit's ExecStartPre= when missing
        fail(
            f"{path} does not exist and neither does {parent}, so the service cannot start and {use}",
            f"mount the disk that holds {parent}, or create {parent}",
        )
    if host.run(probe.as_user(probe.USER, [], f"test -w {quoted} && test -x {quoted}")).rc != 0:
        fail(
            f"{probe.USER} cannot write {path}, so {use}",
            f"`chown {probe.USER}:{probe.USER} {quoted}`, or give the {probe.USER} group write access: "
            f"`chgrp {probe.USER} {quoted} && chmod g+rwx {quoted}`",
        )
