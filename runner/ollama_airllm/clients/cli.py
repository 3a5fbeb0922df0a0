"""`ollama-airllm client opencode|openclaw`: write the agent's configuration for this machine's Ollama."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import click

from ..errors import UsageError, UserError
from ..installed import machine_profile, profile_option
from .config import ModelLimits, default_path, merge_openclaw, merge_opencode, output_limit, write_config

_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,199}$")
_URL_RE = re.compile(r"^https?://[A-Za-z0-9.\[\]:-]+$")
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}
TIMEOUT_S = 5.0


class Unreachable(Exception):
    """Ollama did not answer (refused, timed out, not HTTP)."""


def _ask(url: str, body: dict | None = None) -> tuple[int, dict]:
    """GET (or POST `body` as JSON) to Ollama; returns (status, parsed JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (OSError, ValueError) as exc:  # URLError, timeouts and a body that is not JSON
        raise Unreachable(getattr(exc, "reason", None) or exc) from None


def ollama_url(host: str) -> str:
    """http://HOST:PORT for the profile's `ollama.host`, with a wildcard address replaced by loopback."""
    name, _, port = host.rpartition(":")
    return f"http://{_ANY_ADDRESS.get(name, name)}:{port}"


def model_context(url: str, model: str) -> int | None:
    """The model's own context length from Ollama (`/api/show` model_info), None when it gives none."""
    status, body = _ask(f"{url}/api/show", {"model": model})
    if status == 404:
        raise UserError(
            f"Ollama at {url} has no model {model!r}: `ollama pull {model}` first (`ollama list`)"
        )
    if status != 200:
        raise Unreachable(f"/api/show answered HTTP {status}")
    info = body.get("model_info") or {}
    found = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int) and v > 0]
    return min(found) if found else None


def _models(url: str, wanted: str | None) -> list[str]:
    """The model to configure, or every model Ollama lists (newest first) when none is named."""
    if wanted is not None:
        return [wanted]
    try:
        status, body = _ask(f"{url}/api/tags")
    except Unreachable as exc:
        raise UsageError(f"--model is needed: Ollama at {url} is not reachable ({exc})") from None
    names = (
        [m["name"] for m in body.get("models", []) if isinstance(m.get("name"), str)] if status == 200 else []
    )
    if not names:
        raise UsageError(f"--model is needed: Ollama at {url} lists no model (`ollama pull NAME` first)")
    return names


def _limits(url: str, name: str, profile_context: int) -> ModelLimits:
    """The model's context: the profile's, or the model's own when that is smaller."""
    try:
        own = model_context(url, name)
    except Unreachable as exc:
        click.echo(
            f"note: Ollama at {url} is not reachable ({exc}); {name}: using the profile's context_length "
            f"{profile_context}",
            err=True,
        )
        own = None
    context = min(profile_context, own) if own else profile_context
    return ModelLimits(name, context, output_limit(context))


def _check_model(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _MODEL_RE.match(value):
        raise click.BadParameter(
            f"{value!r} is not an Ollama model name (letters, digits and . _ : / + -, e.g. qwen3:32b)"
        )
    return value


def _check_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _URL_RE.match(value):
        raise click.BadParameter(f"{value!r} is not http://HOST:PORT (no path, no trailing /)")
    return value


@click.command()
@click.argument("name", type=click.Choice(["opencode", "openclaw"]))
@click.option(
    "-m",
    "--model",
    default=None,
    callback=_check_model,
    help="Ollama model to configure (default: every model Ollama lists; the first is the default).",
)
@profile_option
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The client's file (default: ~/.config/opencode/opencode.json, ~/.openclaw/openclaw.json).",
)
@click.option(
    "--ollama",
    "url",
    default=None,
    callback=_check_url,
    help="Ollama's address, http://HOST:PORT (default: the profile's ollama.host).",
)
def client(
    name: str, model: str | None, profile_path: Path | None, config_path: Path | None, url: str | None
) -> None:
    """Write opencode's or OpenClaw's configuration for this machine's Ollama.

    The context is the profile's ollama.context_length, or the model's own when smaller (asked from
    Ollama); the output limit is a quarter of it, at most 8192 tokens. The file is merged (other settings
    are kept), the old one is backed up beside it, and the new one replaces it atomically. Run it as the
    user who runs the agent (not with sudo). Exit status: 0 done, 1 cannot read or write, 2 bad usage.
    """
    profile, _ = machine_profile(profile_path)
    url = url or ollama_url(profile.ollama.host)
    limits = [_limits(url, m, profile.ollama.context_length) for m in _models(url, model)]
    path = config_path or default_path(name)
    if name == "opencode":
        written = write_config(path, merge_opencode, limits, f"{url}/v1")
    else:
        written = write_config(path, merge_openclaw, limits, url)
    for m in limits:
        click.echo(f"{name}: ollama/{m.name}: context {m.context}, output {m.output} tokens")
    if not written.changed:
        click.echo(f"{path}: already up to date")
    else:
        click.echo(f"wrote {path}" + (f" (the old file is in {written.backup})" if written.backup else ""))
