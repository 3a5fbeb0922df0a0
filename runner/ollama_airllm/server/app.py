"""The HTTP app: llama-server's endpoints over the streaming engine (FastAPI/Starlette)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .args import RunnerConfig
from .chat import BUILTIN_TEMPLATES, CHATML, parse_chat_request
from .errors import ApiError, ContextError, json_type
from .grammar import GrammarFactory
from .openapi import BODIES, STATUS
from .params import CompletionOptions, parse_completion
from .prompt import PromptLimit, tokenize_mixed, tokenize_prompts
from .responses import ChatFormat, CompletionFormat
from .slots import SlotPool
from .toolcalls import THINK_OPEN, detect_format

log = logging.getLogger("ollama_airllm.server")


class Runner:
    """The loaded model and everything the endpoints share. `engine` is None while loading."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.engine = None
        self.info = None
        self.tokenizer = None
        self.slots: SlotPool | None = None
        self.grammars: GrammarFactory | None = None
        self.load_error: str | None = None
        self.ready = threading.Event()
        self.max_body = MIN_BODY_LIMIT
        self.model_name = config.alias or config.model
        self.template = CHATML
        self.tool_format = "hermes"
        self.build_info = f"ollama-airllm-{__version__}"
        self.started = int(time.time())

    def attach(self, engine) -> None:
        """Make a loaded engine live."""
        from ..engine import SamplingParams

        self.engine = engine
        self.info = engine.info
        self.tokenizer = engine.tokenizer
        self.defaults = SamplingParams(n_predict=self.config.n_predict)
        if self.config.seed is not None:
            self.defaults.seed = self.config.seed
        tmpl = self.config.chat_template
        if tmpl in BUILTIN_TEMPLATES:
            self.template = BUILTIN_TEMPLATES[tmpl]
        elif tmpl:
            self.template = tmpl
        elif self.info.chat_template and self.config.jinja:
            self.template = self.info.chat_template
        self.tool_format = detect_format(self.template)
        self.slots = SlotPool(engine, self.info.n_slots)
        self.grammars = GrammarFactory(self.tokenizer, self.info.n_vocab)
        self.max_body = body_limit(self.info.n_ctx * self.info.n_slots)
        self.prompt_limit = PromptLimit(self.info.n_ctx, 4 * self._longest_piece())
        self.ready.set()

    def _longest_piece(self) -> int:
        """Characters in the vocabulary's longest token (at least 1)."""
        pieces = (self.tokenizer.token_to_piece(i, special=True) for i in range(self.tokenizer.n_vocab))
        return max((len(p.decode("utf-8", errors="replace")) for p in pieces), default=1) or 1

    def token_text(self, tok: int | None) -> str:
        if tok is None:
            return ""
        return self.tokenizer.token_to_piece(tok, special=True).decode("utf-8", errors="replace")


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


def _sse(obj) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def _finite(obj):
    """JSON cannot carry NaN/inf: llama-server's nlohmann writes null for them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _engine_error(e: BaseException) -> ApiError:
    from ..engine import ContextLengthError

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


def create_app(runner: Runner) -> FastAPI:
    app = FastAPI(
        title="ollama-airllm runner (llama-server protocol)",
        version=__version__,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runner = runner

    @app.middleware("http")
    async def loading_gate(request: Request, call_next):
        if not runner.ready.is_set() and request.url.path != "/openapi.json":
            return ApiError("Loading model", 503).response()
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return ApiError("File Not Found", 404).response()
        return ApiError(str(exc.detail), exc.status_code).response()

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception):
        log.exception("request failed")
        return ApiError(f"{type(exc).__name__}: {exc}", 500).response()

    # --- status ------------------------------------------------------------------------------------------

    @app.get("/health", openapi_extra=STATUS)
    @app.get("/v1/health", include_in_schema=False)
    async def health():
        return {"status": "ok"}

    @app.get("/props", openapi_extra=STATUS)
    async def props():
        info = runner.info
        return {
            "default_generation_settings": {"params": _default_params(runner), "n_ctx": info.n_ctx},
            "total_slots": info.n_slots,
            "model_alias": runner.model_name,
            "model_ftype": info.file_type,
            "model_path": runner.config.model,
            "modalities": {"vision": False, "video": False, "audio": False},
            "media_marker": "<__media__>",
            "endpoint_slots": False,
            "endpoint_props": False,
            "endpoint_metrics": False,
            "ui": False,
            "ui_settings": {},
            "chat_template": runner.template,
            "chat_template_caps": {
                "supports_tools": "tools" in runner.template,
                "supports_tool_calls": "tool_call" in runner.template,
                "supports_system_role": True,
                "supports_parallel_tool_calls": True,
                "supports_object_arguments": "arguments | tojson" in runner.template,
                "supports_preserve_reasoning": "reasoning_content" in runner.template,
                "supports_reasoning_effort": "reasoning_effort" in runner.template,
                "supports_string_content": True,
                "supports_typed_content": False,
            },
            "bos_token": runner.token_text(info.bos_id),
            "eos_token": runner.token_text(info.eos_id),
            "build_info": runner.build_info,
            "is_sleeping": False,
            "cors_proxy_enabled": False,
            "engine": {
                "resident_layers": info.n_resident_layers,
                "streamed_layers": info.n_streamed_layers,
                "device": info.device_name,
            },
        }

    @app.post("/props", include_in_schema=False)
    async def post_props():
        raise ApiError(
            "This server does not support changing global properties. Start it with `--props`", 501
        )

    @app.get("/v1/models", openapi_extra=STATUS)
    @app.get("/models", include_in_schema=False)
    async def models():
        info = runner.info
        name = runner.model_name
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": "",
                    "size": "",
                    "digest": "",
                    "type": "model",
                    "description": "",
                    "tags": [""],
                    "capabilities": ["completion"],
                    "parameters": "",
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "",
                        "families": [""],
                        "parameter_size": "",
                        "quantization_level": "",
                    },
                }
            ],
            "object": "list",
            "data": [
                {
                    "id": name,
                    "aliases": [],
                    "tags": [],
                    "object": "model",
                    "created": runner.started,
                    "owned_by": "llamacpp",
                    "meta": {
                        "vocab_type": 2,
                        "n_vocab": info.n_vocab,
                        "n_ctx": info.n_ctx,
                        "n_ctx_train": info.n_ctx_train,
                        "n_embd": info.n_embd,
                        "n_params": 0,
                        "size": info.file_size,
                        "ftype": info.file_type,
                    },
                }
            ],
        }

    # --- tokens ------------------------------------------------------------------------------------------

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

    # --- generation --------------------------------------------------------------------------------------

    @app.post("/completion", openapi_extra=BODIES["completion"])
    @app.post("/completions", include_in_schema=False)
    async def completion(request: Request):
        body = await read_json(request, runner.max_body)
        opts = _parse_options(runner, body)
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

        return await _generate(runner, request, prompt, opts, fmt)

    @app.post("/v1/chat/completions", openapi_extra=BODIES["chat"])
    @app.post("/chat/completions", include_in_schema=False)
    async def chat_completions(request: Request):
        body = await read_json(request, runner.max_body)
        chat = await asyncio.to_thread(_chat_prompt, runner, body)
        data = {
            k: v
            for k, v in body.items()
            if k not in ("grammar", "json_schema", "stop", "prompt", "logprobs", "top_logprobs")
        }
        if body.get("logprobs") is True:  # OpenAI's logprobs/top_logprobs -> n_probs
            data["n_probs"] = body.get("top_logprobs") or 1
        opts = _parse_options(runner, data)
        opts.sampling.stop = chat.stop or list(runner.defaults.stop)
        opts.grammar, opts.json_schema, opts.schema_field = chat.grammar, chat.json_schema, chat.schema_field
        runner.prompt_limit.check(chat.prompt)
        prompt = await asyncio.to_thread(tokenize_mixed, runner.tokenizer, chat.prompt, True, True)
        think_open = chat.prompt.rstrip().endswith(THINK_OPEN)
        model = body.get("model") if isinstance(body.get("model"), str) else runner.model_name

        def fmt(slot: int) -> ChatFormat:
            return ChatFormat(
                runner, opts, prompt, slot, runner.tool_format, chat.parse_tools, think_open, model
            )

        return await _generate(runner, request, prompt, opts, fmt)

    @app.post("/apply-template", openapi_extra=BODIES["chat"])
    async def apply_template(request: Request):
        body = await read_json(request, runner.max_body)
        chat = await asyncio.to_thread(_chat_prompt, runner, body)
        return {"prompt": chat.prompt}

    # --- embeddings --------------------------------------------------------------------------------------

    @app.post("/v1/embeddings", openapi_extra=BODIES["embeddings"])
    async def embeddings_oai(request: Request):
        return await _embeddings(runner, request, oai=True)

    @app.post("/embeddings", include_in_schema=False)
    @app.post("/embedding", include_in_schema=False)
    async def embeddings(request: Request):
        return await _embeddings(runner, request, oai=False)

    return app


def _parse_options(runner: Runner, body: dict) -> CompletionOptions:
    opts = parse_completion(body, runner.defaults, runner.info.n_slots)
    opts.sampling.min_keep = min(opts.sampling.min_keep, runner.info.n_vocab)  # "keep all" beyond the vocab
    return opts


def _tokenize(runner: Runner, body: dict) -> dict:
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
    out = []
    for t in toks:
        raw = runner.tokenizer.token_to_piece(t) if 0 <= t < runner.info.n_vocab else b""
        try:
            piece = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)
        out.append({"id": t, "piece": piece})
    return {"tokens": out}


def _flag(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(f"Field '{name}': type must be boolean, but is {json_type(v)}")
    return v


def _default_params(runner: Runner) -> dict:
    from .params import generation_settings

    s = generation_settings(CompletionOptions(sampling=runner.defaults), runner.model_name, runner.info.n_ctx)
    for k in (
        "stop",
        "logit_bias",
        "grammar",
        "grammar_lazy",
        "grammar_triggers",
        "preserved_tokens",
        "dry_sequence_breakers",
    ):
        s.pop(k, None)
    return s


def _chat_prompt(runner: Runner, body: dict):
    return parse_chat_request(
        body,
        runner.template,
        runner.config.jinja,
        runner.token_text(runner.info.bos_id),
        runner.token_text(runner.info.eos_id),
    )


def _constraint(runner: Runner, opts: CompletionOptions):
    if opts.json_schema is not None:
        return runner.grammars.from_json_schema(opts.json_schema, opts.schema_field)
    if opts.grammar:
        return runner.grammars.from_gbnf(opts.grammar)
    return None


async def _generate(runner: Runner, request: Request, prompt: list[int], opts: CompletionOptions, make_fmt):
    """Run one generation and answer it as a stream of SSE events or as one JSON object."""
    from ..engine import GenerationResult

    n_ctx = runner.info.n_ctx
    if len(prompt) >= n_ctx:
        raise ContextError(len(prompt), n_ctx)
    constraint = await asyncio.to_thread(_constraint, runner, opts)
    if not prompt:  # llama-server answers an empty prompt with an empty final response
        fmt = make_fmt(0)
        empty = GenerationResult([], "", "none")
        chunks = fmt.final(empty)
        if opts.stream:
            return StreamingResponse(
                iter([_sse(_finite(c)) for c in chunks] + (["data: [DONE]\n\n"] if fmt.done_marker else [])),
                media_type="text/event-stream",
            )
        return JSONResponse(_finite(chunks[0]))
    gen = await runner.slots.start(prompt, opts.sampling, constraint, opts.id_slot, opts.cache_prompt)
    watcher = asyncio.create_task(_watch_disconnect(request, gen.cancel))
    fmt = make_fmt(gen.slot)
    first = await gen.events.get()
    if first.kind == "error":
        watcher.cancel()
        raise _engine_error(first.error)

    if not opts.stream:
        try:
            while True:
                ev = await gen.events.get()
                if ev.kind == "token":
                    fmt.partial(ev.token, ev.piece, ev.probs)
                elif ev.kind == "error":
                    raise _engine_error(ev.error)
                elif ev.kind == "done":
                    return JSONResponse(_finite(fmt.final(ev.result)[0]))
        finally:
            watcher.cancel()
            gen.cancel()

    ping = 30.0

    async def stream():
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(gen.events.get(), timeout=ping)
                except TimeoutError:
                    yield ":\n\n"
                    continue
                if ev.kind == "token":
                    for c in fmt.partial(ev.token, ev.piece, ev.probs):
                        yield _sse(_finite(c))
                elif ev.kind == "error":
                    yield _sse({"error": _engine_error(ev.error).body()["error"]})
                    return
                elif ev.kind == "done":
                    if ev.result.stop_reason == "cancelled":
                        return
                    for c in fmt.final(ev.result):
                        yield _sse(_finite(c))
                    if fmt.done_marker:
                        yield "data: [DONE]\n\n"
                    return
        finally:
            watcher.cancel()
            gen.cancel()

    return StreamingResponse(stream(), media_type="text/event-stream")


async def _embeddings(runner: Runner, request: Request, oai: bool):
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
    results = []
    for toks in token_lists:
        if not toks:
            raise ApiError("Input content cannot be empty")
        if len(toks) > runner.info.n_ctx:  # llama-server answers this with a 500; it is the input's fault
            raise ApiError(
                f"input ({len(toks)} tokens) is too large to process. increase the physical batch "
                f"size (current batch size: {runner.info.n_ctx})"
            )
        vec = await runner.slots.run_exclusive(runner.engine.embed, toks)
        results.append((_normalize(vec, norm), len(toks)))
    if not oai:
        return [{"index": i, "embedding": [v]} for i, (v, _n) in enumerate(results)]
    data = []
    for i, (v, _n) in enumerate(results):
        if fmt_name == "base64":
            import base64
            import struct

            enc = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
            data.append({"embedding": enc, "index": i, "object": "embedding", "encoding_format": "base64"})
        else:
            data.append({"embedding": v, "index": i, "object": "embedding"})
    n = sum(n for _v, n in results)
    model = body.get("model") if isinstance(body.get("model"), str) else runner.model_name
    return {"model": model, "object": "list", "usage": {"prompt_tokens": n, "total_tokens": n}, "data": data}


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
