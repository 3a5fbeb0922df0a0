package llm

// Copied into a patched Ollama tree's llm/ by tests/plan/test_patched_tree.py, which writes the models and
// passes what the Python planner decided for them; these tests check that Ollama's own hook decides the
// same and starts llama-server with --n-cpu-moe N.

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/fs/gguf"
	"github.com/ollama/ollama/ml"
)

func envUint(t *testing.T, key string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(os.Getenv(key), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return n
}

// decideFor runs the patch's hook on the model in AIRLLM_TEST_MODEL with one ROCm GPU of
// AIRLLM_TEST_FREE_BYTES free VRAM and AIRLLM_TEST_RAM_BYTES free RAM.
func decideFor(t *testing.T) (string, api.Options, airllmLaunch) {
	t.Helper()
	path := os.Getenv("AIRLLM_TEST_MODEL")
	if path == "" {
		t.Skip("AIRLLM_TEST_MODEL is not set (tests/plan/test_patched_tree.py sets it)")
	}
	f, err := gguf.ReadModel(path, 32)
	if err != nil {
		t.Fatal(err)
	}
	opts := api.DefaultOptions()
	opts.NumCtx = int(envUint(t, "AIRLLM_TEST_NUM_CTX"))
	gpus := []ml.DeviceInfo{{DeviceID: ml.DeviceID{ID: "0", Library: "ROCm"}, FreeMemory: envUint(t, "AIRLLM_TEST_FREE_BYTES")}}
	system := ml.SystemInfo{FreeMemory: envUint(t, "AIRLLM_TEST_RAM_BYTES")}
	return path, opts, airllmDecide(system, gpus, path, f, opts, 1)
}

func TestAirLLMDecisionMatchesThePlanner(t *testing.T) {
	_, _, got := decideFor(t)
	var want []string
	if n := os.Getenv("AIRLLM_TEST_WANT_N"); n != "0" {
		want = []string{"--n-cpu-moe", n}
	}
	if !slices.Equal(got.args, want) {
		t.Errorf("llama-server arguments: got %q, want %q", got.args, want)
	}
	if wantRunner := os.Getenv("AIRLLM_TEST_WANT_RUNNER"); got.runner != wantRunner {
		t.Errorf("runner: got %q, want %q", got.runner, wantRunner)
	}
}

func TestAirLLMStartsLlamaServerWithTheArguments(t *testing.T) {
	path, opts, launch := decideFor(t)
	if launch.runner != "" {
		t.Skip("the runner serves this model")
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "llama-server")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	saved := ml.LibOllamaPath
	ml.LibOllamaPath = dir
	defer func() { ml.LibOllamaPath = saved }()
	cmd, _, err := startLlamaServer(llamaServerLaunchConfig{modelPath: path, opts: opts, numParallel: 1,
		config: LlamaServerConfig{airllm: launch}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait() //nolint:errcheck
	if cmd.Path != fake {
		t.Errorf("started %s, want %s", cmd.Path, fake)
	}
	i := slices.Index(cmd.Args, "--n-cpu-moe")
	n := os.Getenv("AIRLLM_TEST_WANT_N")
	switch {
	case n == "0" && i >= 0:
		t.Errorf("a model that gets no --n-cpu-moe was started with %q", cmd.Args)
	case n != "0" && (i < 0 || i+1 >= len(cmd.Args) || cmd.Args[i+1] != n):
		t.Errorf("want --n-cpu-moe %s in %q", n, cmd.Args)
	case slices.Index(cmd.Args, "--model") < 0 || cmd.Args[slices.Index(cmd.Args, "--model")+1] != path:
		t.Errorf("want --model %s in %q", path, cmd.Args)
	}
}
