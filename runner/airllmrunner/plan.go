package airllmrunner

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
)

// EnvCalibration names the calibration file (ollama-airllm calibrate).
const EnvCalibration = "OLLAMA_AIRLLM_CALIBRATION"

// DefaultCalibration is where `ollama-airllm calibrate` writes by default.
const DefaultCalibration = "/var/lib/ollama/airllm/calibration.json"

// DefaultRates are used for what the calibration does not give; the same
// documented defaults as ollama_airllm.calibrate.measure.DEFAULTS.
var DefaultRates = Rates{
	HostToDevice:   25.0,
	HostMemoryRead: 50.0,
	ModelsDirRead:  3.0,
	GPUMemoryRead:  800.0,
	GPUF16GEMM:     40.0,
	EngineGEMV:     17.0,
	EngineGEMM:     15.0,
	CPUWeightRead:  6.8,
	CPUGEMM:        0.07,
}

// RatesFromCalibration picks the planner's rates from a calibration file's
// "rates" (name → value): GPU 0's own measurement, else the "gpu." default
// written without a GPU, else DefaultRates. The engine's GEMV/GEMM rates are
// those of weightType where calibrated, else Q4_K's; llama.cpp's per-thread
// CPU rates are multiplied by threads (at least 1). Non-positive values are
// ignored.
func RatesFromCalibration(rates map[string]float64, weightType string, threads int) Rates {
	get := func(def float64, names ...string) float64 {
		for _, n := range names {
			if v, ok := rates[n]; ok && v > 0 {
				return v
			}
		}
		return def
	}
	t := strings.ToLower(weightType)
	d := DefaultRates
	n := float64(max(threads, 1))
	return Rates{
		HostToDevice:   get(d.HostToDevice, "gpu0.host_to_device", "gpu.host_to_device"),
		HostMemoryRead: get(d.HostMemoryRead, "host_memory_read"),
		ModelsDirRead:  get(d.ModelsDirRead, "models_dir_read"),
		GPUMemoryRead:  get(d.GPUMemoryRead, "gpu0.memory_read", "gpu.memory_read"),
		GPUF16GEMM:     get(d.GPUF16GEMM, "gpu0.f16_gemm", "gpu.f16_gemm"),
		EngineGEMV:     get(d.EngineGEMV, "gpu0."+t+"_gemv", "gpu."+t+"_gemv", "gpu0.q4_k_gemv", "gpu.q4_k_gemv"),
		EngineGEMM:     get(d.EngineGEMM, "gpu0."+t+"_gemm", "gpu."+t+"_gemm", "gpu0.q4_k_gemm", "gpu.q4_k_gemm"),
		CPUWeightRead:  float64(get(d.CPUWeightRead, "cpu.llama_weight_read") * n),
		CPUGEMM:        float64(get(d.CPUGEMM, "cpu.llama_gemm") * n),
	}
}

// LlamaServerThreads is the number of threads llama-server computes with:
// Ollama passes -t numThread when it is set (> 0); else llama.cpp takes the
// physical cores (common_cpu_get_num_physical_cores: the distinct
// thread_siblings of cpu0, cpu1, ... under sysfs).
func LlamaServerThreads(numThread int, sysfs string) int {
	if numThread > 0 {
		return numThread
	}
	siblings := map[string]bool{}
	for cpu := 0; ; cpu++ {
		data, err := os.ReadFile(fmt.Sprintf("%s/devices/system/cpu/cpu%d/topology/thread_siblings", sysfs, cpu))
		if err != nil {
			break
		}
		siblings[strings.SplitN(string(data), "\n", 2)[0]] = true
	}
	if len(siblings) > 0 {
		return len(siblings)
	}
	return max(runtime.NumCPU(), 1)
}

// LoadCalibration reads the calibration file named by OLLAMA_AIRLLM_CALIBRATION
// (default DefaultCalibration) and returns the planner's rates for llama-server
// computing with threads CPU threads, and a note for the log: which file was
// used, or why the documented defaults are.
func LoadCalibration(env LookupEnv, weightType string, threads int) (Rates, string) {
	defaults := RatesFromCalibration(nil, weightType, threads)
	path := envValue(env, EnvCalibration)
	if path == "" {
		path = DefaultCalibration
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return defaults, fmt.Sprintf("no calibration at %s: using documented defaults (run ollama-airllm calibrate)", path)
		}
		return defaults, fmt.Sprintf("cannot read %s (%v): using documented defaults", path, err)
	}
	rates, err := ParseCalibration(data)
	if err != nil {
		return defaults, fmt.Sprintf("%s: %v: using documented defaults", path, err)
	}
	return RatesFromCalibration(rates, weightType, threads), "calibration " + path
}

// ParseCalibration returns a calibration file's rates by name.
func ParseCalibration(data []byte) (map[string]float64, error) {
	var doc struct {
		Version int `json:"version"`
		Rates   map[string]struct {
			Value float64 `json:"value"`
		} `json:"rates"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("not a calibration (%v)", err)
	}
	if doc.Version != 1 {
		return nil, fmt.Errorf("calibration version %d, want 1", doc.Version)
	}
	rates := make(map[string]float64, len(doc.Rates))
	for name, r := range doc.Rates {
		rates[name] = r.Value
	}
	return rates, nil
}

// Tensor is one tensor of the GGUF header.
type Tensor struct {
	Name     string `json:"name"`
	Type     string `json:"type"` // lower case, e.g. q4_k
	Bytes    uint64 `json:"bytes"`
	Elements uint64 `json:"elements"`
}

// FactsFromTensors sums a GGUF header's tensors into ModelFacts: blk.N.*
// tensors are layers, those whose name has "_exps." are MoE experts; the
// weight type is the layers' type with the most bytes (ties: the first name
// in sort order).
func FactsFromTensors(tensors []Tensor, nLayer, nExpert, nExpertUsed int, kvBytes uint64) ModelFacts {
	f := ModelFacts{NLayer: nLayer, NExpert: nExpert, NExpertUsed: nExpertUsed, KVBytes: kvBytes}
	byType := map[string]uint64{}
	for _, t := range tensors {
		f.WeightBytes = addSat(f.WeightBytes, t.Bytes)
		f.Params = addSat(f.Params, t.Elements)
		if !strings.HasPrefix(t.Name, "blk.") {
			continue
		}
		f.LayerBytes = addSat(f.LayerBytes, t.Bytes)
		byType[t.Type] = addSat(byType[t.Type], t.Bytes)
		if strings.Contains(t.Name, "_exps.") {
			f.ExpertBytes = addSat(f.ExpertBytes, t.Bytes)
			f.ExpertParams = addSat(f.ExpertParams, t.Elements)
		}
	}
	for typ, n := range byType {
		if n > byType[f.WeightType] || (n == byType[f.WeightType] && (f.WeightType == "" || typ < f.WeightType)) {
			f.WeightType = typ
		}
	}
	return f
}

// KVBytes is Ollama's f16 KV cache estimate (llm.PredictServerVRAM):
// 2 (K+V) × layers × KV heads × head size × context × 2 bytes.
func KVBytes(nLayer, headCountKV, embedding, headCount, numCtx uint64) uint64 {
	if headCountKV == 0 {
		headCountKV = 1
	}
	headDim := uint64(0)
	if headCount > 0 {
		headDim = embedding / headCount
	}
	return 2 * nLayer * headCountKV * headDim * numCtx * 2
}
