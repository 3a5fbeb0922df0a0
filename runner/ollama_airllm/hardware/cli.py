"""`ollama-airllm detect`: find the AMD GPUs and write the hardware profile."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..errors import UsageError
from ..profile import Allowed, check_data_dir, dump_profile, profile_to_yaml
from .detect import Detection, ToolOutputs, default_name, to_profile
from .detect import detect as run_detection
from .sysfs import MalformedSysfs, read_small_file

GIB = 1 << 30
TOOL_OUTPUT_LIMIT = 16 << 20
_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _summary(detection: Detection, console: Console) -> None:
    table = Table(title="AMD GPUs", title_justify="left")
    for column in ("#", "node", "name", "gfx", "VRAM", "kind", "ROCm", "used"):
        table.add_column(column)
    for gpu in detection.gpus:
        rocm = "supported" if gpu.supported else (f"override {gpu.override}" if gpu.override else "no")
        table.add_row(
            str(gpu.index),
            str(gpu.node.node),
            gpu.name,
            gpu.gfx,
            f"{gpu.vram_total / GIB:.1f} GiB",
            "iGPU" if gpu.integrated else "dGPU",
            rocm,
            "yes" if gpu.visible else "no",
        )
    console.print(table)
    for gpu in detection.gpus:
        if gpu.note:
            console.print(
                f"GPU {gpu.index} ({gpu.name}): {gpu.note}", markup=False, highlight=False, soft_wrap=True
            )
    if detection.ram_bytes is not None:
        console.print(f"System RAM: {detection.ram_bytes / GIB:.1f} GiB")
    for note in detection.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


def _tool_output(path: Path | None) -> str | None:
    """A saved tool output (a regular file of at most 16 MiB; a FIFO is refused rather than waited on)."""
    if path is None:
        return None
    try:
        return read_small_file(path, TOOL_OUTPUT_LIMIT).decode("utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except MalformedSysfs as exc:
        raise UsageError(exc.message) from None


def _models_dir(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--models-dir follows the profile's rules for ollama.models_dir."""
    try:
        return check_data_dir(value)
    except Allowed as exc:
        raise click.BadParameter(f"got {value!r}; allowed: {exc}") from None


@click.command(name="detect")
@click.option(
    "--sysfs-root",
    type=_DIR,
    default=Path("/"),
    show_default=True,
    help="Root that holds sys/class/kfd and sys/class/drm (a fixture tree in tests).",
)
@click.option(
    "--proc-root", type=_DIR, default=Path("/"), show_default=True, help="Root that holds proc/meminfo."
)
@click.option("--include-igpu", is_flag=True, help="Also use integrated GPUs (Ollama's OLLAMA_IGPU_ENABLE).")
@click.option(
    "--models-dir",
    default="/var/lib/ollama",
    show_default=True,
    callback=_models_dir,
    help="Where Ollama keeps models (a dedicated directory, see README: Profile): written to the profile; "
    "free space is measured there.",
)
@click.option("--name", default=None, help="Profile name (default: from the GPUs, e.g. gfx1100).")
@click.option(
    "--rocminfo-output",
    type=_FILE,
    default=None,
    help="Saved `rocminfo` output to use instead of running rocminfo.",
)
@click.option(
    "--rocm-smi-output",
    type=_FILE,
    default=None,
    help="Saved `rocm-smi --showmeminfo vram --json` output to use instead of running rocm-smi.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the profile here (atomically) instead of printing it.",
)
@click.option("-q", "--quiet", is_flag=True, help="No summary table on stderr.")
def detect(
    sysfs_root: Path,
    proc_root: Path,
    include_igpu: bool,
    models_dir: str,
    name: str | None,
    rocminfo_output: Path | None,
    rocm_smi_output: Path | None,
    output: Path | None,
    quiet: bool,
) -> None:
    """Detect AMD GPUs, RAM and disk; print (or write) a validated hardware profile.

    Exit status: 0 done, 1 unreadable or malformed sysfs, 2 usage error, 3 no usable AMD GPU.
    """
    tools = ToolOutputs(
        rocminfo=_tool_output(rocminfo_output),
        rocm_smi_vram_json=_tool_output(rocm_smi_output),
        # Only ask the installed ROCm tools about this machine, never when reading a fixture tree.
        run=sysfs_root.resolve() == Path("/"),
    )
    detection = run_detection(sysfs_root, proc_root, Path(models_dir), include_igpu, tools)
    profile = to_profile(detection, name or default_name(detection), models_dir)
    if not quiet:
        _summary(detection, Console(stderr=True))
    header = (
        f"Hardware profile from `ollama-airllm detect` (sysfs root {sysfs_root}).\n"
        "Reference: README.md, section Profile. Render with `ollama-airllm render --profile FILE`."
    )
    if output is None:
        click.echo(profile_to_yaml(profile, header), nl=False)
    else:
        dump_profile(profile, output, header)
        if not quiet:
            click.echo(f"wrote {output}", err=True)
