package airllmrunner

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// vectorsPath is the shared test vectors file, also read by tests/patch (Python).
var vectorsPath = filepath.Join("..", "..", "tests", "vectors", "fit_decision.json")

type vectorCase struct {
	Name        string            `json:"name"`
	Input       Input             `json:"input"`
	Env         map[string]string `json:"env"`
	RunnerError *string           `json:"runner_error"`
	Want        Decision          `json:"want"`
}

func loadVectors(t *testing.T) []vectorCase {
	t.Helper()
	return append(loadCases(t, vectorsPath, "cases"), loadCases(t, planVectorsPath, "decisions")...)
}

func loadCases(t *testing.T, path, key string) []vectorCase {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading shared vectors: %v", err)
	}
	var doc map[string]json.RawMessage
	var cases []vectorCase
	if err := json.Unmarshal(data, &doc); err == nil {
		err = json.Unmarshal(doc[key], &cases)
	}
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(cases) == 0 {
		t.Fatalf("%s: no %s", path, key)
	}
	return cases
}

func mapEnv(env map[string]string) LookupEnv {
	return func(key string) (string, bool) {
		v, ok := env[key]
		return v, ok
	}
}

func TestDecideVectors(t *testing.T) {
	for _, c := range loadVectors(t) {
		t.Run(c.Name, func(t *testing.T) {
			got := Decide(c.Input, mapEnv(c.Env))
			if c.RunnerError != nil {
				got = got.WithRunnerCheck(errors.New(*c.RunnerError))
			}
			if got.AirLLM != c.Want.AirLLM || got.Forced != c.Want.Forced || got.Runner != c.Want.Runner {
				t.Errorf("got airllm=%v forced=%v runner=%q, want airllm=%v forced=%v runner=%q",
					got.AirLLM, got.Forced, got.Runner, c.Want.AirLLM, c.Want.Forced, c.Want.Runner)
			}
			if got.NCPUMoE != c.Want.NCPUMoE {
				t.Errorf("n_cpu_moe: got %d, want %d", got.NCPUMoE, c.Want.NCPUMoE)
			}
			if got.Reason != c.Want.Reason {
				t.Errorf("reason\n got: %s\nwant: %s", got.Reason, c.Want.Reason)
			}
			if len(got.Warnings)+len(c.Want.Warnings) > 0 && !slices.Equal(got.Warnings, c.Want.Warnings) {
				t.Errorf("warnings\n got: %q\nwant: %q", got.Warnings, c.Want.Warnings)
			}
		})
	}
}

// The vectors must cover every branch the issue names.
func TestVectorsCoverTheRules(t *testing.T) {
	var forced, off, noGPU, multiGPU, overhead, badEnv, airllm, llamaServer bool
	for _, c := range loadVectors(t) {
		forced = forced || c.Want.Forced
		off = off || c.Env[EnvEnable] == "0"
		noGPU = noGPU || len(c.Input.GPUs) == 0
		multiGPU = multiGPU || len(c.Input.GPUs) > 1
		overhead = overhead || c.Env[EnvGPUOverhead] != ""
		badEnv = badEnv || len(c.Want.Warnings) > 0
		airllm = airllm || c.Want.AirLLM
		llamaServer = llamaServer || !c.Want.AirLLM
	}
	for name, ok := range map[string]bool{"forced": forced, "off": off, "no GPU": noGPU, "multi-GPU": multiGPU,
		"overhead": overhead, "bad env": badEnv, "airllm": airllm, "llama-server": llamaServer} {
		if !ok {
			t.Errorf("no vector covers %s", name)
		}
	}
}

func TestExactlyAtThreshold(t *testing.T) {
	// available = 1000 bytes, usable = 800: 800 stays on llama-server, 801 does not.
	gpus := []GPU{{FreeBytes: 1000 + 457<<20, MinimumBytes: 457 << 20}}
	noEnv := mapEnv(nil)
	if d := Decide(Input{ModelBytes: 800, GPUs: gpus, NumGPU: -1}, noEnv); d.AirLLM {
		t.Errorf("800 of 800 usable bytes: %s", d.Reason)
	}
	if d := Decide(Input{ModelBytes: 801, GPUs: gpus, NumGPU: -1}, noEnv); !d.AirLLM {
		t.Errorf("801 of 800 usable bytes: %s", d.Reason)
	}
}

func TestWithRunnerCheckKeepsGoodRunner(t *testing.T) {
	d := Decide(Input{ModelBytes: 1 << 40, GPUs: []GPU{{FreeBytes: 1 << 30}}, NumGPU: -1}, mapEnv(nil))
	if got := d.WithRunnerCheck(nil); !got.AirLLM || got.Reason != d.Reason {
		t.Errorf("a runner that exists must be kept: %+v", got)
	}
}

// TestDecideFile lets tests/patch compare this package with the Python mirror on
// generated inputs: AIRLLM_DECIDE_IN names a JSON list of cases (input, env,
// runner_error), AIRLLM_DECIDE_OUT receives the list of decisions.
func TestDecideFile(t *testing.T) {
	in, out := os.Getenv("AIRLLM_DECIDE_IN"), os.Getenv("AIRLLM_DECIDE_OUT")
	if in == "" || out == "" {
		t.Skip("AIRLLM_DECIDE_IN and AIRLLM_DECIDE_OUT are not set")
	}
	data, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	var cases []vectorCase
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatalf("%s: %v", in, err)
	}
	decisions := make([]Decision, 0, len(cases))
	for _, c := range cases {
		d := Decide(c.Input, mapEnv(c.Env))
		if c.RunnerError != nil {
			d = d.WithRunnerCheck(errors.New(*c.RunnerError))
		}
		decisions = append(decisions, d)
	}
	if data, err = json.Marshal(decisions); err == nil {
		err = os.WriteFile(out, data, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
}
