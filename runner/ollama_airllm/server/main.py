"""`ollama-airllm-runner`: a drop-in llama-server. Ollama starts it with llama-server's command line.

The HTTP server listens first and answers /health with 503 "Loading model" while the model loads,
then 200 {"status":"ok"}, as llama-server does. SIGTERM/SIGINT cancel running generations (the engine
stops within one layer) and exit 0. A model that fails to load ends the process with exit 1.
"""

from __future__ import annotations

import logging
import os
import signal
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
    OLLAMA_AIRLLM_* environment (compression, cache dir, VRAM reserve)."""
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


def serve(cfg: RunnerConfig) -> int:
    """Run the HTTP server until SIGTERM/SIGINT; returns the exit code."""
    import uvicorn

    from .app import Runner, create_app

    _setup_logging(cfg)
    emit(f"build: {__version__} (ollama-airllm layer-streaming runner, llama-server protocol)")
    for item in cfg.ignored:
        emit(f"main: ignoring {item}")
    runner = Runner(cfg)
    app = create_app(runner)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # not uvicorn's: it re-raises the signal after shutdown, so the process would die by it
            if runner.slots is not None:  # running generations stop within one layer
                runner.slots.cancel_all()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    server = Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
            lifespan="off",
        )
    )
    failed: list[str] = []

    def load() -> None:
        try:
            engine = load_engine(cfg)
        except Exception as e:  # the reason goes to the log Ollama shows; no traceback for expected errors
            from ..errors import UserError

            msg = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, UserError | FileNotFoundError | ValueError):
                log.exception("model load failed")
            emit(f"llama_model_load: error loading model: {msg}")
            emit("main: exiting due to model loading error")
            failed.append(msg)
            server.should_exit = True
            return
        runner.attach(engine)
        emit("main: model loaded")
        emit(f"main: server is listening on http://{cfg.host}:{cfg.port}")

    loader = threading.Thread(target=load, name="model-load", daemon=True)
    emit(f"main: HTTP server is listening, hostname: {cfg.host}, port: {cfg.port}, http threads: 1")
    emit("main: loading model")
    loader.start()
    try:
        server.run()
    finally:
        if runner.slots is not None:
            runner.slots.shutdown()
        if runner.engine is not None:
            runner.engine.close()
    if failed:
        return 1
    emit("srv    operator(): cleaning up before exit...")
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(argv)
    if cfg is None:
        print(f"version: {__version__} (ollama-airllm-runner)")
        print("built with: python, torch, llama-server protocol of llama.cpp b10488")
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
