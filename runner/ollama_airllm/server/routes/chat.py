"""POST /v1/chat/completions and /apply-template: OpenAI chat requests through the chat template."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request

from ..body import read_json
from ..chat import ChatPrompt, parse_chat_request
from ..openapi import BODIES
from ..params import CompletionOptions
from ..prompt import tokenize_mixed
from ..responses import ChatFormat
from ..toolcalls import THINK_OPEN
from .generation import generate, parse_options

# fields the chat request has already read, or that mean something else in OpenAI's protocol
_CHAT_OWN = ("grammar", "json_schema", "stop", "prompt", "logprobs", "top_logprobs")


def register(app: FastAPI, runner) -> None:
    @app.post("/v1/chat/completions", openapi_extra=BODIES["chat"])
    @app.post("/chat/completions", include_in_schema=False)
    async def chat_completions(request: Request):
        body = await read_json(request, runner.max_body)
        chat = await asyncio.to_thread(_chat_prompt, runner, body)
        opts = _chat_options(runner, body, chat)
        runner.prompt_limit.check(chat.prompt)
        prompt = await asyncio.to_thread(tokenize_mixed, runner.tokenizer, chat.prompt, True, True)
        think_open = chat.prompt.rstrip().endswith(THINK_OPEN)
        model = body.get("model") if isinstance(body.get("model"), str) else runner.model_name

        def fmt(slot: int) -> ChatFormat:
            return ChatFormat(
                runner, opts, prompt, slot, runner.tool_format, chat.parse_tools, think_open, model
            )

        return await generate(runner, request, prompt, opts, fmt)

    @app.post("/apply-template", openapi_extra=BODIES["chat"])
    async def apply_template(request: Request):
        body = await read_json(request, runner.max_body)
        chat = await asyncio.to_thread(_chat_prompt, runner, body)
        return {"prompt": chat.prompt}


def _chat_options(runner, body: dict, chat: ChatPrompt) -> CompletionOptions:
    """The sampling options of a chat request; OpenAI's logprobs/top_logprobs become n_probs."""
    data = {k: v for k, v in body.items() if k not in _CHAT_OWN}
    if body.get("logprobs") is True:
        data["n_probs"] = body.get("top_logprobs") or 1
    opts = parse_options(runner, data)
    opts.sampling.stop = chat.stop or list(runner.defaults.stop)
    opts.grammar, opts.json_schema, opts.schema_field = chat.grammar, chat.json_schema, chat.schema_field
    return opts


def _chat_prompt(runner, body: dict) -> ChatPrompt:
    return parse_chat_request(
        body,
        runner.template,
        runner.config.jinja,
        runner.token_text(runner.info.bos_id),
        runner.token_text(runner.info.eos_id),
    )
