"""`python -m ollama_airllm.engine`: inspect a model file or generate from it (a debugging aid)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click

from .config import EngineConfig


def _load(path: str, device: str, n_ctx: int | None, resident: float | None):
    from .engine import Engine

    try:
        return Engine.load(path, EngineConfig(device=device, n_ctx=n_ctx, resident_fraction=resident))
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run the layer-streaming engine on a GGUF file or an HF checkpoint directory."""


@main.command()
@click.argument("path", type=click.Path(dir_okay=True))
@click.option("--device", default="auto", show_default=True)
def info(path: str, device: str) -> None:
    """Print what the engine would load, as JSON."""
    eng = _load(path, device, None, None)
    d = asdict(eng.info)
    d.pop("chat_template")
    click.echo(json.dumps(d, indent=2))


@main.command()
@click.argument("path", type=click.Path(dir_okay=True))
@click.option("-p", "--prompt", required=True)
@click.option("-n", "--n-predict", default=32, show_default=True)
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--ctx", "n_ctx", type=int, default=None)
@click.option("--resident", type=float, default=None, help="fraction of layers kept resident (0..1)")
def generate(
    path: str,
    prompt: str,
    n_predict: int,
    temperature: float,
    seed: int,
    device: str,
    n_ctx: int | None,
    resident: float | None,
) -> None:
    """Generate from a plain-text prompt and stream the text to stdout."""
    from .sampling import SamplingParams

    eng = _load(path, device, n_ctx, resident)
    ids = eng.tokenizer.encode(prompt, add_special=True, parse_special=True)
    res = eng.generate(
        0,
        ids,
        SamplingParams(temperature=temperature, seed=seed, n_predict=n_predict),
        on_token=lambda _t, piece, _p: (sys.stdout.write(piece), sys.stdout.flush()),
    )
    click.echo()
    click.echo(
        f"[{res.n_decoded} tokens, stop: {res.stop_reason}, prompt {res.prompt_ms:.0f} ms, "
        f"{res.n_decoded / max(res.predicted_ms, 1e-9) * 1e3:.2f} tok/s]",
        err=True,
    )
