"""llama-server's command line, as Ollama v0.34.4 passes it, parsed into a RunnerConfig.

Flags that mean something to the runner are honoured; flags that only tune llama.cpp internals are
accepted and reported as ignored; anything else is a usage error (exit 2), like llama-server.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

DEFAULT_PORT = 8080  # llama-server's default; standalone `ollama-airllm serve` uses 11435


@dataclass
class RunnerConfig:
    """Everything the runner takes from its command line."""

    model: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    ctx_size: int = 0  # total over all slots; 0 = the model's training context (capped by the engine)
    parallel: int = 1
    batch_size: int = 512
    n_predict: int = -1
    alias: str | None = None
    jinja: bool = True
    chat_template: str | None = None  # a built-in name ("chatml") or jinja text
    embedding: bool = False
    n_gpu_layers: int | None = None  # None = auto (fit), 0 = CPU only, N = first N layers resident
    main_gpu: int | None = None
    threads: int | None = None
    seed: int | None = None
    log_verbosity: int = 3
    log_prefix: bool = True
    ignored: list[str] = field(default_factory=list)  # "--flag value (why)" for the log


# flag -> why it is accepted but has no effect in the layer-streaming runner
_IGNORED_WITH_VALUE = {
    ("--cache-type-k", "-ctk"): "the KV cache is kept in the compute dtype",
    ("--cache-type-v", "-ctv"): "the KV cache is kept in the compute dtype",
    ("--ubatch-size", "-ub"): "the prompt is computed in --batch-size chunks",
    ("--split-mode", "-sm"): "one device is used",
    ("--keep",): "no context shift: generation stops at the end of the context",
    ("--lora",): "LoRA adapters are not supported by the layer-streaming runner",
    ("--mmproj",): "multimodal projectors are not supported by the layer-streaming runner",
    ("--spec-type",): "no speculative decoding",
    ("--spec-draft-n-max",): "no speculative decoding",
    ("--spec-draft-model",): "no speculative decoding",
    ("--image-min-tokens",): "no image input",
    ("--load-mode",): "weights are streamed from the file",
    ("--fit",): "the runner decides residency from free device memory",
    ("--fit-target",): "the runner decides residency from free device memory",
    ("--threads-http",): "HTTP is served by uvicorn",
    ("--timeout", "-to"): "HTTP timeouts are uvicorn's",
    ("--reasoning-format",): "reasoning is always split into reasoning_content",
    ("--reasoning-budget",): "no reasoning budget",
    ("--numa",): "no NUMA placement",
    ("--device", "-dev"): "use --main-gpu or OLLAMA_AIRLLM_DEVICE",
    ("--log-file",): "logs go to stdout",
    ("--api-key",): "no API keys: the runner listens on loopback for Ollama",
}
_IGNORED_SWITCHES = {
    ("--no-webui", "--no-ui", "--webui", "--ui"): "no web UI",
    ("--offline",): "the runner never downloads anything",
    ("--context-shift", "--no-context-shift"): "no context shift: generation stops at the end of the context",
    ("--no-mmproj-offload", "--no-mmproj"): "no multimodal projectors",
    ("--spec-draft-backend-sampling",): "no speculative decoding",
    ("--no-mmap", "--mmap", "--mlock"): "weights are streamed from the file",
    ("--no-warmup", "--warmup"): "no warm-up pass",
    ("--metrics", "--slots", "--no-slots", "--props"): "these endpoints are not served",
    ("--cont-batching", "-cb", "--no-cont-batching", "-nocb"): "slots run one at a time on the device",
    ("--kv-unified", "-kvu", "--no-kv-unified"): "each slot has its own KV cache",
    ("--log-colors",): "plain logs",
    ("--log-timestamps",): "no timestamps",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line and exit 2 (the full usage is long; --help shows it)."""
        self.exit(2, f"error: {message}\nrun `{self.prog} --help` for the accepted flags\n")


def _ngl(value: str) -> int | None:
    if value in ("auto", "-1"):
        return None
    if value == "all":
        return 1 << 30
    n = int(value)
    if n < -1:
        raise argparse.ArgumentTypeError(f"invalid value for -ngl: {value!r} (allowed: auto, all, -1, 0..N)")
    return n


def _on_off(value: str) -> str:
    if value not in ("on", "off", "auto", "1", "0", "true", "false"):
        raise argparse.ArgumentTypeError(f"invalid value {value!r} (allowed: on, off, auto)")
    return value


def build_parser(prog: str = "ollama-airllm-runner") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        allow_abbrev=False,
        description="Layer-streaming runner that speaks llama-server's command line and HTTP API.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("-m", "--model", help="GGUF file (e.g. an Ollama blob) or HF safetensors directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("-c", "--ctx-size", type=int, default=0, help="total context over all slots (0 = model's)")
    p.add_argument("-np", "--parallel", type=int, default=1, help="number of slots")
    p.add_argument("-b", "--batch-size", type=int, default=512, help="prompt tokens per forward chunk")
    p.add_argument("-n", "--n-predict", "--predict", type=int, default=-1)
    p.add_argument("-a", "--alias", help="model name reported by the API")
    p.add_argument("--jinja", dest="jinja", action="store_true", default=True)
    p.add_argument("--no-jinja", dest="jinja", action="store_false")
    p.add_argument("--chat-template", help="built-in template name (chatml) or jinja text")
    p.add_argument("--chat-template-file", help="file holding a jinja chat template")
    p.add_argument("--embedding", "--embeddings", action="store_true", help="serve /v1/embeddings")
    p.add_argument("--pooling", choices=["mean", "none", "cls", "last", "rank"], default="mean")
    p.add_argument(
        "-ngl",
        "--n-gpu-layers",
        "--gpu-layers",
        type=_ngl,
        default=None,
        help="layers kept resident on the GPU (auto = as many as fit; 0 = CPU only)",
    )
    p.add_argument("-mg", "--main-gpu", type=int, help="GPU index (after ROCR/HIP_VISIBLE_DEVICES)")
    p.add_argument("-t", "--threads", type=int, help="CPU threads for torch")
    p.add_argument("-s", "--seed", type=int, help="default sampling seed")
    p.add_argument(
        "-fa",
        "--flash-attn",
        type=_on_off,
        nargs="?",
        const="on",
        help="accepted; attention is torch's scaled_dot_product_attention",
    )
    p.add_argument("-lv", "--log-verbosity", "--verbosity", type=int, default=3)
    p.add_argument("-v", "--verbose", "--log-verbose", action="store_true")
    p.add_argument("--log-disable", action="store_true")
    p.add_argument("--no-log-prefix", dest="log_prefix", action="store_false", default=True)
    p.add_argument("--log-prefix", dest="log_prefix", action="store_true")
    p.add_argument("--no-log-timestamps", action="store_true")
    p.add_argument("--no-log-colors", action="store_true")
    for names, why in _IGNORED_WITH_VALUE.items():
        p.add_argument(
            *names,
            dest="ign_" + names[0].lstrip("-").replace("-", "_"),
            action="append",
            metavar="VALUE",
            help=f"accepted, ignored: {why}",
        )
    for names, why in _IGNORED_SWITCHES.items():
        for n in names:
            p.add_argument(
                n,
                dest="sw_" + n.lstrip("-").replace("-", "_"),
                action="store_true",
                help=f"accepted, ignored: {why}",
            )
    return p


def _ignored(ns: argparse.Namespace) -> list[str]:
    out = []
    for names, why in _IGNORED_WITH_VALUE.items():
        for v in getattr(ns, "ign_" + names[0].lstrip("-").replace("-", "_")) or []:
            out.append(f"{names[0]} {v} ({why})")
    for names, why in _IGNORED_SWITCHES.items():
        out += [f"{n} ({why})" for n in names if getattr(ns, "sw_" + n.lstrip("-").replace("-", "_"))]
    if ns.pooling != "mean":
        out.append(f"--pooling {ns.pooling} (mean pooling only)")
    if ns.flash_attn is not None:
        out.append(f"--flash-attn {ns.flash_attn} (attention is torch's scaled_dot_product_attention)")
    return out


def parse_args(argv: list[str], prog: str = "ollama-airllm-runner") -> RunnerConfig | None:
    """RunnerConfig from llama-server flags; None after --version. Exits 2 on a bad command line."""
    p = build_parser(prog)
    ns = p.parse_args(argv)
    if ns.version:
        return None
    if not ns.model:
        p.error("the following argument is required: -m/--model")
    for name, value, low in (
        ("--parallel", ns.parallel, 1),
        ("--ctx-size", ns.ctx_size, 0),
        ("--batch-size", ns.batch_size, 1),
        ("--port", ns.port, 0),
    ):
        if value < low:
            p.error(f"invalid value for {name}: {value} (must be >= {low})")
    if ns.port > 65535:
        p.error(f"invalid value for --port: {ns.port} (must be <= 65535)")
    template = ns.chat_template
    if ns.chat_template_file:
        try:
            with open(ns.chat_template_file, encoding="utf-8") as f:
                template = f.read()
        except OSError as e:
            p.error(f"--chat-template-file {ns.chat_template_file}: {e.strerror}")
    return RunnerConfig(
        model=ns.model,
        host=ns.host,
        port=ns.port,
        ctx_size=ns.ctx_size,
        parallel=ns.parallel,
        batch_size=ns.batch_size,
        n_predict=ns.n_predict,
        alias=ns.alias,
        jinja=ns.jinja,
        chat_template=template,
        embedding=ns.embedding,
        n_gpu_layers=ns.n_gpu_layers,
        main_gpu=ns.main_gpu,
        threads=ns.threads,
        seed=ns.seed,
        log_verbosity=-1 if ns.log_disable else (10 if ns.verbose else ns.log_verbosity),
        log_prefix=ns.log_prefix,
        ignored=_ignored(ns),
    )
