"""`ollama-airllm plan MODEL`: a table of every way to run the model here, and the one Ollama will take."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import fit
from ..calibrate.record import CALIBRATION_PATH
from ..hardware.system import read_ram_bytes
from ..installed import machine_profile, profile_option
from . import core
from .model import read_model, resolve

NAMES = {"all-gpu": "llama-server, all on the GPU", "fit": "llama-server --fit (layers, rest on CPU)",
         "cpu-moe": "llama-server --n-cpu-moe N", "runner": "AirLLM runner (R resident)"}


def _mib(n: int) -> str:
    return f"{n // 2**20}"


def show(result: dict) -> None:
    """The plan as a rich table and two lines: the path Ollama takes, and why."""
    from rich.console import Console
    from rich.table import Table

    m, w = result["machine"], result["workload"]
    title = (f"{result['model']['name']}: {_mib(result['model']['model_bytes'])} MiB with a "
             f"{result['model']['n_ctx']}-token context, on {m['profile']} (usable VRAM "
             f"{_mib(m['usable_vram_bytes'])} MiB, RAM {_mib(m['ram_free_bytes'])} MiB)")
    table = Table(title=title, caption=f"rates: {m['calibration']}")
    for column in ("path", "fits", "layers / N / R", "VRAM MiB", "RAM MiB", "decode tok/s", "TTFT 16k s",
                   f"workload {w['prompt_tokens']}+{w['output_tokens']} s"):
        table.add_column(column, justify="left" if column in ("path", "fits") else "right")
    chosen = result["decision"]["path"]
    for p in result["paths"]:
        mark = " <- Ollama" if p["path"] == chosen else ""
        table.add_row(NAMES[p["path"]] + mark, "yes" if p["feasible"] else "no", str(p["gpu_layers"]),
                      _mib(p["vram_bytes"]), _mib(p["ram_bytes"]), f"{p['decode_tps']:.2f}",
                      f"{p['ttft_16k_s']:.1f}", f"{p['workload_s']:.1f}")
    console = Console(width=160)
    console.print(table)
    console.print(f"Ollama will take: {NAMES[chosen]} (takeover policy {w['takeover']})", highlight=False)
    console.print(f"Why: {result['decision']['reason']}", highlight=False, soft_wrap=True)


@click.command()
@click.argument("model")
@profile_option
@click.option(
    "--calibration",
    "calibration_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=CALIBRATION_PATH,
    show_default=True,
    help="calibration.json from `ollama-airllm calibrate` (missing: documented defaults).",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Ollama's models directory for a model name (default: the profile's ollama.models_dir).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads llama-server computes with (default: this machine's physical cores, as llama.cpp "
    "picks them when Ollama's num_thread is unset).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(model: str, profile_path: Path | None, calibration_path: Path, models_dir: Path | None,
         threads: int | None, as_json: bool) -> None:
    """Estimate every way to run MODEL (an Ollama name or a GGUF path) on the profile's machine.

    Paths: llama-server all on the GPU, as --fit places it, with MoE experts on the CPU (--n-cpu-moe N),
    and the AirLLM runner with R resident layers; for each, memory, decode tok/s and time to first token
    for a 16k-token prompt. Then the path Ollama will take, and why (the patch's own decision).
    Reads the GGUF header only. Exit status: 0, 1 model not found, 2 bad usage or not a GGUF.
    """
    profile, _ = machine_profile(profile_path)
    path = resolve(model, models_dir or Path(profile.ollama.models_dir))
    info = read_model(path, model, profile.ollama.context_length, profile.ollama.num_parallel)
    ram = profile.system.ram_bytes or read_ram_bytes(Path("/")) or 0
    threads = threads or fit.llama_server_threads(0)
    m = core.machine(profile, calibration_path, info.facts.weight_type, ram, threads)
    result = core.plan(info, m, profile)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        show(result)
