"""The jinja2 environment for package files: strict undefined names, no HTML escaping, shell-safe filters."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jinja2

# What may stand unquoted as a systemd EnvironmentFile value or in a unit line (paths, numbers, host:port,
# gfx lists). Profile validation already limits every value; this is the second wall.
_ENV_VALUE_RE = re.compile(r"^[A-Za-z0-9_./:,+@\[\]-]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeValue(ValueError):
    """A value that must not reach a rendered file as it is."""


def shquote(value: object) -> str:
    """Quote for bash; refuses control characters so no value can start a new line of script."""
    text = str(value)
    if _CONTROL_RE.search(text):
        raise UnsafeValue(f"control character in a shell value: {text!r}")
    return shlex.quote(text)


def envvalue(value: object) -> str:
    """A bare EnvironmentFile value (KEY=value): only characters systemd reads literally."""
    text = value if isinstance(value, str) else _scalar(value)
    if not _ENV_VALUE_RE.fullmatch(text):
        raise UnsafeValue(f"value not allowed in an environment file: {text!r}")
    return text


def comment(value: object) -> str:
    """Text inside a `#` comment line: no control characters, so it cannot end the comment."""
    text = str(value)
    if _CONTROL_RE.search(text):
        raise UnsafeValue(f"control character in comment text: {text!r}")
    return text


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def environment(templates_dir: Path) -> jinja2.Environment:
    """Templates from `templates_dir`; every file is shell, ini or plain text, so autoescape is off."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(shquote=shquote, envvalue=envvalue, comment=comment)
    return env
