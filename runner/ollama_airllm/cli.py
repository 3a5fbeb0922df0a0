"""The `ollama-airllm` command: each subcommand lives in the module that does the work."""

from __future__ import annotations

import importlib

import click

from . import __version__

# name -> "module:attribute"; imported only when the subcommand runs, so `detect`
# never pays for importing torch.
SUBCOMMANDS = {
    "calibrate": "ollama_airllm.calibrate.cli:calibrate",
    "client": "ollama_airllm.clients.cli:client",
    "detect": "ollama_airllm.hardware.cli:detect",
    "render": "ollama_airllm.pkggen.cli:render",
    "doctor": "ollama_airllm.doctor.cli:doctor",
    "plan": "ollama_airllm.plan.cli:plan",
    "serve": "ollama_airllm.server.cli:serve",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ollama-airllm")
def main() -> None:
    """Run big models on AMD GPUs through Ollama, and build the Arch package for this machine."""
