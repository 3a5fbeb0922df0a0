// Package airllmrunner decides whether Ollama serves a GGUF model with its own
// llama-server (and with which extra arguments, e.g. --n-cpu-moe N for a MoE
// model that does not fit VRAM) or with the AirLLM layer-streaming runner,
// and builds the runner's environment.
//
// The decision runs a cost model (cost.go) over the model's GGUF header
// facts (FactsFromTensors), the machine's free VRAM and RAM, and the rates
// `ollama-airllm calibrate` measured (LoadCalibration, with documented
// defaults when the file is missing or damaged).
//
// The package uses the standard library only. It is written to be copied into
// Ollama's source tree (import path github.com/ollama/ollama/airllmrunner),
// where airllm.patch calls it from package llm. Apart from LoadCalibration,
// which reads one file, every function is pure: the environment is passed in
// as a lookup function, so the decision is driven by table tests from the
// shared vectors in tests/vectors/fit_decision.json and plan_decision.json,
// which the Python mirror (ollama_airllm.fit) reads too.
package airllmrunner
