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


def test_models_dir(host, profile):
    """the models directory belongs to ollama and is not writable by anyone else"""
    path = profile.ollama.models_dir
    d = host.file(path)
    if not d.exists:
        fail(
            f"{path} does not exist",
            "create it from the package's tmpfiles.d file: `systemd-tmpfiles --create`",
        )
    if not d.is_directory:
        fail(f"{path} is not a directory", "move it away and run `systemd-tmpfiles --create`")
    problems = []
    if d.user != probe.USER or d.group != probe.USER:
        problems.append(f"owned by {d.user}:{d.group}")
    if d.mode & 0o002 or d.mode & 0o020:
        problems.append(f"mode {d.mode:o} lets others write into it")
    if problems:
        fail(
            f"{path} is {', '.join(problems)}; it should be {probe.USER}:{probe.USER} 0750 or 0755",
            f"`chown -R {probe.USER}:{probe.USER} {shlex.quote(path)}` and `chmod 0750 {shlex.quote(path)}`",
        )


def test_airllm_cache_dir_writable(host, profile, facts):
    """the ollama user can write the runner's cache directory (or create it)"""
    facts.require_root()
    if not host.user(probe.USER).exists:
        not_applicable(f"no {probe.USER} user (reported above)")
    path = profile.airllm.cache_dir
    target = path if host.file(path).exists else path.rsplit("/", 1)[0] or "/"
    result = host.run(probe.as_user(probe.USER, [], f"test -w {shlex.quote(target)}"))
    if result.rc != 0:
        fail(
            f"{probe.USER} cannot write {target}, so the layer-streaming runner cannot cache split layers",
            f"`chown {probe.USER}:{probe.USER} {shlex.quote(target)}`",
        )
