"""`ollama-airllm serve`: the runner without Ollama, for clients (opencode, openai) that talk to it directly.

    ollama-airllm serve --model /path/to/model.gguf [--port 11435] [--host 127.0.0.1]

It serves the same llama-server API (OpenAI-compatible under /v1) as when Ollama starts it. The
systemd unit ollama-airllm@.service runs it for one model per instance.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import UsageError
from .args import RunnerConfig

STANDALONE_PORT = 11435


@click.command("serve")
@click.option(
    "--model",
    "-m",
    "model",
    required=True,
    type=click.Path(dir_okay=True, path_type=Path),
    help="GGUF file (an Ollama blob works) or HF safetensors directory.",
)
@click.option("--port", default=STANDALONE_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--ctx-size",
    "-c",
    default=0,
    type=click.IntRange(min=0),
    help="Total context over all slots (0 = the model's, at most 4096 per slot).",
)
@click.option(
    "--parallel",
    "-np",
    default=1,
    type=click.IntRange(min=1),
    show_default=True,
    help="Parallel slots; further requests queue.",
)
@click.option("--alias", help="Model id reported by /v1/models (default: the file name).")
@click.option("--device", help="auto, cpu, cuda or cuda:N (ROCm GPUs are cuda devices in torch).")
@click.option("--embedding", is_flag=True, help="Also serve /v1/embeddings.")
@click.option(
    "--chat-template-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Jinja chat template to use instead of the model's.",
)
def serve(
    model: Path,
    port: int,
    host: str,
    ctx_size: int,
    parallel: int,
    alias: str | None,
    device: str | None,
    embedding: bool,
    chat_template_file: Path | None,
) -> None:
    """Serve one model over llama-server's HTTP API (OpenAI-compatible under /v1)."""
    if not model.exists():
        raise UsageError(f"--model {model}: no such file or directory")
    if device:
        os.environ["OLLAMA_AIRLLM_DEVICE"] = device
    template = chat_template_file.read_text(encoding="utf-8") if chat_template_file else None
    cfg = RunnerConfig(
        model=str(model),
        host=host,
        port=port,
        ctx_size=ctx_size,
        parallel=parallel,
        alias=alias or model.name,
        embedding=embedding,
        chat_template=template,
    )
    from .main import serve as run

    raise SystemExit(run(cfg))
