"""The runner as a drop-in llama-server: llama-server's command line and HTTP protocol over the engine.

Entry points: `ollama-airllm-runner` (main.main, started by Ollama with llama-server's flags) and
`ollama-airllm serve` (cli.serve, standalone).
"""
