"""POST /v1/embeddings (OpenAI's shape) and /embeddings, /embedding (llama-server's own shape)."""

from __future__ import annotations

import asyncio
import math

from fastapi import FastAPI, Request

from ..body import read_json
from ..errors import ApiError, json_type
from ..openapi import BODIES
from ..prompt import tokenize_prompts


def register(app: FastAPI, runner) -> None:
    @app.post("/v1/embeddings", openapi_extra=BODIES["embeddings"])
    async def embeddings_oai(request: Request):
        return await _embeddings(runner, request, oai=True)

    @app.post("/embeddings", include_in_schema=False)
    @app.post("/embedding", include_in_schema=False)
    async def embeddings(request: Request):
        return await _embeddings(runner, request, oai=False)


async def _embeddings(runner, request: Request, oai: bool):
    if not runner.config.embedding:
        raise ApiError("This server does not support embeddings. Start it with `--embeddings`", 501)
    body = await read_json(request, runner.max_body)
    if "input" in body:
        prompt = body["input"]
    elif "content" in body:
        prompt, oai = body["content"], False
    else:
        raise ApiError('"input" or "content" must be provided')
    fmt_name = body.get("encoding_format", "float")
    if fmt_name not in ("float", "base64"):
        raise ApiError("The format to return the embeddings in. Can be either float or base64")
    norm = body.get("embd_normalize", 2)
    if isinstance(norm, bool) or not isinstance(norm, int):
        raise ApiError(f"Field 'embd_normalize': type must be number, but is {json_type(norm)}")
    token_lists = await asyncio.to_thread(
        tokenize_prompts, runner.tokenizer, prompt, runner.info.n_vocab, runner.prompt_limit
    )
    results = [(await _embed(runner, toks, norm), len(toks)) for toks in token_lists]
    if not oai:
        return [{"index": i, "embedding": [v]} for i, (v, _n) in enumerate(results)]
    n = sum(n for _v, n in results)
    model = body.get("model") if isinstance(body.get("model"), str) else runner.model_name
    return {
        "model": model,
        "object": "list",
        "usage": {"prompt_tokens": n, "total_tokens": n},
        "data": [_oai_item(i, v, fmt_name) for i, (v, _n) in enumerate(results)],
    }


async def _embed(runner, toks: list[int], norm: int) -> list[float]:
    """One input's normalized vector."""
    if not toks:
        raise ApiError("Input content cannot be empty")
    if len(toks) > runner.info.n_ctx:  # llama-server answers this with a 500; it is the input's fault
        raise ApiError(
            f"input ({len(toks)} tokens) is too large to process. increase the physical batch "
            f"size (current batch size: {runner.info.n_ctx})"
        )
    vec = await runner.slots.run_without_slot(runner.engine.embed, toks)
    return _normalize(vec, norm)


def _oai_item(i: int, v: list[float], fmt_name: str) -> dict:
    if fmt_name == "base64":
        import base64
        import struct

        enc = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return {"embedding": enc, "index": i, "object": "embedding", "encoding_format": "base64"}
    return {"embedding": v, "index": i, "object": "embedding"}


def _normalize(v: list[float], mode: int) -> list[float]:
    """common_embd_normalize: -1 none, 0 max-abs to int16 range, 1 taxicab, 2 euclidean, >2 p-norm."""
    if mode < 0:
        return v
    if mode == 0:
        s = max((abs(x) for x in v), default=0.0) / 32760.0
    elif mode == 1:
        s = sum(abs(x) for x in v)
    elif mode == 2:
        s = math.sqrt(sum(x * x for x in v))
    else:  # scaled by the largest magnitude so that large p cannot overflow
        top = max((abs(x) for x in v), default=0.0)
        s = top * sum((abs(x) / top) ** mode for x in v) ** (1.0 / mode) if top > 0 else 0.0
    return [x / s for x in v] if s > 0 else [0.0 for _ in v]
