"""The HTTP app: llama-server's endpoints over the streaming engine (FastAPI/Starlette)."""

from __future__ import annotations

import logging
import threading
import time

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .args import RunnerConfig
from .body import MIN_BODY_LIMIT, body_limit
from .chat import BUILTIN_TEMPLATES, CHATML
from .errors import ApiError
from .grammar import GrammarFactory
from .prompt import PromptLimit
from .routes import chat, completion, embeddings, props, tokenize
from .slots import SlotPool
from .toolcalls import detect_format

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


def create_app(runner: Runner) -> FastAPI:
    """The app with llama-server's routes; while the model loads every route but /openapi.json is a 503."""
    app = FastAPI(
        title="ollama-airllm runner (llama-server protocol)",
        version=__version__,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runner = runner
    _add_error_handling(app, runner)
    for routes in (props, tokenize, completion, chat, embeddings):
        routes.register(app, runner)
    return app


def _add_error_handling(app: FastAPI, runner: Runner) -> None:
    """The loading gate, and llama-server's error JSON for every failure."""

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
