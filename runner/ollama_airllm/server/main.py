"""`ollama-airllm-runner`: a drop-in llama-server. Ollama starts it with llama-server's command line.

The HTTP server binds and listens first (a taken port: one line and exit 1, as llama-server), then logs
"HTTP server is listening" and answers /health with 503 "Loading model" while the model loads, then
200 {"status":"ok"}, as llama-server does. SIGTERM/SIGINT, at any point, exit 0: running generations are
cancelled (the engine stops within one layer), queued requests get a 503, and a load still in progress
is abandoned (see _hard_exit). A model that fails to load ends the process with exit 1.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading

from .. import __version__
from .args import RunnerConfig, parse_args
from .environ import reexec_clean
from .loglines import device_lines, emit, load_lines

log = logging.getLogger("ollama_airllm.server")


def _setup_logging(cfg: RunnerConfig) -> None:
    level = (
        logging.WARNING
        if cfg.log_verbosity < 0
        else (logging.DEBUG if cfg.log_verbosity > 4 else logging.INFO)
    )
    fmt = "%(levelname).1s %(name)s: %(message)s" if cfg.log_prefix else "%(name)s: %(message)s"
    logging.basicConfig(stream=sys.stdout, level=level, format=fmt, force=True)


def _env_settings(env) -> dict:
    """EngineConfig fields from the package's /etc/default/ollama keys (OLLAMA_AIRLLM_*)."""
    from ..errors import UsageError

    out: dict = {}
    comp = env.get("OLLAMA_AIRLLM_COMPRESSION", "").strip().lower()
    if comp not in ("", "none", "4bit", "8bit"):
        raise UsageError(f"OLLAMA_AIRLLM_COMPRESSION={comp!r} is not valid: use none, 4bit or 8bit")
    if comp in ("4bit", "8bit"):
        out["compression"] = comp
    if env.get("OLLAMA_AIRLLM_CACHE_DIR"):
        out["hf_split_dir"] = env["OLLAMA_AIRLLM_CACHE_DIR"]
    graphs = env.get("OLLAMA_AIRLLM_GRAPHS", "").strip()
    if graphs not in ("", "0", "1"):
        raise UsageError(f"OLLAMA_AIRLLM_GRAPHS={graphs!r} is not valid: use 0 (off) or 1 (on, the default)")
    if graphs:
        out["graphs"] = graphs == "1"
    reserve = env.get("OLLAMA_AIRLLM_VRAM_RESERVE_MIB", "").strip()
    if reserve:
        if not reserve.isdigit():
            raise UsageError(
                f"OLLAMA_AIRLLM_VRAM_RESERVE_MIB={reserve!r} is not valid: use a whole number of MiB"
            )
        out["reserve"] = int(reserve) << 20
    return out


def engine_config(cfg: RunnerConfig, env=None):
    """EngineConfig from llama-server flags (-c is the total context, split evenly over -np slots) and the
    OLLAMA_AIRLLM_* environment (compression, cache dir, VRAM reserve, decode graphs)."""
    from ..engine import EngineConfig

    n_ctx = cfg.ctx_size // cfg.parallel if cfg.ctx_size else None
    device = "auto"
    resident = None
    if cfg.n_gpu_layers == 0:
        device = "cpu"
    elif cfg.n_gpu_layers is not None:
        resident = cfg.n_gpu_layers
    if cfg.main_gpu is not None and device != "cpu":
        device = f"cuda:{cfg.main_gpu}"
    return EngineConfig(
        device=device,
        n_ctx=n_ctx or None,
        n_slots=cfg.parallel,
        n_batch=cfg.batch_size,
        resident_layers=resident,
        **_env_settings(os.environ if env is None else env),
    )


def load_engine(cfg: RunnerConfig):
    from ..engine import Engine

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    for line in device_lines():
        emit(line)
    engine = Engine.load(cfg.model, engine_config(cfg))
    for line in load_lines(engine.info):
        emit(line)
    return engine


def _quit_on_signals() -> None:
    """Until uvicorn takes over, SIGTERM/SIGINT end the runner at once with exit 0.

    Nothing is running yet (no connections, no load), and raising from a signal handler in the middle
    of importing torch or numpy would leave those modules half-initialised.
    """
    signal.signal(signal.SIGTERM, _quit_now)
    signal.signal(signal.SIGINT, _quit_now)


def _quit_now(_sig, _frame) -> None:
    _hard_exit(0)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything says it listens. A taken port is one clear line."""
    from ..errors import UserError

    try:
        family, kind, proto, _name, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise UserError(f"--host {host}: {_reason(e)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UserError(
            f"--port {port}: {_reason(e)} (couldn't bind HTTP server socket, hostname: {host})"
        ) from None
    return sock


def _reason(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def _hard_exit(code: int) -> None:
    """End the process now, skipping interpreter teardown.

    Used when the model-load thread is still inside torch's native code: finalizing the interpreter
    under it runs C++ static destructors while that thread holds them, and the process aborts with
    "terminate called without an active exception" (exit 134). The loader writes no files, so
    nothing is lost by not waiting for it (a large model can take minutes to load).
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(cfg: RunnerConfig) -> int:
    """Run the HTTP server until SIGTERM/SIGINT; returns the exit code."""
    _quit_on_signals()
    from ..errors import UserError
    from .app import Runner

    _setup_logging(cfg)
    try:
        sock = _bind(cfg.host, cfg.port)
    except UserError as e:
        print(f"error: {e.message}", file=sys.stderr, flush=True)
        return e.exit_code
    port = sock.getsockname()[1]
    emit(f"build: {__version__} (ollama-airllm layer-streaming runner, llama-server protocol)")
    for item in cfg.ignored:
        emit(f"main: ignoring {item}")
    runner = Runner(cfg)
    failed: list[str] = []
    server, loader = _make_server(cfg, runner, port, failed)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # cleanup below is short; a second signal waits
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if runner.slots is not None:
            runner.slots.shutdown()
        if runner.engine is not None:
            runner.engine.close()
        code = 1 if failed else 0
        if code == 0:
            emit("srv    operator(): cleaning up before exit...")
        if loader.is_alive():
            _hard_exit(code)
    return code


def _make_server(cfg: RunnerConfig, runner, port: int, failed: list[str]):
    """The uvicorn server and the model-load thread it starts once listening. A failed load appends its
    reason to `failed` and stops the server."""
    import uvicorn

    from .app import create_app

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:  # Ollama reads this line; only now does the socket accept connections
                emit(f"main: HTTP server is listening, hostname: {cfg.host}, port: {port}, http threads: 1")
                emit("main: loading model")
                loader.start()

        def handle_exit(self, sig, frame) -> None:
            # not uvicorn's: it re-raises the signal after shutdown, so the process would die by it
            if runner.slots is not None:  # queued requests get a 503; running ones stop within one layer
                runner.slots.close()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    config = uvicorn.Config(
        create_app(runner), log_level="warning", access_log=False, timeout_graceful_shutdown=3, lifespan="off"
    )
    server = Server(config)
    loader = threading.Thread(
        target=_load, args=(cfg, runner, server, port, failed), name="model-load", daemon=True
    )
    return server, loader


def _load(cfg: RunnerConfig, runner, server, port: int, failed: list[str]) -> None:
    """Load the model (in the model-load thread) and make it live, unless the server is stopping."""
    from ..errors import UserError

    try:
        engine = load_engine(cfg)
    except Exception as e:  # the reason goes to the log Ollama shows; no traceback for expected errors
        msg = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, UserError | FileNotFoundError | ValueError):
            log.exception("model load failed")
        emit(f"llama_model_load: error loading model: {msg}")
        emit("main: exiting due to model loading error")
        failed.append(msg)
        server.should_exit = True
        return
    if server.should_exit:  # stopped while loading: nothing may start now
        engine.close()
        return
    runner.attach(engine)
    emit("main: model loaded")
    emit(f"main: server is listening on http://{cfg.host}:{port}")


def main(argv: list[str] | None = None) -> None:
    _quit_on_signals()
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(argv)
    if cfg is None:
        print(f"version: {__version__} (ollama-airllm-runner)")
        print("built with: python, torch, llama-server protocol of llama.cpp b11081")
        raise SystemExit(0)
    reexec_clean(argv)
    if not os.path.exists(cfg.model):
        print(f"error: --model {cfg.model}: no such file or directory", file=sys.stderr)
        raise SystemExit(1)
    from ..errors import UsageError

    try:
        _env_settings(os.environ)
    except UsageError as e:
        print(f"error: {e.message}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    raise SystemExit(serve(cfg))


if __name__ == "__main__":
    main()
