package airllmrunner

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// planVectorsPath holds the cost model's vectors, also read by tests/patch (Python).
var planVectorsPath = filepath.Join("..", "..", "tests", "vectors", "plan_decision.json")

type planVectors struct {
	Estimates []struct {
		Name         string              `json:"name"`
		Facts        ModelFacts          `json:"facts"`
		Rates        Rates               `json:"rates"`
		ModelBytes   uint64              `json:"model_bytes"`
		UsableBytes  uint64              `json:"usable_bytes"`
		RAMFreeBytes uint64              `json:"ram_free_bytes"`
		NPrompt      int                 `json:"n_prompt"`
		Want         map[string]Estimate `json:"want"`
	} `json:"estimates"`
	Calibrations []struct {
		Name       string             `json:"name"`
		Rates      map[string]float64 `json:"rates"`
		WeightType string             `json:"weight_type"`
		Threads    int                `json:"threads"`
		Want       Rates              `json:"want"`
	} `json:"calibrations"`
	Facts []struct {
		Name        string     `json:"name"`
		Tensors     []Tensor   `json:"tensors"`
		NLayer      int        `json:"n_layer"`
		NExpert     int        `json:"n_expert"`
		NExpertUsed int        `json:"n_expert_used"`
		KVBytes     uint64     `json:"kv_bytes"`
		Want        ModelFacts `json:"want"`
	} `json:"facts"`
	KVBytes []struct {
		Args [5]uint64 `json:"args"`
		Want uint64    `json:"want"`
	} `json:"kv_bytes"`
}

func loadPlanVectors(t *testing.T) planVectors {
	t.Helper()
	data, err := os.ReadFile(planVectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	var v planVectors
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("%s: %v", planVectorsPath, err)
	}
	if len(v.Estimates) == 0 || len(v.Calibrations) == 0 || len(v.Facts) == 0 || len(v.KVBytes) == 0 {
		t.Fatalf("%s: a section is empty", planVectorsPath)
	}
	return v
}

func TestEstimateVectors(t *testing.T) {
	for _, c := range loadPlanVectors(t).Estimates {
		t.Run(c.Name, func(t *testing.T) {
			got := map[string]Estimate{
				"all-gpu": EstimateAllGPU(c.Facts, c.Rates, c.ModelBytes, c.UsableBytes, c.NPrompt),
				"fit":     EstimateFit(c.Facts, c.Rates, c.UsableBytes, c.RAMFreeBytes, c.NPrompt),
				"cpu":     EstimateCPU(c.Facts, c.Rates, c.RAMFreeBytes, c.NPrompt),
				"runner":  EstimateRunner(c.Facts, c.Rates, c.UsableBytes, c.RAMFreeBytes, c.NPrompt),
			}
			if moe, ok := EstimateCPUMoE(c.Facts, c.Rates, c.ModelBytes, c.UsableBytes, c.RAMFreeBytes, c.NPrompt); ok {
				got["cpu-moe"] = moe
			}
			if len(got) != len(c.Want) {
				t.Fatalf("paths: got %d, want %d", len(got), len(c.Want))
			}
			for path, want := range c.Want {
				if got[path] != want {
					t.Errorf("%s\n got: %+v\nwant: %+v", path, got[path], want)
				}
			}
		})
	}
}

func TestRatesFromCalibrationVectors(t *testing.T) {
	for _, c := range loadPlanVectors(t).Calibrations {
		if got := RatesFromCalibration(c.Rates, c.WeightType, c.Threads); got != c.Want {
			t.Errorf("%s\n got: %+v\nwant: %+v", c.Name, got, c.Want)
		}
	}
}

func TestFactsVectors(t *testing.T) {
	for _, c := range loadPlanVectors(t).Facts {
		if got := FactsFromTensors(c.Tensors, c.NLayer, c.NExpert, c.NExpertUsed, c.KVBytes); got != c.Want {
			t.Errorf("%s\n got: %+v\nwant: %+v", c.Name, got, c.Want)
		}
	}
	for _, c := range loadPlanVectors(t).KVBytes {
		a := c.Args
		if got := KVBytes(a[0], a[1], a[2], a[3], a[4]); got != c.Want {
			t.Errorf("KVBytes%v = %d, want %d", a, got, c.Want)
		}
	}
}

func TestVectorsCoverThePolicies(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range loadCases(t, planVectorsPath, "decisions") {
		switch {
		case c.Want.NCPUMoE > 0:
			seen["cpu-moe"] = true
		case strings.Contains(c.Want.Reason, "→ runner"):
			seen["runner faster"] = true
		case strings.Contains(c.Want.Reason, "→ llama-server"):
			seen["llama-server faster"] = true
		case strings.Contains(c.Want.Reason, "does not fit RAM + VRAM"):
			seen["beyond RAM + VRAM"] = true
		}
		seen[c.Env[EnvTakeover]] = true
	}
	for _, want := range []string{"cpu-moe", "runner faster", "llama-server faster", "beyond RAM + VRAM", "never", "over-vram"} {
		if !seen[want] {
			t.Errorf("no plan vector covers %q", want)
		}
	}
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "calibration.json")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadCalibration(t *testing.T) {
	good := writeFile(t, `{"version": 1, "rates": {"host_memory_read": {"value": 61.5, "unit": "GB/s"},
		"gpu0.q8_0_gemv": {"value": 90}}}`)
	// Four threads: llama.cpp's per-thread CPU rates times 4, measured or not.
	defaults := DefaultRates
	defaults.CPUWeightRead, defaults.CPUGEMM = 4*6.8, 4*0.07
	cases := []struct {
		name, path string
		want       Rates
		note       string
	}{
		{"measured", good, Rates{25, 61.5, 3, 800, 40, 90, 15, 4 * 6.8, 4 * 0.07}, "calibration " + good},
		{"missing", filepath.Join(t.TempDir(), "none.json"), defaults, "no calibration at "},
		{"not JSON", writeFile(t, "{"), defaults, "not a calibration"},
		{"other version", writeFile(t, `{"version": 2, "rates": {}}`), defaults, "calibration version 2, want 1"},
	}
	for _, c := range cases {
		env := mapEnv(map[string]string{EnvCalibration: c.path})
		rates, note := LoadCalibration(env, "q8_0", 4)
		if rates != c.want || !strings.Contains(note, c.note) {
			t.Errorf("%s: got %+v %q, want %+v and a note with %q", c.name, rates, note, c.want, c.note)
		}
		if c.want == defaults && !strings.Contains(note, "documented defaults") {
			t.Errorf("%s: the note %q does not say the defaults are used", c.name, note)
		}
	}
}

func TestLoadCalibrationDefaultPath(t *testing.T) {
	if _, note := LoadCalibration(mapEnv(nil), "q4_k", 1); !strings.Contains(note, DefaultCalibration) {
		t.Errorf("note %q does not name %s", note, DefaultCalibration)
	}
}

// sysfsCPUs writes cpu0..cpuN-1's topology/thread_siblings under a fake sysfs.
func sysfsCPUs(t *testing.T, siblings ...string) string {
	t.Helper()
	root := t.TempDir()
	for i, s := range siblings {
		dir := filepath.Join(root, "devices", "system", "cpu", "cpu"+strconv.Itoa(i), "topology")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "thread_siblings"), []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestLlamaServerThreads(t *testing.T) {
	smt := sysfsCPUs(t, "05", "0a", "05", "0a") // 2 cores with 2 hyperthreads each
	cases := []struct {
		name      string
		numThread int
		sysfs     string
		want      int
	}{
		{"num_thread set", 3, smt, 3},
		{"physical cores", 0, smt, 2},
		{"no hyperthreads", 0, sysfsCPUs(t, "1", "2", "4"), 3},
		{"no sysfs", -1, filepath.Join(t.TempDir(), "none"), max(runtime.NumCPU(), 1)},
	}
	for _, c := range cases {
		if got := LlamaServerThreads(c.numThread, c.sysfs); got != c.want {
			t.Errorf("%s: got %d, want %d", c.name, got, c.want)
		}
	}
}
