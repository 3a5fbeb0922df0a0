package airllmrunner

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Environment variables read by Decide.
const (
	EnvForce       = "AIRLLM_FORCE"                // a true value starts the runner for every model
	EnvEnable      = "OLLAMA_AIRLLM"               // a false value turns the runner off
	EnvRunner      = "OLLAMA_AIRLLM_RUNNER"        // absolute path of the runner executable
	EnvGPUOverhead = "OLLAMA_GPU_OVERHEAD"         // bytes reserved per GPU, as Ollama reads it
	EnvTakeover    = "OLLAMA_AIRLLM_TAKEOVER"      // auto, over-vram or never
	EnvPromptTok   = "OLLAMA_AIRLLM_PROMPT_TOKENS" // the workload's prompt tokens (auto policy)
	EnvOutputTok   = "OLLAMA_AIRLLM_OUTPUT_TOKENS" // the workload's output tokens (auto policy)
)

// The workload the auto policy times, unless the environment says otherwise.
const (
	DefaultPromptTokens = 4096
	DefaultOutputTokens = 512
	maxWorkloadTokens   = 1 << 24
)

// DefaultRunner is where the package installs the runner.
const DefaultRunner = "/usr/lib/ollama/airllm-runner"

// FitPercent is the share of free VRAM (after reserves) a model may fill and
// still go to llama-server; Ollama's scheduler uses the same 80 % everywhere.
const FitPercent = 80

// LookupEnv returns an environment variable and whether it is set (os.LookupEnv).
type LookupEnv func(key string) (string, bool)

// GPU is one GPU selected for the model.
type GPU struct {
	FreeBytes    uint64 `json:"free_bytes"`    // ml.DeviceInfo.FreeMemory
	MinimumBytes uint64 `json:"minimum_bytes"` // ml.DeviceInfo.MinimumMemory(), Ollama's per-GPU reserve
}

// Input is what Ollama knows when it is about to start a runner.
type Input struct {
	// ModelBytes is Ollama's memory estimate for the model and its context
	// (llm.PredictServerVRAM for num_ctx × num_parallel).
	ModelBytes uint64 `json:"model_bytes"`
	// GPUs are the selected GPUs (none when Ollama runs on the CPU).
	GPUs []GPU `json:"gpus"`
	// NumGPU is the num_gpu option: -1 automatic, 0 CPU only, >0 layers asked for.
	NumGPU int `json:"num_gpu"`
	// RAMFreeBytes is the free system memory (ml.SystemInfo.FreeMemory).
	RAMFreeBytes uint64 `json:"ram_free_bytes"`
	// Facts describe the model (FactsFromTensors); zero when unknown.
	Facts ModelFacts `json:"facts"`
	// Rates are the machine's speeds (LoadCalibration).
	Rates Rates `json:"rates"`
}

// Decision says which runner serves the model and why.
type Decision struct {
	AirLLM   bool     `json:"airllm"`    // true: start Runner instead of llama-server
	Forced   bool     `json:"forced"`    // AIRLLM_FORCE asked for the runner
	Runner   string   `json:"runner"`    // the runner executable (resolved even when not used)
	Reason   string   `json:"reason"`    // one line, e.g. "airllm: model 42187 MiB > usable VRAM 20114 MiB (...)"
	Warnings []string `json:"warnings"`  // ignored environment values, one line each
	NCPUMoE  int      `json:"n_cpu_moe"` // > 0: start llama-server with --n-cpu-moe NCPUMoE

	// fallbackNCPUMoE is the N llama-server takes instead when the runner
	// was chosen but cannot start (WithRunnerCheck).
	fallbackNCPUMoE int
}

// Decide picks llama-server or the AirLLM runner for a model.
//
// In order: OLLAMA_AIRLLM=0 turns the runner off; AIRLLM_FORCE=1 starts it;
// without a GPU, or with num_gpu set, llama-server serves the model; a model
// within usable VRAM (FitPercent of the selected GPUs' free VRAM after
// Ollama's per-GPU reserve and OLLAMA_GPU_OVERHEAD) stays on llama-server;
// beyond it OLLAMA_AIRLLM_TAKEOVER decides: auto (the default) compares the
// cost model's times for the workload, over-vram starts the runner, never
// keeps llama-server. A MoE model kept on llama-server gets NCPUMoE.
func Decide(in Input, env LookupEnv) Decision {
	s := readSettings(env)
	d := Decision{Runner: s.runner, Warnings: s.warnings}
	switch {
	case s.off:
		d.Reason = fmt.Sprintf("llama-server: AirLLM runner turned off by %s=%s", EnvEnable, s.offValue)
		return d
	case s.force:
		d.AirLLM, d.Forced = true, true
		d.Reason = fmt.Sprintf("airllm: forced by %s=%s", EnvForce, s.forceValue)
		return d
	case len(in.GPUs) == 0:
		d.Reason = "llama-server: no GPU selected; the AirLLM runner needs one (" + EnvForce + "=1 overrides)"
		return d
	case in.NumGPU == 0:
		d.Reason = "llama-server: num_gpu=0 asks for CPU only"
		return d
	case in.NumGPU > 0:
		d.Reason = fmt.Sprintf("llama-server: num_gpu=%d set explicitly", in.NumGPU)
		return d
	}
	available := availableVRAM(in.GPUs, s.overhead)
	usable := UsableVRAM(available)
	detail := fmt.Sprintf("(%d%% of %s free after reserves on %s)",
		FitPercent, mib(available), plural(len(in.GPUs), "GPU"))
	if in.ModelBytes <= usable {
		d.Reason = fmt.Sprintf("llama-server: model %s <= usable VRAM %s %s", mib(in.ModelBytes), mib(usable), detail)
		return d
	}
	over := fmt.Sprintf("model %s > usable VRAM %s %s", mib(in.ModelBytes), mib(usable), detail)
	known := Known(in.Facts)
	var llama Estimate
	n := 0
	if known {
		llama = LlamaServerEstimate(in, usable, s.promptTokens)
		if llama.Path == "cpu-moe" {
			n = llama.GPULayers
		}
	}
	if s.takeover == "over-vram" || (s.takeover == "auto" && !known) {
		how := ""
		if s.takeover != "over-vram" {
			how = "; no model facts, so the over-vram rule"
		}
		d.AirLLM, d.fallbackNCPUMoE = true, n
		d.Reason = "airllm: " + over + how
		return d
	}
	never := fmt.Sprintf("llama-server: %s=never; %s", EnvTakeover, over)
	if !known {
		d.Reason = never
		return d
	}
	d.NCPUMoE = n
	if s.takeover == "never" {
		d.Reason = never + moeNote(llama)
		return d
	}
	return auto(d, in, usable, llama, s)
}

// auto is the auto policy: the runner when it is faster for the workload, or
// when the model does not fit RAM + VRAM.
func auto(d Decision, in Input, usable uint64, llama Estimate, s settings) Decision {
	runner := EstimateRunner(in.Facts, in.Rates, usable, in.RAMFreeBytes, s.promptTokens)
	sizes := fmt.Sprintf("model %s, usable VRAM %s, free RAM %s", mib(in.ModelBytes), mib(usable), mib(in.RAMFreeBytes))
	if in.ModelBytes-usable > in.RAMFreeBytes {
		d.AirLLM, d.fallbackNCPUMoE, d.NCPUMoE = true, d.NCPUMoE, 0
		d.Reason = fmt.Sprintf("airllm: the model does not fit RAM + VRAM (%s)", sizes)
		return d
	}
	tRunner := WorkloadSeconds(runner, s.outputTokens)
	tLlama := WorkloadSeconds(llama, s.outputTokens)
	d.AirLLM = tRunner < tLlama
	prefix, chosen := "llama-server", "llama-server"
	if d.AirLLM {
		prefix, chosen = "airllm", "runner"
		d.fallbackNCPUMoE, d.NCPUMoE = d.NCPUMoE, 0
	}
	d.Reason = fmt.Sprintf("%s: runner %s tok/s vs llama-server %s tok/s%s → %s (workload %d+%d tokens: %.1f s vs %.1f s; %s)",
		prefix, tps(runner.DecodeTPS), tps(llama.DecodeTPS), moeNote(llama), chosen,
		s.promptTokens, s.outputTokens, tRunner, tLlama, sizes)
	return d
}

func moeNote(llama Estimate) string {
	if llama.Path == "cpu-moe" {
		return fmt.Sprintf(" with --n-cpu-moe %d", llama.GPULayers)
	}
	return ""
}

// WorkloadSeconds is the time for the first token, then the other output
// tokens at the decode speed.
func WorkloadSeconds(e Estimate, outputTokens int) float64 {
	return e.TTFTSeconds + float64(outputTokens)/e.DecodeTPS
}

// tps formats tokens per second, readable from 0.001 to thousands.
func tps(v float64) string {
	switch {
	case v < 0.1:
		return fmt.Sprintf("%.3f", v)
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// UsableVRAM is FitPercent of available, rounded down, without overflow.
func UsableVRAM(available uint64) uint64 {
	return available/100*FitPercent + available%100*FitPercent/100
}

// WithRunnerCheck applies the result of checking that the runner can be
// started (err is nil when it can). A runner chosen by the fit falls back to
// llama-server, with the --n-cpu-moe N of llama-server's best path for a MoE
// model; a forced one is kept, so starting it fails with a clear error.
func (d Decision) WithRunnerCheck(err error) Decision {
	if err == nil || !d.AirLLM || d.Forced {
		return d
	}
	d.AirLLM, d.NCPUMoE = false, d.fallbackNCPUMoE
	d.Reason = fmt.Sprintf("llama-server: AirLLM runner unavailable (%v); wanted it because %s",
		err, strings.TrimPrefix(d.Reason, "airllm: "))
	if d.NCPUMoE > 0 {
		d.Reason += fmt.Sprintf("; --n-cpu-moe %d", d.NCPUMoE)
	}
	return d
}

// availableVRAM sums the free VRAM left on each GPU after its reserve
// (minimum + overhead), never below zero per GPU.
func availableVRAM(gpus []GPU, overhead uint64) (available uint64) {
	for _, g := range gpus {
		if reserve := addSat(g.MinimumBytes, overhead); g.FreeBytes > reserve {
			available = addSat(available, g.FreeBytes-reserve)
		}
	}
	return available
}

func addSat(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// mib formats bytes as whole MiB (rounded down), e.g. "40123 MiB".
func mib(b uint64) string {
	return fmt.Sprintf("%d MiB", b>>20)
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// settings are the environment values Decide uses, after validation.
type settings struct {
	force, off           bool
	forceValue, offValue string
	runner               string
	overhead             uint64
	takeover             string
	promptTokens         int
	outputTokens         int
	warnings             []string
}

func readSettings(env LookupEnv) settings {
	s := settings{runner: DefaultRunner, takeover: "auto"}
	if v := envValue(env, EnvForce); v != "" {
		if b, err := strconv.ParseBool(v); err == nil {
			s.force, s.forceValue = b, v
		} else {
			s.warnings = append(s.warnings, badValue(EnvForce, v, "1 or 0 (true/false)", "not forced"))
		}
	}
	if v := envValue(env, EnvEnable); v != "" {
		if b, err := strconv.ParseBool(v); err == nil {
			s.off, s.offValue = !b, v
		} else {
			s.warnings = append(s.warnings, badValue(EnvEnable, v, "1 or 0 (true/false)", "on"))
		}
	}
	if v := envValue(env, EnvRunner); v != "" {
		if filepath.IsAbs(v) {
			s.runner = filepath.Clean(v)
		} else {
			s.warnings = append(s.warnings, badValue(EnvRunner, v, "an absolute path", DefaultRunner))
		}
	}
	if v := envValue(env, EnvGPUOverhead); v != "" {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			s.overhead = n
		} else {
			s.warnings = append(s.warnings, badValue(EnvGPUOverhead, v, "a number of bytes", "0"))
		}
	}
	if v := envValue(env, EnvTakeover); v != "" {
		if slices.Contains(TakeoverPolicies, v) {
			s.takeover = v
		} else {
			s.warnings = append(s.warnings, badValue(EnvTakeover, v, "auto, over-vram or never", "auto"))
		}
	}
	s.promptTokens = tokens(env, EnvPromptTok, DefaultPromptTokens, &s.warnings)
	s.outputTokens = tokens(env, EnvOutputTok, DefaultOutputTokens, &s.warnings)
	return s
}

// TakeoverPolicies are the values of OLLAMA_AIRLLM_TAKEOVER.
var TakeoverPolicies = []string{"auto", "over-vram", "never"}

func tokens(env LookupEnv, key string, def int, warnings *[]string) int {
	v := envValue(env, key)
	if v == "" {
		return def
	}
	if n, err := strconv.ParseUint(v, 10, 64); err == nil && n >= 1 && n <= maxWorkloadTokens {
		return int(n)
	}
	allowed := fmt.Sprintf("a number of tokens from 1 to %d", maxWorkloadTokens)
	*warnings = append(*warnings, badValue(key, v, allowed, strconv.Itoa(def)))
	return def
}

func badValue(key, value, allowed, used string) string {
	return fmt.Sprintf("ignoring %s=%q: want %s; using %s", key, value, allowed, used)
}

// envValue reads a variable the way Ollama's envconfig.Var does: surrounding
// white space, then surrounding quotes, are dropped.
func envValue(env LookupEnv, key string) string {
	v, _ := env(key)
	return strings.Trim(strings.TrimSpace(v), `"'`)
}
