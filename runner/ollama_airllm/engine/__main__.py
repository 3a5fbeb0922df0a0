"""Entry point for `python -m ollama_airllm.engine`."""

from .cli import main

main(prog_name="python -m ollama_airllm.engine")
