"""Run one turn of the real coding agents (opencode, OpenClaw) against a server, each in its own home."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ollama_airllm.clients.config import ModelLimits, merge_openclaw, merge_opencode, write_config


def _home_env(home: Path) -> dict[str, str]:
    """A fresh HOME and XDG tree, so nothing of the user's configuration is read or written."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_STATE_HOME": str(home / "state"),
    }


# The test's own opencode settings, as a user's JSONC file would hold them; `ollama-airllm client`'s writer
# merges the provider and the default model into it.
OPENCODE_SETTINGS = """\
// settings of the test run
{
  "small_model": "ollama/%s",
  "autoupdate": false,
  "share": "disabled",
  "permission": {"*": "allow"},
}
"""


def opencode_turn(opencode: str, base_url: str, model: str, context: int, home: Path) -> list[dict]:
    """`opencode run --format json "say hi"` with the configuration `ollama-airllm client opencode` writes
    (an openai-compatible provider at `base_url`), merged into the test's settings; its events."""
    config = home / "config" / "opencode" / "opencode.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(OPENCODE_SETTINGS % model)
    written = write_config(config, merge_opencode, [ModelLimits(model, context, 32)], base_url)
    assert written.backup is not None and written.backup.read_text() == OPENCODE_SETTINGS % model
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **_home_env(home),
        "OPENCODE_DISABLE_MODELS_FETCH": "true",
        "OPENCODE_DISABLE_AUTOUPDATE": "true",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "true",
        "OPENCODE_DISABLE_PROJECT_CONFIG": "true",
    }
    out = subprocess.run(
        [opencode, "run", "--format", "json", "--model", f"ollama/{model}", "--title", "test", "say hi"],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    errors = [e for e in events if e.get("type") == "error"]
    assert not errors, errors
    return events


def openclaw_turn(openclaw: str, ollama_url: str, model: str, context: int, home: Path) -> dict:
    """`openclaw agent --local --json` with the configuration `ollama-airllm client openclaw` writes (its
    native `ollama` provider at `ollama_url`) in a fresh ~/.openclaw/openclaw.json; its JSON result."""
    config = home / ".openclaw" / "openclaw.json"
    write_config(config, merge_openclaw, [ModelLimits(model, context, 32)], ollama_url)
    out = subprocess.run(
        [openclaw, "agent", "--local", "--agent", "main", "--json", "--timeout", "300", "-m", "say hi"],
        cwd=home,
        env=_home_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return json.loads(out.stdout[out.stdout.index("{") :])
