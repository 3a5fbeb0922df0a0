"""POST /tokenize and /detokenize."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request

from ..body import read_json
from ..errors import ApiError, json_type
from ..openapi import BODIES
from ..prompt import tokenize_mixed


def register(app: FastAPI, runner) -> None:
    @app.post("/tokenize", openapi_extra=BODIES["tokenize"])
    async def tokenize(request: Request):
        body = await read_json(request, runner.max_body)
        return await asyncio.to_thread(_tokenize, runner, body)

    @app.post("/detokenize", openapi_extra=BODIES["detokenize"])
    async def detokenize(request: Request):
        body = await read_json(request, runner.max_body)
        toks = body.get("tokens", [])
        if not isinstance(toks, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in toks
        ):
            raise ApiError("Field 'tokens': must be an array of token ids")
        bad = [t for t in toks if not 0 <= t < runner.info.n_vocab]
        if bad:
            raise ApiError(f"token id {bad[0]} is outside the vocabulary (0..{runner.info.n_vocab - 1})")
        text = await asyncio.to_thread(runner.tokenizer.decode, toks, special=True)
        return {"content": text}


def _tokenize(runner, body: dict) -> dict:
    """/tokenize's answer (in a worker thread: a long text must not hold up the event loop)."""
    add_special = _flag(body, "add_special", False)
    parse_special = _flag(body, "parse_special", True)
    with_pieces = _flag(body, "with_pieces", False)
    if "content" not in body:
        return {"tokens": []}
    content = body["content"]
    if not isinstance(content, str | list):
        raise ApiError(f"Field 'content': must be a string or an array, but is {json_type(content)}")
    toks = tokenize_mixed(runner.tokenizer, content, add_special, parse_special)
    if not with_pieces:
        return {"tokens": toks}
    return {"tokens": [{"id": t, "piece": _piece(runner, t)} for t in toks]}


def _piece(runner, tok: int) -> str | list[int]:
    """A token's text, or its bytes when they are not valid UTF-8 on their own."""
    raw = runner.tokenizer.token_to_piece(tok) if 0 <= tok < runner.info.n_vocab else b""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


def _flag(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(f"Field '{name}': type must be boolean, but is {json_type(v)}")
    return v
