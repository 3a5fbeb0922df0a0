package airllmrunner

import "math"

// The cost model, the same arithmetic in the same order as the Python
// planner (ollama_airllm.fit); products are converted explicitly with
// float64() so that the compiler never fuses them into an FMA and both
// languages round alike. See ollama_airllm/fit.py for the model itself.

// UBatch is Ollama's -ub: op offload copies CPU-resident weights to the GPU
// once per ubatch of a prompt.
const UBatch = 512

const (
	gb    = 1e9
	tflop = 1e12
)

// ModelFacts is what the GGUF header says about a model; zero when unknown.
type ModelFacts struct {
	WeightBytes  uint64 `json:"weight_bytes"`  // all tensors
	LayerBytes   uint64 `json:"layer_bytes"`   // blk.N.* tensors
	ExpertBytes  uint64 `json:"expert_bytes"`  // blk.N.*_exps tensors (MoE experts)
	NLayer       int    `json:"n_layer"`       // block_count
	NExpert      int    `json:"n_expert"`      // expert_count
	NExpertUsed  int    `json:"n_expert_used"` // expert_used_count
	Params       uint64 `json:"params"`        // elements of all tensors
	ExpertParams uint64 `json:"expert_params"` // elements of the expert tensors
	KVBytes      uint64 `json:"kv_bytes"`      // f16 KV cache for the context
	WeightType   string `json:"weight_type"`   // the layers' main tensor type, lower case
}

// Rates are the machine's speeds: GB/s (1e9 bytes/s) or TFLOP/s. CPUWeightRead
// and CPUGEMM are llama.cpp's CPU kernels for all the threads llama-server
// uses (RatesFromCalibration multiplies the per-thread rates).
type Rates struct {
	HostToDevice   float64 `json:"host_to_device"`
	HostMemoryRead float64 `json:"host_memory_read"`
	ModelsDirRead  float64 `json:"models_dir_read"`
	GPUMemoryRead  float64 `json:"gpu_memory_read"`
	GPUF16GEMM     float64 `json:"gpu_f16_gemm"`
	EngineGEMV     float64 `json:"engine_gemv"`
	EngineGEMM     float64 `json:"engine_gemm"`
	CPUWeightRead  float64 `json:"cpu_weight_read"`
	CPUGEMM        float64 `json:"cpu_gemm"`
}

// Estimate is one way to run the model.
type Estimate struct {
	Path        string  `json:"path"` // all-gpu, fit, cpu-moe, cpu or runner
	Feasible    bool    `json:"feasible"`
	GPULayers   int     `json:"gpu_layers"` // all-gpu/fit: layers on the GPU; cpu-moe: N; runner: resident layers
	VRAMBytes   uint64  `json:"vram_bytes"`
	RAMBytes    uint64  `json:"ram_bytes"`
	DecodeTPS   float64 `json:"decode_tps"`
	TTFTSeconds float64 `json:"ttft_s"`
}

// Known says whether the cost model can run on f.
func Known(f ModelFacts) bool { return f.NLayer > 0 && f.LayerBytes > 0 }

type shape struct {
	nLayer                                                     int
	perLayer, perExperts, share, activeLayer, other, activePar float64
}

func newShape(f ModelFacts) shape {
	n := float64(f.NLayer)
	share := 1.0
	if f.NExpert > 0 && f.NExpertUsed > 0 {
		share = float64(f.NExpertUsed) / float64(f.NExpert)
	}
	perLayer := float64(f.LayerBytes) / n
	perExperts := float64(f.ExpertBytes) / n
	unused := 1.0 - share
	activeLayer := perLayer - float64(perExperts*unused)
	other := math.Max(float64(f.WeightBytes)-float64(f.LayerBytes), 0.0)
	activePar := float64(f.Params) - float64(float64(f.ExpertParams)*unused)
	return shape{f.NLayer, perLayer, perExperts, share, activeLayer, other, activePar}
}

func (sh shape) flops(nPrompt int) float64 { return float64(2.0*sh.activePar) * float64(nPrompt) }

func ubatches(nPrompt int) int { return (nPrompt + UBatch - 1) / UBatch }

// spill is the share of resident CPU-side bytes that do not fit free RAM.
func spill(resident float64, ramFree uint64) float64 {
	if resident <= 0 {
		return 0.0
	}
	return math.Max(resident-float64(ramFree), 0.0) / resident
}

// cpuSeconds is llama.cpp's CPU time for read bytes of CPU-side weights:
// bound by its kernels' own rate and by reading them from RAM or disk.
func cpuSeconds(read, resident float64, ramFree uint64, r Rates) float64 {
	sp := spill(resident, ramFree)
	fromRAM := float64(read*(1.0-sp)) / (math.Min(r.HostMemoryRead, r.CPUWeightRead) * gb)
	return fromRAM + float64(read*sp)/(math.Min(r.ModelsDirRead, r.CPUWeightRead)*gb)
}

func copySeconds(n float64, ramFree uint64, r Rates) float64 {
	sp := spill(n, ramFree)
	return n/(r.HostToDevice*gb) + float64(n*sp)/(r.ModelsDirRead*gb)
}

func toBytes(x float64) uint64 {
	if x >= 18446744073709551616.0 {
		return math.MaxUint64
	}
	return uint64(x)
}

func layers(budget, perLayer float64, nLayer int) int {
	if budget <= 0 {
		return 0
	}
	q := budget / perLayer
	if q >= float64(nLayer) {
		return nLayer
	}
	return int(math.Floor(q))
}

func estimate(path string, feasible bool, n int, vram, ram, tokenS, ttft float64) Estimate {
	return Estimate{path, feasible, n, toBytes(vram), toBytes(ram), 1.0 / tokenS, ttft}
}

// EstimateAllGPU is llama-server with every layer on the GPU.
func EstimateAllGPU(f ModelFacts, r Rates, modelBytes, usable uint64, nPrompt int) Estimate {
	sh := newShape(f)
	read := sh.other + float64(float64(sh.nLayer)*sh.activeLayer)
	tokenS := read / (r.GPUMemoryRead * gb)
	ttft := sh.flops(nPrompt) / (r.GPUF16GEMM * tflop)
	e := estimate("all-gpu", modelBytes <= usable, sh.nLayer, 0, 0, tokenS, ttft)
	e.VRAMBytes = modelBytes
	return e
}

// EstimateFit is llama-server as --fit places it: layers on the GPU until
// usable VRAM is full, the rest computed on the CPU.
func EstimateFit(f ModelFacts, r Rates, usable, ramFree uint64, nPrompt int) Estimate {
	sh := newShape(f)
	budget := float64(usable) - sh.other - float64(f.KVBytes)
	g := layers(budget, sh.perLayer, sh.nLayer)
	c := sh.nLayer - g
	cpuResident := float64(float64(c) * sh.perLayer)
	gpuRead := sh.other + float64(float64(g)*sh.activeLayer)
	cpuS := cpuSeconds(float64(float64(c)*sh.activeLayer), cpuResident, ramFree, r)
	tokenS := gpuRead/(r.GPUMemoryRead*gb) + cpuS
	copies := 0.0
	if c > 0 {
		copies = float64(float64(ubatches(nPrompt)) * copySeconds(cpuResident, ramFree, r))
	}
	ttft := copies + sh.flops(nPrompt)/(r.GPUF16GEMM*tflop)
	vram := sh.other + float64(float64(g)*sh.perLayer) + float64(f.KVBytes)
	return estimate("fit", true, g, vram, cpuResident, tokenS, ttft)
}

// EstimateCPUMoE is llama-server with the experts of the first N layers on
// the CPU, N the smallest that fits; ok is false for a dense model.
func EstimateCPUMoE(f ModelFacts, r Rates, modelBytes, usable, ramFree uint64, nPrompt int) (e Estimate, ok bool) {
	if f.NExpert <= 0 || f.ExpertBytes == 0 {
		return Estimate{}, false
	}
	sh := newShape(f)
	n, feasible := 0, true
	if modelBytes > usable {
		q := float64(modelBytes-usable) / sh.perExperts
		feasible = q <= float64(sh.nLayer)
		if q >= float64(sh.nLayer) {
			n = sh.nLayer
		} else {
			n = int(math.Ceil(q))
		}
	}
	cpuResident := float64(float64(n) * sh.perExperts)
	cpuRead := float64(cpuResident * sh.share)
	gpuRead := sh.other + float64(float64(sh.nLayer)*sh.activeLayer) - cpuRead
	tokenS := gpuRead/(r.GPUMemoryRead*gb) + cpuSeconds(cpuRead, cpuResident, ramFree, r)
	copies := 0.0
	if n > 0 {
		copies = float64(float64(ubatches(nPrompt)) * copySeconds(cpuResident, ramFree, r))
	}
	ttft := copies + sh.flops(nPrompt)/(r.GPUF16GEMM*tflop)
	return estimate("cpu-moe", feasible, n, float64(modelBytes)-cpuResident, cpuResident, tokenS, ttft), true
}

// EstimateCPU is llama-server with no layer on a GPU (-ngl 0): every weight
// and the prompt's FLOPs on the CPU.
func EstimateCPU(f ModelFacts, r Rates, ramFree uint64, nPrompt int) Estimate {
	sh := newShape(f)
	resident := float64(f.WeightBytes)
	read := sh.other + float64(float64(sh.nLayer)*sh.activeLayer)
	tokenS := cpuSeconds(read, resident, ramFree, r)
	ttft := sh.flops(nPrompt) / (r.CPUGEMM * tflop)
	return estimate("cpu", true, 0, 0.0, resident+float64(f.KVBytes), tokenS, ttft)
}

// EstimateRunner is our runner: R layers resident besides the head, the KV
// cache and two staging layers; the rest streamed over PCIe (for a decoded
// token, only the routed experts of a MoE layer).
func EstimateRunner(f ModelFacts, r Rates, usable, ramFree uint64, nPrompt int) Estimate {
	sh := newShape(f)
	staging := float64(2.0 * sh.perLayer)
	budget := float64(usable) - float64(f.KVBytes) - sh.other - staging
	resident := layers(budget, sh.perLayer, sh.nLayer)
	streamed := float64(float64(sh.nLayer-resident) * sh.perLayer)
	source := r.ModelsDirRead
	if streamed <= float64(ramFree) {
		source = r.HostMemoryRead
	}
	rate := math.Min(r.HostToDevice, source) * gb
	tokenStream := float64(float64(sh.nLayer-resident) * sh.activeLayer) // only the routed experts are fetched
	compute := sh.other + float64(float64(sh.nLayer)*sh.activeLayer)
	tokenS := tokenStream/rate + compute/(r.EngineGEMV*gb)
	ttft := streamed/rate + sh.flops(nPrompt)/(r.EngineGEMM*tflop)
	vram := sh.other + float64(float64(resident)*sh.perLayer) + float64(f.KVBytes) + staging
	return estimate("runner", true, resident, vram, streamed, tokenS, ttft)
}

// LlamaServerEstimate is llama-server's best path for a model beyond usable
// VRAM: experts on the CPU for a MoE model where that fits, else --fit.
func LlamaServerEstimate(in Input, usable uint64, nPrompt int) Estimate {
	if moe, ok := EstimateCPUMoE(in.Facts, in.Rates, in.ModelBytes, usable, in.RAMFreeBytes, nPrompt); ok && moe.Feasible {
		return moe
	}
	return EstimateFit(in.Facts, in.Rates, usable, in.RAMFreeBytes, nPrompt)
}
