"""The profile this machine runs with: --profile, else the installed one, else the reference profile."""

from __future__ import annotations

from pathlib import Path

import click

from .profile import Profile, default_profile_path, load_profile

INSTALLED_PROFILE = Path("/etc/ollama-airllm/profile.yaml")

# The --profile option of the commands that use machine_profile().
profile_option = click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Profile YAML (default: /etc/ollama-airllm/profile.yaml, else the reference profile).",
)


def machine_profile(path: Path | None) -> tuple[Profile, Path]:
    """The profile to use and the file it came from."""
    if path is None:
        path = INSTALLED_PROFILE if INSTALLED_PROFILE.exists() else default_profile_path()
    return load_profile(path), path
