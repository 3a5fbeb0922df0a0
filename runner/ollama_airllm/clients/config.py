"""Write a coding agent's configuration for a local Ollama: merged into the user's file, with a backup.

Only the keys named here are ours: the provider entry, our model's entry in it, and the default model.
Everything else in the file is kept. The file is read as JSON5 (a superset of JSON and of opencode's
JSONC: comments and trailing commas are fine) and written as plain JSON, which both clients read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import json5

from ..atomicfile import write_atomic
from ..errors import UserError

PROVIDER = "ollama"
OPENCODE_SCHEMA = "https://opencode.ai/config.json"
OPENCODE_NPM = "@ai-sdk/openai-compatible"
OPENCLAW_API_KEY = "ollama-local"  # any value: Ollama ignores it, OpenClaw wants one


@dataclass(frozen=True)
class ModelLimits:
    """One Ollama model and the limits a client is told: prompt + answer (context) and answer (output)."""

    name: str
    context: int
    output: int


def output_limit(context: int) -> int:
    """The answer budget: a quarter of the context, at most 8192 tokens (the rest is the agent's prompt)."""
    return max(1, min(8192, context // 4))


def _object(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """parent[key] as a JSON object, created when absent; anything else there is the user's, so refuse."""
    value = parent.setdefault(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"`{where}` is a {type(value).__name__}, expected an object")
    return value


def merge_opencode(config: dict[str, Any], models: list[ModelLimits], base_url: str) -> dict[str, Any]:
    """opencode.json: provider `ollama` (openai-compatible, at base_url) with `models`; first = default."""
    config.setdefault("$schema", OPENCODE_SCHEMA)
    provider = _object(_object(config, "provider", "provider"), PROVIDER, f"provider.{PROVIDER}")
    provider["npm"] = OPENCODE_NPM
    provider.setdefault("name", "Ollama")
    options = _object(provider, "options", f"provider.{PROVIDER}.options")
    options["baseURL"] = base_url
    options.setdefault("timeout", False)  # a layer-streamed model can think longer than the 5-minute default
    entries = _object(provider, "models", f"provider.{PROVIDER}.models")
    for model in models:
        where = f"provider.{PROVIDER}.models.{model.name}"
        entry = _object(entries, model.name, where)
        entry.setdefault("name", model.name)
        limit = _object(entry, "limit", f"{where}.limit")
        limit["context"], limit["output"] = model.context, model.output
    config["model"] = f"{PROVIDER}/{models[0].name}"
    return config


def _openclaw_entry(models: list[Any], name: str) -> dict[str, Any]:
    """The entry with id `name` in OpenClaw's model list, appended when absent."""
    for entry in models:
        if isinstance(entry, dict) and entry.get("id") == name:
            return entry
    entry = {"id": name}
    models.append(entry)
    return entry


def merge_openclaw(config: dict[str, Any], models: list[ModelLimits], base_url: str) -> dict[str, Any]:
    """openclaw.json with its native `ollama` provider at base_url holding `models`; first is the default."""
    where = f"models.providers.{PROVIDER}"
    provider = _object(
        _object(_object(config, "models", "models"), "providers", "models.providers"), PROVIDER, where
    )
    provider["baseUrl"] = base_url
    provider["api"] = "ollama"
    provider.setdefault("apiKey", OPENCLAW_API_KEY)
    listed = provider.setdefault("models", [])
    if not isinstance(listed, list):
        raise ValueError(f"`{where}.models` is a {type(listed).__name__}, expected a list")
    for model in models:
        entry = _openclaw_entry(listed, model.name)
        entry.setdefault("name", model.name)
        entry.setdefault("reasoning", False)
        entry.setdefault("input", ["text"])
        entry.setdefault("cost", {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0})
        entry["contextWindow"] = model.context
        entry["maxTokens"] = model.output
    defaults = _object(_object(config, "agents", "agents"), "defaults", "agents.defaults")
    if not isinstance(defaults.get("model"), dict):
        defaults["model"] = {}  # OpenClaw also takes a plain "provider/model" string; ours is the object form
    defaults["model"]["primary"] = f"{PROVIDER}/{models[0].name}"
    return config


def read_config(path: Path) -> tuple[dict[str, Any], bytes | None]:
    """The parsed file (empty when absent) and its bytes; an unreadable or unparsable file is refused."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = json5.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(
            f"{path}: not valid JSON5 ({' '.join(str(exc).split())}); left untouched: fix it or move it away"
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: the top level is a {type(data).__name__}, expected an object; left untouched"
        )
    return data, raw


@dataclass(frozen=True)
class Written:
    """What write_config did: the file, its backup (None without an old file), whether it changed."""

    path: Path
    backup: Path | None
    changed: bool


def _backup(path: Path, raw: bytes) -> Path:
    """Copy the old file beside it as <name>.<UTC time>.bak (never replacing an earlier backup)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    backup = path.with_name(f"{path.name}.{stamp}.bak")
    n = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.{stamp}-{n}.bak")
        n += 1
    write_atomic(backup, raw, mode=path.stat().st_mode & 0o777)
    shutil.copystat(path, backup)
    return backup


def write_config(
    path: Path,
    merge: Callable[[dict[str, Any], list[ModelLimits], str], dict[str, Any]],
    models: list[ModelLimits],
    base_url: str,
) -> Written:
    """Merge our entries into the file at `path` and replace it atomically, backing up the old one first.

    A symlinked file (dotfiles) is written through: its target is replaced, the link stays.
    """
    if not models:
        raise ValueError("no model to configure")
    path = path.resolve() if path.is_symlink() else path
    config, raw = read_config(path)
    try:
        merged = merge(config, models, base_url)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}; left untouched: fix it or move it away") from None
    data = (json.dumps(merged, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    if raw == data:
        return Written(path, None, False)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        backup = _backup(path, raw) if raw is not None else None
        mode = path.stat().st_mode & 0o777 if raw is not None else 0o600
        write_atomic(path, data, mode=mode)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return Written(path, backup, True)


def default_path(client: str) -> Path:
    """Where each client reads its user configuration."""
    home = Path.home()
    if client == "opencode":
        base = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
        return Path(base) / "opencode" / "opencode.json"
    return home / ".openclaw" / "openclaw.json"
