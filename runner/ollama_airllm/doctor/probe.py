"""What the checks ask a host (a testinfra `host`): unit properties, process environments, HTTP, commands
run as the ollama user or inside a unit's sandbox.

Every question is a command run on the host through testinfra, so the same checks work on `local://`
and over ssh.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from .envfile import parse_environ

_GROUP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

PACKAGE = "ollama-airllm-rocm"
SERVICE = "ollama.service"
RUNNER_TEMPLATE = "ollama-airllm@.service"
# An instance name used only to read the template's settings; it is never started.
RUNNER_PROBE_INSTANCE = "ollama-airllm@doctor.service"
RUNNER_PATTERN = "ollama-airllm@*.service"
ENV_FILE = "/etc/default/ollama"
OLLAMA_BIN = "/usr/bin/ollama"
RUNNER_BIN = "/usr/lib/ollama/airllm-runner"
USER = "ollama"
PROFILE_PATHS = (
    "/etc/ollama-airllm/profile.yaml",
    "/usr/share/ollama-airllm/packaging/profiles/rx7900xtx.yaml",
)

_HTTP = """
import json, sys, urllib.request
url, body = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=float(sys.argv[3])) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode("utf-8", "replace")}))
except Exception as e:
    print(json.dumps({"status": None, "body": f"{type(e).__name__}: {e}"}))
"""


def unit_props(host: Any, unit: str, *props: str) -> dict[str, str]:
    """`systemctl show` properties of a unit (values as systemd prints them); empty without systemd."""
    args = " ".join(f"-p {p}" for p in props)
    out = host.run(f"systemctl show {args} -- {shlex.quote(unit)}").stdout
    values: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        # Repeated properties (DeviceAllow=) come one per line: keep them all, one per line.
        values[key] = f"{values[key]}\n{value}" if key in values else value
    return values


def active_units(host: Any) -> list[str]:
    """Our units that are running now: ollama.service and any standalone runner instance."""
    return _units_in_state(host, "active")


def failed_units(host: Any) -> list[str]:
    """Our units in the failed state."""
    return _units_in_state(host, "failed")


def _units_in_state(host: Any, state: str) -> list[str]:
    out = host.run(
        f"systemctl list-units --type=service --state={state} --plain --no-legend -- {SERVICE} "
        f"{shlex.quote(RUNNER_PATTERN)}"
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def main_pid_environ(host: Any, unit: str) -> dict[str, str] | None:
    """The environment of a running unit's main process, or None when it has none or it is unreadable."""
    pid = unit_props(host, unit, "MainPID").get("MainPID", "0")
    if pid in {"", "0"}:
        return None
    result = host.run(f"cat /proc/{int(pid)}/environ")
    if result.rc != 0:
        return None
    return parse_environ(result.stdout_bytes)


def unit_pids(host: Any, unit: str) -> set[int]:
    """The PIDs in a unit's control group (unified or legacy hierarchy)."""
    group = unit_props(host, unit, "ControlGroup").get("ControlGroup", "")
    if not group:
        return set()
    path = shlex.quote(group)
    out = host.run(
        f"cat /sys/fs/cgroup{path}/cgroup.procs 2>/dev/null || cat /sys/fs/cgroup/systemd{path}/cgroup.procs"
    ).stdout
    return {int(pid) for pid in out.split() if pid.isdigit()}


def listening_addresses(host: Any, pids: set[int]) -> list[str]:
    """TCP addresses (host:port) that any of `pids` listens on, from `ss -ltnpH`."""
    addresses = []
    for line in host.run("ss -ltnpH").stdout.splitlines():
        fields = line.split()
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if len(fields) >= 4 and owners & pids:
            addresses.append(fields[3])
    return addresses


def journal_tail(host: Any, unit: str, lines: int = 8) -> str:
    """The last journal lines of a unit, indented for a report."""
    out = host.run(f"journalctl -u {shlex.quote(unit)} -n {lines} --no-pager -o cat").stdout.strip()
    return "\n".join("    " + line for line in out.splitlines()) if out else "    (journal is empty)"


def http(host: Any, url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int | None, str]:
    """GET (or POST a JSON body) on the host itself; returns (status or None, body or error text)."""
    python = host.find_command("python3")
    payload = json.dumps(body) if body is not None else ""
    cmd = " ".join(shlex.quote(a) for a in [python, "-c", _HTTP, url, payload, str(timeout)])
    out = host.run(cmd).stdout.strip()
    try:
        answer = json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        return None, out or "no answer"
    return answer["status"], answer["body"]


def is_root(host: Any) -> bool:
    """Whether commands on the host run as root (directly or through --sudo)."""
    return host.run("id -u").stdout.strip() == "0"


def unit_groups(host: Any, unit: str) -> list[str]:
    """The SupplementaryGroups a unit gives its processes."""
    return unit_props(host, unit, "SupplementaryGroups").get("SupplementaryGroups", "").split()


# What decides which devices a service can open and how it sees them, as `systemctl show` names them; each is
# also a property a transient unit takes (`systemd-run -p NAME=VALUE`).
SANDBOX_PROPS = (
    "User",
    "Group",
    "SupplementaryGroups",
    "PrivateUsers",
    "PrivateDevices",
    "DevicePolicy",
    "DeviceAllow",
    "NoNewPrivileges",
    "ProtectKernelTunables",
    "ProtectProc",
    "ProcSubset",
)
_ENV_FILE_RE = re.compile(r"^(\S+) \(ignore_errors=(yes|no)\)$")


def sandbox_args(host: Any, unit: str) -> list[str] | None:
    """`systemd-run` options giving a transient service `unit`'s sandbox (SANDBOX_PROPS).

    None when the unit is not loaded (its properties would be systemd's defaults, not the unit's).
    """
    props = unit_props(host, unit, "LoadState", *SANDBOX_PROPS)
    if props.get("LoadState") != "loaded":
        return None
    return [
        f"--property={name}={value}"
        for name in SANDBOX_PROPS
        for value in props.get(name, "").splitlines()
        if value
    ]


def environment_args(host: Any, unit: str) -> list[str]:
    """`systemd-run` options giving a transient service `unit`'s EnvironmentFile= and Environment= lines."""
    props = unit_props(host, unit, "EnvironmentFiles", "Environment")
    args = []
    for line in props.get("EnvironmentFiles", "").splitlines():
        if found := _ENV_FILE_RE.match(line):
            args.append(f"--property=EnvironmentFile={'-' * (found[2] == 'yes')}{found[1]}")
    return args + [f"--setenv={assignment}" for assignment in shlex.split(props.get("Environment", ""))]


def in_sandbox(args: list[str], command: str) -> str:
    """A command line running `command` (a shell string) as a transient service with `args` (sandbox_args,
    environment_args).

    It waits for the command, passes its output through and exits with its status.
    """
    argv = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", *args, "--", "sh", "-c", command]
    return " ".join(shlex.quote(a) for a in argv)


def as_user(user: str, groups: list[str], command: str) -> str:
    """A command line running `command` (a shell string) as `user`, with its own groups plus `groups`."""
    # setpriv --groups replaces the supplementary list, so the user's own groups go first.
    own = f'$(id -Gn {shlex.quote(user)} | tr " " ",")'
    group_list = ",".join([own, *(g for g in groups if _GROUP_RE.match(g))])
    return (
        f'setpriv --reuid={shlex.quote(user)} --regid={shlex.quote(user)} --groups="{group_list}" '
        f"--reset-env -- sh -c {shlex.quote(command)}"
    )
