"""Read an EnvironmentFile the way systemd does, and find the lines systemd would ignore or misread.

systemd's parser (src/basic/env-file.c) takes `KEY=value` lines; `#`/`;` start a comment only at the
start of a line. `export KEY=value` yields a key named "export KEY", which systemd drops as invalid, and
`KEY=value # note` keeps "value # note" as the value: the classic reasons an override "does not apply".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class EnvFile:
    """The variables systemd would set, and the problems found, one message per bad line."""

    values: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _unquote(raw: str) -> tuple[str, str | None]:
    """The value systemd reads from the text after `=`, and a problem if the quoting is broken."""
    raw = raw.strip()
    if raw[:1] in {'"', "'"}:
        quote = raw[0]
        end = raw.find(quote, 1)
        while quote == '"' and end > 0 and raw[end - 1] == "\\":
            end = raw.find(quote, end + 1)
        if end < 0:
            return raw, f"the {quote} quote is never closed"
        rest = raw[end + 1 :].strip()
        if rest:
            return raw, f"text after the closing quote: {rest!r}"
        inner = raw[1:end]
        return (inner.replace('\\"', '"').replace("\\\\", "\\") if quote == '"' else inner), None
    return raw, None


def parse_env_file(text: str) -> EnvFile:
    """Parse EnvironmentFile text; every line systemd would drop or misread becomes a problem."""
    env = EnvFile()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        where = f"line {number} `{stripped}`"
        key, eq, raw = stripped.partition("=")
        key = key.strip()
        if not eq:
            env.problems.append(f"{where}: not KEY=value; systemd ignores it")
            continue
        if key.startswith("export ") or key.startswith("export\t"):
            env.problems.append(
                f"{where}: starts with `export`; systemd reads the key as {key!r} and ignores the line"
            )
            continue
        if not _KEY_RE.match(key):
            env.problems.append(f"{where}: {key!r} is not a valid variable name; systemd ignores the line")
            continue
        value, quoting = _unquote(raw)
        if quoting:
            env.problems.append(f"{where}: {quoting}")
            continue
        if raw.strip()[:1] not in {'"', "'"} and re.search(r"\s#", value):
            env.problems.append(f"{where}: inline comment; systemd keeps it as part of the value ({value!r})")
            continue
        env.values[key] = value
    return env


def parse_environ(data: bytes) -> dict[str, str]:
    """A process's environment from the NUL-separated bytes of /proc/PID/environ."""
    env = {}
    for item in data.split(b"\0"):
        key, eq, value = item.decode("utf-8", "replace").partition("=")
        if eq:
            env[key] = value
    return env
