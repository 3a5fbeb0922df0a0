"""ollama-airllm: a layer-streaming runner for Ollama on AMD GPUs, and its Arch package generator."""

__version__ = "0.1.0"
