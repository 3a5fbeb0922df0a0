"""Request bodies: size-limited reading and JSON parsing with llama-server's (nlohmann's) rules."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request

from .errors import ApiError, json_type

MAX_DEPTH = 256  # JSON nesting levels; deeper bodies are refused before any code can recurse on them
MIN_BODY_LIMIT = 16 << 20  # bytes; grows with the context (see body_limit)
BYTES_PER_TOKEN = 64  # generous for JSON-escaped text: a body this size per context token always fits


def body_limit(n_ctx_total: int) -> int:
    """The largest request body taken: 16 MiB, or 64 bytes per context token when that is more."""
    return max(MIN_BODY_LIMIT, BYTES_PER_TOKEN * n_ctx_total)


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object; 413 past `limit` bytes. Parsing and checks run off the event loop."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return await asyncio.to_thread(parse_body, b"".join(chunks))


def _too_large(limit: int) -> ApiError:
    return ApiError(f"request body too large: the limit is {limit} bytes ({limit >> 20} MiB)", 413)


def parse_body(raw: bytes) -> dict:
    """nlohmann's rules: strict UTF-8, no NaN/Infinity, no lone surrogates; plus a nesting bound."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ApiError(
            f"{_PARSE_ERROR}: invalid string: ill-formed UTF-8 byte at offset {e.start}"
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as e:
        raise ApiError(f"{_PARSE_ERROR}: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(f"the request body must be a JSON object, got {json_type(data)}")
    _check_tree(data)
    return data


_PARSE_ERROR = "[json.exception.parse_error.101] parse error"


def _too_deep() -> ApiError:
    return ApiError(f"{_PARSE_ERROR}: the JSON is nested deeper than {MAX_DEPTH} levels")


def _reject_constant(name: str):
    raise ValueError(f"invalid literal {name} (JSON has no NaN or Infinity)")


def _check_tree(data: dict) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings with lone UTF-16 surrogates (without recursion)."""
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        children = v.values() if isinstance(v, dict) else v
        if isinstance(v, dict):
            for k in v:
                _check_text(data, k)
        for c in children:
            if isinstance(c, str):
                _check_text(data, c)
            elif isinstance(c, dict | list):
                stack.append((c, depth + 1))


def _check_text(data: dict, s: str) -> None:
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        where = _path_of(data, s).encode("utf-8", "backslashreplace").decode()  # the answer is UTF-8
        raise ApiError(
            f"{_PARSE_ERROR}: invalid string in {where}: lone surrogate U+{ord(s[e.start]):04X} "
            "(a UTF-16 surrogate escape must be one of a high/low pair)"
        ) from None


def _path_of(data: dict, target: str) -> str:
    """Where `target` (this very string object) sits in the body, e.g. 'messages[0].content'."""
    stack: list[tuple[object, str]] = [(data, "")]
    while stack:
        v, path = stack.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, c in items:
            sub = f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]"
            if k is target:
                return f"the key '{sub.lstrip('.')}'"
            if c is target:
                return f"'{sub.lstrip('.')}'"
            if isinstance(c, dict | list):
                stack.append((c, sub))
    return "the body"
