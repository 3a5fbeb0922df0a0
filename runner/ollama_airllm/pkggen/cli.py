"""`ollama-airllm render`: write the package files for a hardware profile."""

from __future__ import annotations

from pathlib import Path

import click

from ..profile import default_profile_path, load_profile
from .render import VARIANTS, render_package, write_package


@click.command(name="render")
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Hardware profile YAML (default: the reference profile packaging/profiles/rx7900xtx.yaml).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write the package into (created if missing; files in it are replaced atomically).",
)
@click.option(
    "--variant",
    type=click.Choice(VARIANTS),
    default="full",
    show_default=True,
    help="full: Ollama + HIP backend + runner. runner-only: a CI package without Ollama/HIP.",
)
def render(profile_path: Path | None, output: Path, variant: str) -> None:
    """Render PKGBUILD, .SRCINFO, .install, systemd units, /etc/default/ollama, sysusers and tmpfiles files.

    The output directory is self-contained: `makepkg -si` in it builds the package.
    Exit status: 0 done, 1 cannot write, 2 bad profile or arguments.
    """
    profile = load_profile(profile_path or default_profile_path())
    files = render_package(profile, variant)
    out = write_package(files, output)
    click.echo(f"rendered {variant} package for profile {profile.name} into {out}", err=True)
    if variant == "runner-only":
        click.echo("note: runner-only variant: the Ollama/HIP part is not built", err=True)
