package airllmrunner

import (
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
)

// Environment variables read by Decide.
const (
	EnvForce       = "AIRLLM_FORCE"         // a true value starts the runner for every model
	EnvEnable      = "OLLAMA_AIRLLM"        // a false value turns the runner off
	EnvRunner      = "OLLAMA_AIRLLM_RUNNER" // absolute path of the runner executable
	EnvGPUOverhead = "OLLAMA_GPU_OVERHEAD"  // bytes reserved per GPU, as Ollama reads it
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
}

// Decision says which runner serves the model and why.
type Decision struct {
	AirLLM   bool     `json:"airllm"`   // true: start Runner instead of llama-server
	Forced   bool     `json:"forced"`   // AIRLLM_FORCE asked for the runner
	Runner   string   `json:"runner"`   // the runner executable (resolved even when not used)
	Reason   string   `json:"reason"`   // one line, e.g. "airllm: model 41.2 GiB > usable VRAM 19.6 GiB (...)"
	Warnings []string `json:"warnings"` // ignored environment values, one line each
}

// Decide picks llama-server or the AirLLM runner for a model.
//
// In order: OLLAMA_AIRLLM=0 turns the runner off; AIRLLM_FORCE=1 starts it;
// without a GPU, or with num_gpu set, llama-server serves the model;
// otherwise the runner is used when the model estimate exceeds FitPercent of
// the selected GPUs' free VRAM after Ollama's per-GPU reserve and
// OLLAMA_GPU_OVERHEAD. A model exactly at that limit stays on llama-server.
func Decide(in Input, env LookupEnv) Decision {
	s := readSettings(env)
	d := Decision{Runner: s.runner, Forced: s.force, Warnings: s.warnings}
	switch {
	case s.off:
		d.Forced = false
		d.Reason = fmt.Sprintf("llama-server: AirLLM runner turned off by %s=%s", EnvEnable, s.offValue)
	case s.force:
		d.AirLLM = true
		d.Reason = fmt.Sprintf("airllm: forced by %s=%s", EnvForce, s.forceValue)
	case len(in.GPUs) == 0:
		d.Reason = "llama-server: no GPU selected; the AirLLM runner needs one (" + EnvForce + "=1 overrides)"
	case in.NumGPU == 0:
		d.Reason = "llama-server: num_gpu=0 asks for CPU only"
	case in.NumGPU > 0:
		d.Reason = fmt.Sprintf("llama-server: num_gpu=%d set explicitly", in.NumGPU)
	default:
		available := availableVRAM(in.GPUs, s.overhead)
		usable := available/100*FitPercent + available%100*FitPercent/100 // no overflow
		detail := fmt.Sprintf("(%d%% of %s free after reserves on %s)",
			FitPercent, gib(available), plural(len(in.GPUs), "GPU"))
		if in.ModelBytes > usable {
			d.AirLLM = true
			d.Reason = fmt.Sprintf("airllm: model %s > usable VRAM %s %s", gib(in.ModelBytes), gib(usable), detail)
		} else {
			d.Reason = fmt.Sprintf("llama-server: model %s <= usable VRAM %s %s", gib(in.ModelBytes), gib(usable), detail)
		}
	}
	return d
}

// WithRunnerCheck applies the result of checking that the runner can be
// started (err is nil when it can). A runner chosen by the fit falls back to
// llama-server; a forced one is kept, so starting it fails with a clear error.
func (d Decision) WithRunnerCheck(err error) Decision {
	if err == nil || !d.AirLLM || d.Forced {
		return d
	}
	d.AirLLM = false
	d.Reason = fmt.Sprintf("llama-server: AirLLM runner unavailable (%v); wanted it because %s",
		err, strings.TrimPrefix(d.Reason, "airllm: "))
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

// gib formats bytes as GiB with one decimal, e.g. "41.2 GiB".
func gib(b uint64) string {
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
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
	warnings             []string
}

func readSettings(env LookupEnv) settings {
	s := settings{runner: DefaultRunner}
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
	return s
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
