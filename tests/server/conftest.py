"""Fixtures for the runner's tests: start our runner (and the real llama-server) on tiny GGUF models.

    def test_x(start_runner, tiny_gguf):
        srv = start_runner(tiny_gguf("llama", "F32"), "-c", "4096")
        httpx.get(srv.url + "/health")

The real llama-server comes from tests/setup.d/30-llama-server.sh (LLAMA_SERVER_BIN). When that variable
is unset (pytest run without tests/setup.sh) the tests that need it are skipped with the reason; under
tests/run.sh or with CI set, a missing binary fails them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

_LOG_DIR: list[Path] = []  # pytest's session temp dir, set by the autouse fixture below
OLLAMA_FLAGS = ["--no-webui", "--offline", "--log-verbosity", "4", "--no-log-prefix", "--no-log-timestamps"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_ready(srv: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"{srv.args[0]} exited with {srv.proc.returncode}:\n{srv.log()[-3000:]}")
        try:
            if httpx.get(srv.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    srv.stop()
    raise RuntimeError(f"{srv.args[0]} not ready after {timeout}s:\n{srv.log()[-3000:]}")


def launch(cmd: list[str], env: dict | None = None, wait: bool = True) -> Server:
    port = free_port()
    log_path = Path(
        tempfile.mkstemp(prefix="server-", suffix=".log", dir=_LOG_DIR[0] if _LOG_DIR else None)[1]
    )
    args = [*cmd, "--port", str(port), "--host", "127.0.0.1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy())
    srv = Server(proc, f"http://127.0.0.1:{port}", log_path, args)
    if wait:
        wait_ready(srv)
    return srv


def launch_small_runner(model, n_slots: int) -> Server:
    """Our runner on `model` with a 128-token context, `n_slots` slots and embeddings, one thread."""
    flags = ["-c", "128", "-np", str(n_slots), "-t", "1", "--embedding"]
    return launch([*runner_cmd(), "--model", str(model), *flags])


def runner_cmd() -> list[str]:
    exe = shutil.which("ollama-airllm-runner")
    return [exe] if exe else [sys.executable, "-m", "ollama_airllm.server.main"]


def _required_tool(var: str, setup_step: str) -> str:
    """The executable named by $`var`: skip locally when unset, fail in CI or when it is not executable."""
    path = os.environ.get(var)
    if not path:
        if os.environ.get("CI"):
            pytest.fail(f"{var} is not set: run the suite through tests/run.sh")
        pytest.skip(f"{var} is not set ({setup_step} provides it)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{var}={path} is not an executable: {setup_step} failed?")
    return path


def llama_server_bin() -> str:
    """The real llama-server, or skip/fail with the reason (see the module docstring)."""
    return _required_tool("LLAMA_SERVER_BIN", "tests/setup.d/30-llama-server.sh")


def opencode_bin() -> str:
    """The opencode CLI, or skip/fail with the reason."""
    return _required_tool("OPENCODE_BIN", "tests/setup.d/40-opencode.sh")


@pytest.fixture(scope="session", autouse=True)
def _server_log_dir(tmp_path_factory):
    _LOG_DIR.append(tmp_path_factory.mktemp("server-logs"))
    yield
    _LOG_DIR.clear()


@pytest.fixture(scope="session")
def srvtools():
    """The helpers above, for test modules (pytest's importlib mode cannot import this conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        launch=launch,
        launch_small_runner=launch_small_runner,
        runner_cmd=runner_cmd,
        llama_server_bin=llama_server_bin,
        opencode_bin=opencode_bin,
        wait_ready=wait_ready,
        free_port=free_port,
        OLLAMA_FLAGS=OLLAMA_FLAGS,
    )


@pytest.fixture
def start_runner():
    """Factory: start_runner(model, *flags, env=None, wait=True) -> Server (stopped at teardown)."""
    started: list[Server] = []

    def start(model, *flags: str, env: dict | None = None, wait: bool = True) -> Server:
        srv = launch([*runner_cmd(), "--model", str(model), *flags], env=env, wait=wait)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def module_servers():
    """Module-scoped registry of servers, stopped when the module's tests are done."""
    started: list[Server] = []
    yield started
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def session_servers():
    """Session-wide registry of servers shared by several modules, stopped at the end."""
    started: list[Server] = []
    yield started
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def chat_model(tiny_gguf) -> Path:
    """The shared tiny model: 2-layer F32 llama with the ChatML+tools template."""
    return tiny_gguf("llama", "F32")


@pytest.fixture(scope="session")
def runner(chat_model, session_servers) -> Server:
    """Our runner on the tiny model, started as Ollama starts llama-server (-c 4096 -np 2)."""
    srv = launch(
        [*runner_cmd(), "--model", str(chat_model), "-c", "4096", "-np", "2", "-t", "1", *OLLAMA_FLAGS]
    )
    session_servers.append(srv)
    return srv
