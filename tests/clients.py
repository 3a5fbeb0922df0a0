"""Run one turn of the real coding agents (opencode, OpenClaw) against a server, each in its own home."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


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


def opencode_turn(opencode: str, base_url: str, model: str, context: int, home: Path) -> list[dict]:
    """`opencode run --format json "say hi"` with an openai-compatible provider at `base_url`; its events."""
    config = {
        "$schema": "https://opencode.ai/config.json",
        "model": f"local/{model}",
        "small_model": f"local/{model}",
        "autoupdate": False,
        "share": "disabled",
        "permission": {"*": "allow"},
        "provider": {
            "local": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "local",
                "options": {"baseURL": base_url, "timeout": False},
                "models": {model: {"name": model, "limit": {"context": context, "output": 32}}},
            }
        },
    }
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **_home_env(home),
        "OPENCODE_CONFIG_CONTENT": json.dumps(config),
        "OPENCODE_DISABLE_MODELS_FETCH": "true",
        "OPENCODE_DISABLE_AUTOUPDATE": "true",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "true",
        "OPENCODE_DISABLE_PROJECT_CONFIG": "true",
    }
    out = subprocess.run(
        [opencode, "run", "--format", "json", "--model", f"local/{model}", "--title", "test", "say hi"],
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
    """`openclaw agent --local --json` with its native `ollama` provider at `ollama_url`; its JSON result."""
    config = {
        "models": {
            "providers": {
                "ollama": {
                    "baseUrl": ollama_url,
                    "apiKey": "ollama-local",
                    "api": "ollama",
                    "models": [
                        {
                            "id": model,
                            "name": model,
                            "reasoning": False,
                            "input": ["text"],
                            "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                            "contextWindow": context,
                            "maxTokens": 32,
                        }
                    ],
                }
            }
        },
        "agents": {"defaults": {"model": {"primary": f"ollama/{model}"}}},
    }
    state = home / ".openclaw"
    state.mkdir(parents=True, exist_ok=True)
    (state / "openclaw.json").write_text(json.dumps(config, indent=2))
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
