"""The layer-streaming runner: its executable answers, its Python has torch, and torch sees the GPU."""

from __future__ import annotations

import shlex

from ollama_airllm.doctor import probe
from ollama_airllm.doctor.envfile import parse_env_file
from ollama_airllm.doctor.outcome import fail, not_applicable

TORCH_FIX = "install the ROCm build of PyTorch: `pacman -S python-pytorch-rocm`"


def _runner_python(host) -> str:
    """How the runner runs Python: its interpreter, with the PYTHONPATH its wrapper script sets.

    The runner is either a Python script (#! python) or a shell wrapper that sets PYTHONPATH=<private site>
    and execs an interpreter; the result is a command prefix such as `env PYTHONPATH=... /usr/bin/python3`.
    """
    runner = host.file(probe.RUNNER_BIN)
    if not runner.exists:
        not_applicable(f"{probe.RUNNER_BIN} is missing (reported by the --version check)")
    lines = runner.content_string.splitlines()
    shebang = lines[0][2:].strip() if lines and lines[0].startswith("#!") else ""
    if "python" in shebang:
        return shebang
    pythonpath, python = "", ""
    for line in lines:
        line = line.strip()
        if line.startswith("PYTHONPATH="):
            pythonpath = line.removeprefix("PYTHONPATH=").split("${", 1)[0].strip("\"'")
        elif line.startswith("exec "):
            words = shlex.split(line)[1:]
            python = next((w for w in words if "python" in w.rsplit("/", 1)[-1]), "")
    if not python:
        fail(
            f"cannot tell which Python {probe.RUNNER_BIN} runs (no #! python, no `exec python...`)",
            "reinstall the package",
        )
    return f"env PYTHONPATH={shlex.quote(pythonpath)} {python}" if pythonpath else python


def _as_service(host, command: str) -> str:
    """`command` run as the ollama user with the service's groups and /etc/default/ollama's variables."""
    env = (
        parse_env_file(host.file(probe.ENV_FILE).content_string) if host.file(probe.ENV_FILE).exists else None
    )
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env.values.items() if env else []))
    return probe.as_user(probe.USER, probe.unit_groups(host, probe.SERVICE), f"env {assignments} {command}")


def test_runner_version(host, facts):
    """the runner executable answers --version"""
    facts.require_root()
    if not host.file(probe.RUNNER_BIN).exists:
        fail(f"{probe.RUNNER_BIN} is missing", "reinstall the package")
    result = host.run(_as_service(host, f"{probe.RUNNER_BIN} --version"))
    if result.rc != 0 or not result.stdout.strip():
        fail(
            f"`{probe.RUNNER_BIN} --version` failed (exit {result.rc}): "
            f"{(result.stderr or result.stdout).strip()}",
            "reinstall the package; if the error names a Python module, install that dependency",
        )


def test_runner_torch_imports(host, facts):
    """torch imports in the runner's Python"""
    facts.require_root()
    python = _runner_python(host)
    result = host.run(_as_service(host, f"{python} -c 'import torch; print(torch.__version__)'"))
    if result.rc != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        fail(f"the runner's Python ({python}) cannot import torch: {last}", TORCH_FIX)


def test_runner_torch_sees_gpu(host, facts):
    """torch in the runner's Python, run in ollama.service's sandbox, sees a GPU"""
    facts.require_gpu()
    facts.require_sandbox()
    python = _runner_python(host)
    args = probe.sandbox_args(host, probe.SERVICE)
    if args is None:
        not_applicable(f"{probe.SERVICE} is not loaded (reported by the unit check)")
    code = "import torch; print(torch.version.hip, torch.cuda.is_available() and torch.cuda.device_count())"
    env = probe.environment_args(host, probe.SERVICE)
    result = host.run(probe.in_sandbox([*args, *env], f"{python} -c {shlex.quote(code)}"))
    if result.rc != 0:
        not_applicable("torch does not import (reported by the check above)")
    hip, count = result.stdout.split()[-2:]
    if hip == "None":
        fail("the runner's torch is not a ROCm build (torch.version.hip is None)", TORCH_FIX)
    if count in {"0", "False"}:
        fail(
            f"torch (ROCm) sees no GPU in {probe.SERVICE}'s sandbox",
            "see the GPU-device check above; an unsupported gfx needs HSA_OVERRIDE_GFX_VERSION (profile)",
        )


def test_runner_instances_answer_health(host, facts):
    """every running standalone runner unit answers GET /health"""
    facts.require_systemd()
    facts.require_root()
    runners = [u for u in probe.active_units(host) if u.startswith("ollama-airllm@")]
    if not runners:
        not_applicable("no standalone runner unit (ollama-airllm@NAME.service) is running")
    dead = []
    for unit in runners:
        addresses = probe.listening_addresses(host, probe.unit_pids(host, unit))
        if not addresses:
            dead.append(f"{unit}: listens on no TCP address")
        for address in addresses:
            bind, _, port = address.rpartition(":")
            # A wildcard bind is reached on loopback (the network check reports the wildcard itself).
            target = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "[::]": "[::1]"}.get(bind, bind)
            status, body = probe.http(host, f"http://{target}:{port}/health")
            if status != 200:
                dead.append(f"{unit} at {address}: {status or ''} {body}".strip())
    if dead:
        fail(
            "runner units do not answer /health:\n" + "\n".join("  " + d for d in dead),
            "`journalctl -u 'ollama-airllm@*'` says why",
        )
