"""Fixtures for the e2e suite: the patched `ollama serve` on a loopback port, our runner, real clients.

The Ollama binary is built by tests/setup.d/35-ollama.sh (OLLAMA_BIN): Ollama v0.34.4 from its Go module with
airllm.patch applied as the PKGBUILD's prepare() applies it. Its lib/ollama holds the real llama-server and
llama-quantize. Two servers run side by side on one tiny model each: `forced` with AIRLLM_FORCE=1, so every
model goes to our runner, and `plain` without, so llama-server serves (this machine has no GPU, so the
automatic takeover never triggers here; the shared decision vectors in tests/vectors cover it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.server.conftest import _required_tool, free_port

MODEL = "tiny"
CTX = 65536  # with the test tokenizer opencode's prompt is ~19k tokens, OpenClaw's ~35k (it refuses < 16k)


def ollama_bin() -> str:
    return _required_tool("OLLAMA_BIN", "tests/setup.d/35-ollama.sh")


def openclaw_bin() -> str:
    return _required_tool("OPENCLAW_BIN", "tests/setup.d/45-openclaw.sh")


def runner_exe() -> str:
    exe = shutil.which("ollama-airllm-runner")
    if exe is None:
        pytest.fail("ollama-airllm-runner is not on PATH: install the package into the venv (tests/setup.sh)")
    return exe


@dataclass
class Ollama:
    """One `ollama serve` and what the tests need to reach it."""

    proc: subprocess.Popen
    url: str
    env: dict
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ollama_bin(), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def post(self, path: str, body: dict, timeout: float = 120) -> dict:
        r = httpx.post(self.url + path, json=body, timeout=timeout)
        assert r.status_code == 200, r.text
        return r.json()

    def runners(self) -> list[psutil.Process]:
        """The runner processes this server started (llama-server or ours)."""
        return [p for p in psutil.Process(self.proc.pid).children() if p.is_running()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_ollama(home: Path, log_dir: Path, *, force: bool) -> Ollama:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(home / "models"),
        "OLLAMA_CONTEXT_LENGTH": str(CTX),
        "OLLAMA_KEEP_ALIVE": "5m",
        "OLLAMA_NO_CLOUD": "1",
        "OLLAMA_AIRLLM_RUNNER": runner_exe(),
        "OLLAMA_AIRLLM_DEVICE": "cpu",
    }
    if force:
        env["AIRLLM_FORCE"] = "1"
    log_path = log_dir / f"ollama-{'forced' if force else 'plain'}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [ollama_bin(), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    srv = Ollama(proc, f"http://127.0.0.1:{port}", env, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ollama serve exited with {proc.returncode}:\n{srv.log()[-3000:]}")
        try:
            if httpx.get(srv.url + "/api/version", timeout=2).status_code == 200:
                return srv
        except httpx.TransportError:
            time.sleep(0.2)
    srv.stop()
    pytest.fail(f"ollama serve not answering after 60 s:\n{srv.log()[-3000:]}")


def create_model(srv: Ollama, gguf: Path, workdir: Path) -> None:
    """`ollama create` from a GGUF file, as a user does (the GGUF carries the chat template)."""
    modelfile = workdir / "Modelfile"
    modelfile.write_text(f"FROM {gguf}\nPARAMETER num_ctx {CTX}\n")
    out = srv.cli("create", MODEL, "-f", str(modelfile), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="session")
def e2e_gguf(tiny_gguf) -> Path:
    return tiny_gguf("llama", "F32", ctx=CTX)


def _server(tmp_path_factory, e2e_gguf, force: bool):
    name = "forced" if force else "plain"
    home = tmp_path_factory.mktemp(f"ollama-{name}")
    srv = start_ollama(home, home, force=force)
    try:
        create_model(srv, e2e_gguf, home)
        yield srv
    finally:
        srv.stop()
        assert "panic:" not in srv.log(), srv.log()[-3000:]


@pytest.fixture(scope="session")
def forced(tmp_path_factory, e2e_gguf):
    """`ollama serve` with AIRLLM_FORCE=1: every model goes to our runner."""
    yield from _server(tmp_path_factory, e2e_gguf, force=True)


@pytest.fixture(scope="session")
def plain(tmp_path_factory, e2e_gguf):
    """`ollama serve` without force: on this GPU-less machine llama-server serves."""
    yield from _server(tmp_path_factory, e2e_gguf, force=False)
