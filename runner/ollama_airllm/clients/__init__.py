"""`ollama-airllm client`: configure coding agents (opencode, OpenClaw) for this machine's Ollama."""
