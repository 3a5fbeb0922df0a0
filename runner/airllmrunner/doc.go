// Package airllmrunner decides whether Ollama serves a GGUF model with its own
// llama-server or with the AirLLM layer-streaming runner, and builds the
// runner's environment.
//
// The package uses the standard library only. It is written to be copied into
// Ollama's source tree (import path github.com/ollama/ollama/airllmrunner),
// where airllm.patch calls it from package llm. Every function is pure: the
// environment is passed in as a lookup function, so the decision is driven by
// table tests from the shared vectors in tests/vectors/fit_decision.json,
// which the Python mirror (ollama_airllm.fit) reads too.
package airllmrunner
