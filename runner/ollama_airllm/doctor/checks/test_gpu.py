"""The GPU: KFD present, its device nodes open for the service, the override applied, the GPU really used."""

from __future__ import annotations

import json
import re
import shlex

from ollama_airllm.doctor import probe
from ollama_airllm.doctor.envfile import parse_env_file
from ollama_airllm.doctor.outcome import fail, not_applicable

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def test_kfd_present(host, facts):
    """an AMD GPU is present and the kernel exposes it through /dev/kfd"""
    if not facts.amd_gpu:
        not_applicable("no AMD GPU on this host (no PCI display device with vendor 0x1002)")
    if not facts.kfd:
        fail(
            "an AMD GPU is present but /dev/kfd is missing, so ROCm sees no GPU",
            "load the driver (`modprobe amdgpu`) and check `dmesg | grep -i kfd`; the kernel needs "
            "CONFIG_HSA_AMD",
        )


def test_gpu_devices_reachable(host, profile, facts):
    """ollama.service and the runner unit, each in its own sandbox, can open /dev/kfd and the render nodes"""
    facts.require_gpu()
    facts.require_sandbox()
    present = set(host.run("ls /dev/dri/renderD* 2>/dev/null").stdout.split())
    wanted = {
        f"/dev/dri/renderD{gpu.render_minor}": gpu.name for gpu in profile.visible_gpus if gpu.render_minor
    }
    gone = [f"{node} ({name})" for node, name in wanted.items() if node not in present]
    if gone:
        fail(
            f"the profile's GPU render nodes are missing: {', '.join(gone)}",
            "the GPUs changed since the package was built: run `./build-all.sh` to detect and rebuild",
        )
    nodes = ["/dev/kfd", *sorted(present)]
    for unit in (probe.SERVICE, probe.RUNNER_PROBE_INSTANCE):
        _check_unit_opens(host, unit, nodes)


def _check_unit_opens(host, unit: str, nodes: list[str]) -> None:
    """Open each node read-write in a transient service with `unit`'s user, groups and device settings."""
    name = unit.replace("@doctor", "@")
    args = probe.sandbox_args(host, unit)
    if args is None:
        not_applicable(f"{name} is not loaded (reported by the unit check)")
    denied, errors = [], []
    for node in nodes:
        # `<>` opens read-write as HIP does; access(2) alone would miss the unit's device policy.
        quoted = shlex.quote(node)
        missing = shlex.quote(f"{node}: not in the unit's /dev (PrivateDevices=yes?)")
        opens = f"if test -e {quoted}; then : <> {quoted}; else echo {missing} >&2; exit 1; fi"
        result = host.run(probe.in_sandbox(args, opens))
        if result.rc != 0:
            denied.append(node)
            errors.append((result.stderr or result.stdout).strip() or f"{node}: exit {result.rc}")
    if denied:
        modes = host.run("stat -c '%n %U:%G %a' " + " ".join(shlex.quote(n) for n in denied)).stdout.strip()
        fail(
            f"{name} cannot open {', '.join(denied)} (with the unit's user, groups and device settings):"
            + "".join(f"\n  {line}" for line in [*modes.splitlines(), *errors]),
            f"`SupplementaryGroups=render video`, `PrivateDevices=no` and `DeviceAllow=char-kfd rw`, "
            f"`DeviceAllow=char-drm rw` for {name} (`systemctl edit {name}`), or "
            f"`usermod -aG render,video {probe.USER}`, then restart it",
        )


def test_hsa_override_applied(host, profile, facts):
    """the profile's HSA_OVERRIDE_GFX_VERSION is in /etc/default/ollama and in the running services"""
    want = profile.hsa_override
    if want is None:
        not_applicable(
            f"the profile sets no HSA override (its GPUs run {', '.join(profile.amdgpu_targets)} natively)"
        )
    env = (
        parse_env_file(host.file(probe.ENV_FILE).content_string) if host.file(probe.ENV_FILE).exists else None
    )
    have = env.values.get("HSA_OVERRIDE_GFX_VERSION") if env else None
    if have != want:
        fail(
            f"{probe.ENV_FILE} sets HSA_OVERRIDE_GFX_VERSION to {have!r}, the profile needs {want!r} "
            "(an `export` line or an inline comment makes systemd drop it)",
            f"write the line `HSA_OVERRIDE_GFX_VERSION={want}` in {probe.ENV_FILE}, then "
            "`systemctl restart ollama`",
        )
    facts.require_root()
    missing = []
    for unit in probe.active_units(host):
        environ = probe.main_pid_environ(host, unit)
        if environ is not None and environ.get("HSA_OVERRIDE_GFX_VERSION") != want:
            missing.append(f"{unit} has {environ.get('HSA_OVERRIDE_GFX_VERSION')!r}")
    if missing:
        fail(
            f"the override is not in effect: {'; '.join(missing)}",
            "a drop-in overrides it, or the service started before the change: `systemctl cat ollama`, "
            "then `systemctl restart ollama`",
        )


def _smallest_model(host, address: str) -> str | None:
    status, body = probe.http(host, f"http://{address}/api/tags")
    if status != 200:
        return None
    models = sorted(json.loads(body).get("models", []), key=lambda m: m.get("size", 0))
    return models[0]["name"] if models else None


def test_gpu_really_used(host, profile, facts):
    """after a short generation, Ollama holds the model in VRAM (/api/ps, or "offloaded N/N layers")"""
    facts.require_ollama()
    facts.require_gpu()
    address = profile.ollama.host
    model = _smallest_model(host, address)
    if model is None:
        not_applicable("no model installed to try (`ollama pull <model>`, then run the doctor again)")
    status, body = probe.http(
        host,
        f"http://{address}/api/generate",
        {"model": model, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}},
        timeout=300,
    )
    if status != 200:
        fail(
            f"generating with {model} failed: {status or ''} {body}".strip(),
            "`journalctl -u ollama -b` says why",
        )
    _, ps = probe.http(host, f"http://{address}/api/ps")
    loaded = [m for m in json.loads(ps).get("models", []) if m.get("name") == model]
    if loaded and loaded[0].get("size_vram", 0) > 0:
        return
    journal = host.run("journalctl -u ollama --since -10min --no-pager -o cat").stdout
    offloads = _OFFLOADED.findall(journal)
    if offloads and all(int(n) == int(total) and int(n) > 0 for n, total in offloads[-1:]):
        return
    fail(
        f"{model} ran on the CPU: /api/ps size_vram is 0"
        + (f", journal says offloaded {offloads[-1][0]}/{offloads[-1][1]} layers" if offloads else ""),
        "look for `dropping ROCm device` or `no rocblas support` in `journalctl -u ollama -b`; "
        "an unsupported gfx needs HSA_OVERRIDE_GFX_VERSION in the profile (README, Troubleshooting)",
    )
