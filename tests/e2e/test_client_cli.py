"""`ollama-airllm client` against the patched Ollama: its model list and each model's own context."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CTX, MODEL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLI = [sys.executable, "-c", "from ollama_airllm.cli import main; main()", "client"]
REFERENCE = Path(__file__).resolve().parents[2] / "packaging" / "profiles" / "rx7900xtx.yaml"


def _client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_without_model_every_listed_model_gets_the_profiles_context(forced, tmp_path):
    """The model declares CTX (65536); the reference profile's 32768 is smaller, so it wins."""
    path = tmp_path / "openclaw.json"
    result = _client("openclaw", "--ollama", forced.url, "--config", str(path))
    assert result.returncode == 0, result.stderr
    provider = json.loads(path.read_text())["models"]["providers"]["ollama"]
    assert provider["baseUrl"] == forced.url
    assert [(m["id"], m["contextWindow"], m["maxTokens"]) for m in provider["models"]] == [
        (f"{MODEL}:latest", 32768, 8192)
    ]
    assert "not reachable" not in result.stderr


def test_the_models_own_context_caps_a_larger_profile(forced, tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text(REFERENCE.read_text().replace("context_length: 32768", f"context_length: {4 * CTX}"))
    path = tmp_path / "opencode.json"
    result = _client(
        "opencode", "-m", MODEL, "--profile", str(profile), "--ollama", forced.url, "--config", str(path)
    )
    assert result.returncode == 0, result.stderr
    limit = json.loads(path.read_text())["provider"]["ollama"]["models"][MODEL]["limit"]
    assert limit == {"context": CTX, "output": 8192}


def test_a_model_ollama_does_not_have_is_refused(forced, tmp_path):
    path = tmp_path / "opencode.json"
    result = _client("opencode", "-m", "nosuch", "--ollama", forced.url, "--config", str(path))
    assert result.returncode == 1, result.stderr
    assert (
        f"Ollama at {forced.url} has no model 'nosuch'" in result.stderr and "Traceback" not in result.stderr
    )
    assert not path.exists()
