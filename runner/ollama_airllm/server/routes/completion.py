"""POST /completion: llama-server's native completion endpoint."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request

from ..body import read_json
from ..errors import ApiError
from ..openapi import BODIES
from ..prompt import tokenize_prompts
from ..responses import CompletionFormat
from .generation import generate, parse_options


def register(app: FastAPI, runner) -> None:
    @app.post("/completion", openapi_extra=BODIES["completion"])
    @app.post("/completions", include_in_schema=False)
    async def completion(request: Request):
        body = await read_json(request, runner.max_body)
        opts = parse_options(runner, body)
        prompts = await asyncio.to_thread(
            tokenize_prompts, runner.tokenizer, body.get("prompt"), runner.info.n_vocab, runner.prompt_limit
        )
        if len(prompts) > 1 or opts.n_cmpl > 1:
            raise ApiError(
                "several prompts (or n_cmpl > 1) in one request are not supported by the "
                "layer-streaming runner: send one request per prompt"
            )
        prompt = prompts[0]

        def fmt(slot: int) -> CompletionFormat:
            return CompletionFormat(runner, opts, prompt, slot)

        return await generate(runner, request, prompt, opts, fmt)
