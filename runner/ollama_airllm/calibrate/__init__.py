"""`ollama-airllm calibrate`: measure this machine's transfer and compute rates (file: record.py)."""
