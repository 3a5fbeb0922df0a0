"""`ollama-airllm client opencode|openclaw`: fresh files, merges that keep the user's keys, backups, refusals.

The runs against a real Ollama (model list, /api/show context) are in tests/e2e/test_client_cli.py, and the
real clients read what this writer wrote in tests/e2e/test_clients.py (through tests/clients.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import json5
import pytest
from ollama_airllm.clients.cli import ollama_url
from ollama_airllm.clients.config import (
    ModelLimits,
    merge_openclaw,
    merge_opencode,
    output_limit,
    write_config,
)
from ollama_airllm.errors import UserError

CLI = [sys.executable, "-c", "from ollama_airllm.cli import main; main()", "client"]
URL = "http://127.0.0.1:11434"
QWEN = ModelLimits("qwen3:32b", 32768, 8192)

USER_OPENCODE = """\
// my settings
{
  "theme": "opencode",
  "model": "anthropic/claude",
  "provider": {
    "anthropic": {"options": {"apiKey": "{env:KEY}"}},
    "ollama": {
      "options": {"timeout": 600000, "headers": {"X-A": "1"}},
      "models": {"llama3:8b": {"name": "Llama 3", "limit": {"context": 8192, "output": 2048}},
                 "qwen3:32b": {"limit": {"context": 4096, "input": 4000}, "tool_call": true}},
    },
  },
}
"""

USER_OPENCLAW = """\
// OpenClaw config (JSON5)
{
  gateway: {port: 18789},
  models: {providers: {ollama: {baseUrl: 'http://10.0.0.5:11434', apiKey: 'mine',
    models: [{id: 'llama3:8b', name: 'Llama', contextWindow: 8192, maxTokens: 1024},
             {id: 'qwen3:32b', name: 'Qwen mine', contextWindow: 4096, maxTokens: 512, reasoning: true}]}}},
  agents: {defaults: {model: 'anthropic/claude', workspace: '~/w'}},
}
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_a_symlinked_file_is_written_through(tmp_path):
    target = tmp_path / "dotfiles" / "openclaw.json"
    target.parent.mkdir()
    target.write_text("{gateway: {port: 1}}")
    link = tmp_path / "openclaw.json"
    link.symlink_to(target)
    write_config(link, merge_openclaw, [QWEN], URL)
    assert link.is_symlink() and json.loads(target.read_text())["gateway"] == {"port": 1}
    assert "qwen3:32b" in target.read_text()


def test_a_wildcard_listen_address_is_reached_on_loopback():
    assert ollama_url("0.0.0.0:11434") == "http://127.0.0.1:11434"
    assert ollama_url("[::]:8080") == "http://[::1]:8080"
    assert ollama_url("gpubox.lan:11434") == "http://gpubox.lan:11434"


def test_output_limit_is_a_quarter_of_the_context_at_most_8192():
    assert [output_limit(c) for c in (1, 2048, 16384, 32768, 131072)] == [1, 512, 4096, 8192, 8192]


def test_fresh_opencode_file(tmp_path):
    path = tmp_path / "config" / "opencode" / "opencode.json"
    written = write_config(path, merge_opencode, [QWEN], URL + "/v1")
    assert written.changed and written.backup is None
    assert json.loads(path.read_text()) == {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "ollama": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Ollama",
                "options": {"baseURL": "http://127.0.0.1:11434/v1", "timeout": False},
                "models": {"qwen3:32b": {"name": "qwen3:32b", "limit": {"context": 32768, "output": 8192}}},
            }
        },
        "model": "ollama/qwen3:32b",
    }
    assert path.stat().st_mode & 0o777 == 0o600
    assert _siblings(path) == ["opencode.json"]


def test_merge_into_a_users_opencode_jsonc_keeps_their_keys_and_backs_it_up(tmp_path):
    path = tmp_path / "opencode.json"
    path.write_text(USER_OPENCODE)
    written = write_config(path, merge_opencode, [QWEN], URL + "/v1")
    assert written.backup is not None and written.backup.read_text() == USER_OPENCODE
    merged = json.loads(path.read_text())
    assert merged["theme"] == "opencode" and merged["model"] == "ollama/qwen3:32b"
    assert merged["provider"]["anthropic"] == {"options": {"apiKey": "{env:KEY}"}}
    ours = merged["provider"]["ollama"]
    assert ours["options"] == {"timeout": 600000, "headers": {"X-A": "1"}, "baseURL": URL + "/v1"}
    assert ours["models"]["llama3:8b"] == {"name": "Llama 3", "limit": {"context": 8192, "output": 2048}}
    assert ours["models"]["qwen3:32b"] == {
        "limit": {"context": 32768, "input": 4000, "output": 8192},
        "tool_call": True,
        "name": "qwen3:32b",
    }


def test_merge_into_a_json5_openclaw_file(tmp_path):
    path = tmp_path / ".openclaw" / "openclaw.json"
    path.parent.mkdir()
    path.write_text(USER_OPENCLAW)
    written = write_config(path, merge_openclaw, [QWEN], URL)
    assert written.backup is not None and written.backup.read_text() == USER_OPENCLAW
    merged = json.loads(path.read_text())
    assert merged["gateway"] == {"port": 18789}
    provider = merged["models"]["providers"]["ollama"]
    assert (provider["baseUrl"], provider["api"], provider["apiKey"]) == (URL, "ollama", "mine")
    llama, qwen = provider["models"]
    assert llama == {"id": "llama3:8b", "name": "Llama", "contextWindow": 8192, "maxTokens": 1024}
    assert qwen["name"] == "Qwen mine" and qwen["reasoning"] is True
    assert (qwen["contextWindow"], qwen["maxTokens"]) == (32768, 8192)
    assert merged["agents"]["defaults"] == {"model": {"primary": "ollama/qwen3:32b"}, "workspace": "~/w"}


def test_fresh_openclaw_file_has_the_native_provider(tmp_path):
    path = tmp_path / "openclaw.json"
    write_config(path, merge_openclaw, [QWEN, ModelLimits("tiny", 2048, 512)], URL)
    config = json.loads(path.read_text())
    provider = config["models"]["providers"]["ollama"]
    assert provider["api"] == "ollama" and provider["baseUrl"] == URL and provider["apiKey"] == "ollama-local"
    assert [(m["id"], m["contextWindow"], m["maxTokens"]) for m in provider["models"]] == [
        ("qwen3:32b", 32768, 8192),
        ("tiny", 2048, 512),
    ]
    assert provider["models"][0]["cost"] == {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}
    assert config["agents"] == {"defaults": {"model": {"primary": "ollama/qwen3:32b"}}}


def test_a_second_identical_run_changes_nothing(tmp_path):
    path = tmp_path / "openclaw.json"
    write_config(path, merge_openclaw, [QWEN], URL)
    before = path.read_bytes()
    again = write_config(path, merge_openclaw, [QWEN], URL)
    assert not again.changed and path.read_bytes() == before and _siblings(path) == ["openclaw.json"]


def test_every_backup_is_kept(tmp_path):
    path = tmp_path / "openclaw.json"
    path.write_text("{}")
    first = write_config(path, merge_openclaw, [QWEN], URL).backup
    second = write_config(path, merge_openclaw, [ModelLimits("tiny", 4096, 1024)], URL).backup
    assert first != second and first.read_text() == "{}" and "qwen3:32b" in second.read_text()


@pytest.mark.parametrize(
    ("text", "merge", "message"),
    [
        ('{"model": "x",, }', merge_opencode, "not valid JSON5"),
        ("[1, 2]", merge_opencode, "the top level is a list, expected an object"),
        ('{"provider": ["ollama"]}', merge_opencode, "`provider` is a list, expected an object"),
        (
            "{models: {providers: {ollama: {models: {}}}}}",
            merge_openclaw,
            "`models.providers.ollama.models` is a dict",
        ),
    ],
)
def test_a_file_we_cannot_merge_into_is_refused_and_left_untouched(tmp_path, text, merge, message):
    path = tmp_path / "cfg.json"
    path.write_text(text)
    with pytest.raises(UserError) as refused:
        write_config(path, merge, [QWEN], URL)
    assert str(path) in refused.value.message and message in refused.value.message
    assert "left untouched" in refused.value.message
    assert path.read_text() == text and _siblings(path) == ["cfg.json"]


def test_cli_unparsable_file_exit_1_without_traceback(tmp_path):
    path = tmp_path / "openclaw.json"
    path.write_text("{ broken")
    result = _run(
        "openclaw", "-m", "tiny", "--config", str(path), "--ollama", f"http://127.0.0.1:{_closed_port()}"
    )
    assert result.returncode == 1, result.stderr
    assert f"{path}: not valid JSON5" in result.stderr and "Traceback" not in result.stderr
    assert path.read_text() == "{ broken" and _siblings(path) == ["openclaw.json"]


def test_cli_without_ollama_uses_the_profiles_context(tmp_path):
    """Ollama not reachable: the profile's context_length (the reference profile: 32768), said so."""
    path = tmp_path / "opencode.json"
    url = f"http://127.0.0.1:{_closed_port()}"
    result = _run("opencode", "--model", "qwen3:32b", "--config", str(path), "--ollama", url)
    assert result.returncode == 0, result.stderr
    assert f"note: Ollama at {url} is not reachable" in result.stderr
    assert "using the profile's context_length 32768" in result.stderr
    assert "opencode: ollama/qwen3:32b: context 32768, output 8192 tokens" in result.stdout
    config = json5.loads(path.read_text())
    assert config["provider"]["ollama"]["options"]["baseURL"] == url + "/v1"


def test_cli_context_follows_the_given_profile(tmp_path):
    reference = Path(__file__).resolve().parents[2] / "packaging" / "profiles" / "rx7900xtx.yaml"
    profile = tmp_path / "p.yaml"
    profile.write_text(reference.read_text().replace("context_length: 32768", "context_length: 20000"))
    path = tmp_path / "openclaw.json"
    url = f"http://127.0.0.1:{_closed_port()}"
    result = _run("openclaw", "-m", "m1", "--profile", str(profile), "--config", str(path), "--ollama", url)
    assert result.returncode == 0, result.stderr
    model = json.loads(path.read_text())["models"]["providers"]["ollama"]["models"][0]
    assert (model["contextWindow"], model["maxTokens"]) == (20000, 5000)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["opencode"], "--model is needed: Ollama at http://127.0.0.1:{port} is not reachable"),
        (["opencode", "-m", "bad name;"], "'bad name;' is not an Ollama model name"),
        (["openclaw", "-m", "x", "--ollama", "ftp://x"], "'ftp://x' is not http://HOST:PORT"),
        (["vscode", "-m", "x"], "'vscode' is not one of 'opencode', 'openclaw'"),
    ],
)
def test_cli_usage_errors_exit_2(tmp_path, args, message):
    port = _closed_port()
    extra = [] if "--ollama" in args else ["--ollama", f"http://127.0.0.1:{port}"]
    result = _run(*args, *extra, "--config", str(tmp_path / "c.json"))
    assert result.returncode == 2, result.stderr
    assert message.format(port=port) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c.json").exists()
