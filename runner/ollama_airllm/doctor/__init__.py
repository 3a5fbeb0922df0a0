"""Installed-system verification: the testinfra checks shipped in checks/ and `ollama-airllm doctor`."""
