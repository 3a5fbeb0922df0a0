"""The systemd units: loaded, allowed to reach the GPU, and (for Ollama) enabled and running."""

from __future__ import annotations

from ollama_airllm.doctor import probe
from ollama_airllm.doctor.outcome import fail

_GPU_DEVICES = (("/dev/kfd", "char-kfd"), ("/dev/dri/renderD", "char-drm"))


def test_units_loaded(host, facts):
    """ollama.service and the runner unit template are installed and load without errors"""
    facts.require_systemd()
    for unit in (probe.SERVICE, probe.RUNNER_PROBE_INSTANCE):
        props = probe.unit_props(host, unit, "LoadState", "LoadError")
        if props.get("LoadState") != "loaded":
            name = unit.replace("@doctor", "@")
            fail(
                f"{name} is {props.get('LoadState')} {props.get('LoadError', '')}".strip(),
                "reinstall the package, then `systemctl daemon-reload`; a `masked` unit needs "
                f"`systemctl unmask {name}`",
            )


def test_ollama_enabled_and_active(host, facts):
    """ollama.service is enabled and running"""
    facts.require_systemd()
    facts.require_ollama()
    service = host.service(probe.SERVICE)
    if not service.is_enabled:
        fail(f"{probe.SERVICE} is not enabled", "`systemctl enable --now ollama`")
    if not service.is_running:
        fail(
            f"{probe.SERVICE} is not running; its last log lines:\n"
            + probe.journal_tail(host, probe.SERVICE),
            "fix what the log says, then `systemctl restart ollama`",
        )


def test_no_failed_units(host, facts):
    """no ollama or runner unit is in the failed state"""
    facts.require_systemd()
    failed = probe.failed_units(host)
    if failed:
        logs = "\n".join(f"  {u}:\n" + probe.journal_tail(host, u) for u in failed)
        fail(
            f"failed units: {', '.join(failed)}\n{logs}",
            "fix what the log says, then `systemctl reset-failed` and start them again",
        )


def _allows(device_allow: str, node: str, group: str) -> bool:
    """Whether DeviceAllow= entries grant read-write on a device node (by path or by device group)."""
    for entry in device_allow.splitlines():
        spec, _, access = entry.partition(" ")
        if "r" in access and "w" in access and (spec == group or spec.startswith(node)):
            return True
    return False


def test_units_can_reach_gpu_devices(host, facts):
    """the units do not hide /dev/kfd and /dev/dri from the service (PrivateDevices, DevicePolicy)"""
    facts.require_systemd()
    for unit in (probe.SERVICE, probe.RUNNER_PROBE_INSTANCE):
        name = unit.replace("@doctor", "@")
        props = probe.unit_props(host, unit, "PrivateDevices", "DevicePolicy", "DeviceAllow")
        if props.get("PrivateDevices") == "yes":
            fail(
                f"{name} has PrivateDevices=yes, which hides /dev/kfd and /dev/dri: the GPU is unreachable",
                f"set `PrivateDevices=no` in a drop-in (`systemctl edit {name}`)",
            )
        if props.get("DevicePolicy") in {"closed", "strict"}:
            allow = props.get("DeviceAllow", "")
            blocked = [dev for dev, group in _GPU_DEVICES if not _allows(allow, dev, group)]
            if blocked:
                fail(
                    f"{name} has DevicePolicy={props['DevicePolicy']} without access to {', '.join(blocked)}",
                    f"add `DeviceAllow=char-kfd rw` and `DeviceAllow=char-drm rw` (`systemctl edit {name}`)",
                )
