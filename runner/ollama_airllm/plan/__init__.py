"""`ollama-airllm plan`: which way Ollama will run a model on this machine, and how fast each way would be."""
