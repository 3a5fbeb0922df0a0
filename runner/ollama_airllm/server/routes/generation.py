"""What /completion and /v1/chat/completions share: options, constraints, and running one generation."""

from __future__ import annotations

import asyncio
import json
import math

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import ApiError, ContextError
from ..params import CompletionOptions, parse_completion

PING_SECONDS = 30.0  # an SSE comment line this often keeps an idle stream (a long prompt) alive


def parse_options(runner, body: dict) -> CompletionOptions:
    """The request's options, with min_keep capped at the vocabulary ("keep all" beyond it)."""
    opts = parse_completion(body, runner.defaults, runner.info.n_slots)
    opts.sampling.min_keep = min(opts.sampling.min_keep, runner.info.n_vocab)
    return opts


def sse(obj) -> str:
    return "data: " + json.dumps(finite(obj), ensure_ascii=False, separators=(",", ":")) + "\n\n"


def finite(obj):
    """JSON cannot carry NaN/inf: llama-server's nlohmann writes null for them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def _engine_error(e: BaseException) -> ApiError:
    from ...engine import ContextLengthError

    if isinstance(e, ApiError):
        return e
    if isinstance(e, ContextLengthError):
        return ContextError(e.n_prompt, e.n_ctx)
    if isinstance(e, ValueError):
        return ApiError(str(e))
    return ApiError(f"generation failed: {type(e).__name__}: {e}", 500)


async def _watch_disconnect(request: Request, on_gone) -> None:
    """Call on_gone() when the client goes away (the body has been read already)."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            on_gone()
            return


def _constraint(runner, opts: CompletionOptions):
    if opts.json_schema is not None:
        return runner.grammars.from_json_schema(opts.json_schema, opts.schema_field)
    if opts.grammar:
        return runner.grammars.from_gbnf(opts.grammar)
    return None


def _empty_answer(opts: CompletionOptions, fmt):
    """llama-server answers an empty prompt with an empty final response."""
    from ...engine import GenerationResult

    chunks = fmt.final(GenerationResult([], "", "none"))
    if opts.stream:
        lines = [sse(c) for c in chunks] + (["data: [DONE]\n\n"] if fmt.done_marker else [])
        return StreamingResponse(iter(lines), media_type="text/event-stream")
    return JSONResponse(finite(chunks[0]))


async def generate(runner, request: Request, prompt: list[int], opts: CompletionOptions, make_fmt):
    """Run one generation and answer it as a stream of SSE events or as one JSON object."""
    n_ctx = runner.info.n_ctx
    if len(prompt) >= n_ctx:
        raise ContextError(len(prompt), n_ctx)
    constraint = await asyncio.to_thread(_constraint, runner, opts)
    if not prompt:
        return _empty_answer(opts, make_fmt(0))
    gen = await runner.slots.start(prompt, opts.sampling, constraint, opts.id_slot, opts.cache_prompt)
    watcher = asyncio.create_task(_watch_disconnect(request, gen.cancel))
    fmt = make_fmt(gen.slot)
    first = await gen.events.get()
    if first.kind == "error":
        watcher.cancel()
        raise _engine_error(first.error)
    if not opts.stream:
        return await _whole(gen, watcher, fmt)
    return StreamingResponse(_stream(gen, watcher, fmt), media_type="text/event-stream")


async def _whole(gen, watcher, fmt) -> JSONResponse:
    """Collect every event, then answer with the final object."""
    try:
        while True:
            ev = await gen.events.get()
            if ev.kind == "token":
                fmt.partial(ev.token, ev.piece, ev.probs)
            elif ev.kind == "error":
                raise _engine_error(ev.error)
            elif ev.kind == "done":
                return JSONResponse(finite(fmt.final(ev.result)[0]))
    finally:
        watcher.cancel()
        gen.cancel()


async def _stream(gen, watcher, fmt):
    """The SSE lines: partial events, then the final ones (nothing after a cancel)."""
    try:
        while True:
            try:
                ev = await asyncio.wait_for(gen.events.get(), timeout=PING_SECONDS)
            except TimeoutError:
                yield ":\n\n"
                continue
            if ev.kind == "token":
                for c in fmt.partial(ev.token, ev.piece, ev.probs):
                    yield sse(c)
            elif ev.kind == "error":
                yield sse({"error": _engine_error(ev.error).body()["error"]})
                return
            elif ev.kind == "done":
                if ev.result.stop_reason == "cancelled":
                    return
                for c in fmt.final(ev.result):
                    yield sse(c)
                if fmt.done_marker:
                    yield "data: [DONE]\n\n"
                return
    finally:
        watcher.cancel()
        gen.cancel()
