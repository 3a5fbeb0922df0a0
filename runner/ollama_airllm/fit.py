"""The fit decision and the cost model behind it: llama-server or the AirLLM runner, with a one-line reason.

The same rules as the Go package runner/airllmrunner that airllm.patch calls inside Ollama; both are tested
with the shared vectors in tests/vectors/ (fit_decision.json, plan_decision.json), so `ollama-airllm plan`
and the doctor explain exactly what Ollama does.

Cost model (batch-1 decode, seconds per token; prompt = time to first token). L layers of `layer_bytes / L`
bytes each; a MoE layer reads only `n_expert_used / n_expert` of its expert bytes per token. "Usable VRAM"
is 80 % of the free VRAM after each GPU's reserve, for every path.

- all-gpu: every byte read per token from VRAM (`gpu_memory_read`); prompt at `gpu_f16_gemm`.
- fit (llama-server's `--fit`): layers on the GPU until usable VRAM is full, the rest computed on the CPU
  from RAM at the slower of `host_memory_read` and llama.cpp's CPU kernels for the threads llama-server
  uses (`cpu_weight_read`: on few cores the CPU decode is compute-bound, not memory-bound); what exceeds
  free RAM comes from disk (`models_dir_read`). For a prompt,
  op offload copies the CPU layers to the GPU once per 512-token ubatch (`host_to_device`).
- cpu-moe (MoE only, `--n-cpu-moe N`): the experts of the first N layers stay in RAM, N the smallest that
  fits; same rates.
- cpu (llama-server with no layer on a GPU, `-ngl 0`): every weight computed on the CPU as above; the prompt's
  FLOPs at llama.cpp's CPU matmul rate (`cpu_gemm`).
- runner: R layers resident, the rest streamed over PCIe from the page cache (from disk when the model
  does not fit RAM; for a decoded token only the routed experts of a MoE layer), all weights through the
  engine's dequantizing GEMV (`engine_gemv`); a prompt is one pass over every weight plus its FLOPs at
  `engine_gemm`.

Policy (OLLAMA_AIRLLM_TAKEOVER): `auto` = the runner when its time for the workload (prompt + output
tokens) is shorter, or when the model does not fit RAM + VRAM; `over-vram` = the runner whenever the model
exceeds usable VRAM; `never`. A model that fits usable VRAM always stays on llama-server.
"""

from __future__ import annotations

import itertools
import math
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

ENV_FORCE = "AIRLLM_FORCE"
ENV_ENABLE = "OLLAMA_AIRLLM"
ENV_RUNNER = "OLLAMA_AIRLLM_RUNNER"
ENV_GPU_OVERHEAD = "OLLAMA_GPU_OVERHEAD"
ENV_TAKEOVER = "OLLAMA_AIRLLM_TAKEOVER"
ENV_PROMPT_TOKENS = "OLLAMA_AIRLLM_PROMPT_TOKENS"
ENV_OUTPUT_TOKENS = "OLLAMA_AIRLLM_OUTPUT_TOKENS"

DEFAULT_RUNNER = "/usr/lib/ollama/airllm-runner"
TAKEOVER_POLICIES = ("auto", "over-vram", "never")
DEFAULT_PROMPT_TOKENS = 4096
DEFAULT_OUTPUT_TOKENS = 512
MAX_WORKLOAD_TOKENS = 1 << 24
FIT_PERCENT = 80
"""Share of free VRAM (after reserves) a model may fill and stay on llama-server, as Ollama's scheduler."""

MINIMUM_BYTES = 457 * 1024 * 1024
"""Ollama's per-GPU reserve (ml.DeviceInfo.MinimumMemory) on ROCm, CUDA and Vulkan."""

UBATCH = 512
"""Ollama passes -ub 512: op offload copies CPU-resident weights to the GPU once per ubatch of a prompt."""

MAX_UINT64 = 2**64 - 1
MIB = 1 << 20
GB = 1e9
TFLOP = 1e12

# Go's strings.TrimSpace removes Unicode white space (unicode.IsSpace), a narrower set than str.strip().
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
    "\u2028\u2029\u202f\u205f\u3000"
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class GPU:
    """One GPU selected for the model."""

    free_bytes: int
    minimum_bytes: int = MINIMUM_BYTES


@dataclass(frozen=True)
class ModelFacts:
    """What the GGUF header says about a model (see model_facts()); all zero when unknown."""

    weight_bytes: int = 0
    """Sum of all tensors' bytes."""
    layer_bytes: int = 0
    """Sum of the `blk.N.*` tensors' bytes."""
    expert_bytes: int = 0
    """Sum of the `blk.N.*_exps` (MoE expert) tensors' bytes."""
    n_layer: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    params: int = 0
    """Elements of all tensors."""
    expert_params: int = 0
    kv_bytes: int = 0
    """f16 KV cache for the context: 2 * n_layer * n_head_kv * head_dim * n_ctx * 2 (Ollama's formula)."""
    weight_type: str = ""
    """The layers' main tensor type by bytes, lower case (q4_k, q8_0, f16, ...)."""


@dataclass(frozen=True)
class Rates:
    """The machine's speeds (GB/s = 1e9 bytes/s; TFLOP/s), from calibration.json or these defaults.

    cpu_weight_read and cpu_gemm are llama.cpp's CPU kernels for all the threads llama-server uses
    (rates_from_calibration multiplies the per-thread rates); these defaults are one thread's."""

    host_to_device: float = 25.0
    host_memory_read: float = 50.0
    models_dir_read: float = 3.0
    gpu_memory_read: float = 800.0
    gpu_f16_gemm: float = 40.0
    engine_gemv: float = 17.0
    engine_gemm: float = 15.0
    cpu_weight_read: float = 6.8
    cpu_gemm: float = 0.07


@dataclass(frozen=True)
class FitInput:
    """What Ollama knows when it starts a runner."""

    model_bytes: int
    """Ollama's estimate for the model and its context (llm.PredictServerVRAM)."""
    gpus: Sequence[GPU] = ()
    num_gpu: int = -1
    """-1 automatic, 0 CPU only, >0 layers asked for."""
    ram_free_bytes: int = 0
    facts: ModelFacts = field(default_factory=ModelFacts)
    rates: Rates = field(default_factory=Rates)


@dataclass(frozen=True)
class Estimate:
    """One way to run the model: its memory, decode speed and time to first token."""

    path: str
    """all-gpu | fit | cpu-moe | runner."""
    feasible: bool
    gpu_layers: int
    """all-gpu/fit: layers on the GPU; cpu-moe: --n-cpu-moe N; runner: resident layers."""
    vram_bytes: int
    ram_bytes: int
    decode_tps: float
    ttft_s: float
    """Time to first token for the prompt it was estimated for."""


@dataclass(frozen=True)
class Decision:
    """Which runner serves the model, and why."""

    airllm: bool
    forced: bool
    runner: str
    reason: str
    warnings: tuple[str, ...] = field(default_factory=tuple)
    n_cpu_moe: int = 0
    """> 0: start llama-server with --n-cpu-moe N (a MoE model that does not fit VRAM)."""
    fallback_n_cpu_moe: int = 0
    """The N llama-server takes instead when the runner was chosen but cannot start."""

    def with_runner_check(self, error: str | None) -> Decision:
        """Apply the result of checking the runner can start: a fitted choice falls back to llama-server,
        with the --n-cpu-moe N that llama-server's best path has for a MoE model."""
        if error is None or not self.airllm or self.forced:
            return self
        wanted = self.reason.removeprefix("airllm: ")
        reason = f"llama-server: AirLLM runner unavailable ({error}); wanted it because {wanted}"
        n = self.fallback_n_cpu_moe
        return replace(self, airllm=False, n_cpu_moe=n, reason=reason + (f"; --n-cpu-moe {n}" if n else ""))


@dataclass
class _Settings:
    force: bool = False
    force_value: str = ""
    off: bool = False
    off_value: str = ""
    runner: str = DEFAULT_RUNNER
    overhead: int = 0
    takeover: str = "auto"
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    output_tokens: int = DEFAULT_OUTPUT_TOKENS
    warnings: list[str] = field(default_factory=list)


def decide(inp: FitInput, env: Mapping[str, str] | None = None) -> Decision:
    """Pick llama-server or the AirLLM runner; ``env`` defaults to ``os.environ``.

    OLLAMA_AIRLLM=0 turns the runner off; AIRLLM_FORCE=1 starts it; without a GPU or with num_gpu set,
    llama-server serves the model; a model within usable VRAM (80 % of the free VRAM left after each GPU's
    reserve and OLLAMA_GPU_OVERHEAD) stays on llama-server; beyond it OLLAMA_AIRLLM_TAKEOVER decides.
    """
    s = _read_settings(os.environ if env is None else env)
    d = Decision(False, False, s.runner, "", tuple(s.warnings))
    if s.off:
        return replace(d, reason=f"llama-server: AirLLM runner turned off by {ENV_ENABLE}={s.off_value}")
    if s.force:
        return replace(d, airllm=True, forced=True, reason=f"airllm: forced by {ENV_FORCE}={s.force_value}")
    if not inp.gpus:
        why = f"no GPU selected; the AirLLM runner needs one ({ENV_FORCE}=1 overrides)"
        return replace(d, reason=f"llama-server: {why}")
    if inp.num_gpu == 0:
        return replace(d, reason="llama-server: num_gpu=0 asks for CPU only")
    if inp.num_gpu > 0:
        return replace(d, reason=f"llama-server: num_gpu={inp.num_gpu} set explicitly")
    available = available_vram(inp.gpus, s.overhead)
    usable = usable_vram(available)
    gpus = f"{len(inp.gpus)} GPU{'s' * (len(inp.gpus) != 1)}"
    detail = f"({FIT_PERCENT}% of {mib(available)} free after reserves on {gpus})"
    if inp.model_bytes <= usable:
        fits = f"model {mib(inp.model_bytes)} <= usable VRAM {mib(usable)} {detail}"
        return replace(d, reason=f"llama-server: {fits}")
    over = f"model {mib(inp.model_bytes)} > usable VRAM {mib(usable)} {detail}"
    llama = llama_server_estimate(inp, usable, s.prompt_tokens) if known(inp.facts) else None
    n = llama.gpu_layers if llama is not None and llama.path == "cpu-moe" else 0
    if s.takeover == "over-vram" or (s.takeover == "auto" and llama is None):
        how = "" if s.takeover == "over-vram" else "; no model facts, so the over-vram rule"
        return replace(d, airllm=True, fallback_n_cpu_moe=n, reason=f"airllm: {over}{how}")
    never = f"llama-server: {ENV_TAKEOVER}=never; {over}"
    if llama is None:
        return replace(d, reason=never)
    d = replace(d, n_cpu_moe=n)
    if s.takeover == "never":
        return replace(d, reason=never + _moe_note(llama))
    return _auto(d, inp, usable, llama, s)


def _auto(d: Decision, inp: FitInput, usable: int, llama: Estimate, s: _Settings) -> Decision:
    """The auto policy: the runner when it is faster for the workload or the model exceeds RAM + VRAM."""
    runner = estimate_runner(inp.facts, inp.rates, usable, inp.ram_free_bytes, s.prompt_tokens)
    sizes = f"model {mib(inp.model_bytes)}, usable VRAM {mib(usable)}, free RAM {mib(inp.ram_free_bytes)}"
    if inp.model_bytes - usable > inp.ram_free_bytes:
        reason = f"airllm: the model does not fit RAM + VRAM ({sizes})"
        return replace(d, airllm=True, n_cpu_moe=0, fallback_n_cpu_moe=d.n_cpu_moe, reason=reason)
    t_runner = workload_seconds(runner, s.output_tokens)
    t_llama = workload_seconds(llama, s.output_tokens)
    airllm = t_runner < t_llama
    chosen = "runner" if airllm else "llama-server"
    reason = (
        f"{'airllm' if airllm else 'llama-server'}: runner {tps(runner.decode_tps)} tok/s vs llama-server "
        f"{tps(llama.decode_tps)} tok/s{_moe_note(llama)} → {chosen} (workload {s.prompt_tokens}+"
        f"{s.output_tokens} tokens: {t_runner:.1f} s vs {t_llama:.1f} s; {sizes})"
    )
    if airllm:
        return replace(d, airllm=True, n_cpu_moe=0, fallback_n_cpu_moe=d.n_cpu_moe, reason=reason)
    return replace(d, reason=reason)


def known(f: ModelFacts) -> bool:
    """Whether the cost model can run on `f` (a model with layers of known size)."""
    return f.n_layer > 0 and f.layer_bytes > 0


def _moe_note(llama: Estimate) -> str:
    return f" with --n-cpu-moe {llama.gpu_layers}" if llama.path == "cpu-moe" else ""


def workload_seconds(e: Estimate, output_tokens: int) -> float:
    """Time for the workload: first token, then the other output tokens at the decode speed."""
    return e.ttft_s + output_tokens / e.decode_tps


def tps(value: float) -> str:
    """Tokens per second, readable from 0.001 to thousands."""
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def available_vram(gpus: Sequence[GPU], overhead: int) -> int:
    """Free VRAM left after each GPU's reserve (minimum + overhead), never below zero per GPU."""
    total = 0
    for g in gpus:
        reserve = min(g.minimum_bytes + overhead, MAX_UINT64)
        if g.free_bytes > reserve:
            total = min(total + g.free_bytes - reserve, MAX_UINT64)
    return total


def usable_vram(available: int) -> int:
    """FIT_PERCENT of `available`, rounded down."""
    return available * FIT_PERCENT // 100


def mib(n: int) -> str:
    """Bytes as whole MiB, e.g. ``40123 MiB`` (rounded down)."""
    return f"{n // MIB} MiB"


# --- the cost model: the same arithmetic, in the same order, as runner/airllmrunner/cost.go -------------


@dataclass(frozen=True)
class _Shape:
    n_layer: int
    per_layer: float
    per_experts: float
    share: float
    active_layer: float
    other: float
    active_params: float


def _shape(f: ModelFacts) -> _Shape:
    n = f.n_layer
    share = 1.0
    if f.n_expert > 0 and f.n_expert_used > 0:
        share = float(f.n_expert_used) / f.n_expert
    per_layer = float(f.layer_bytes) / n
    per_experts = float(f.expert_bytes) / n
    unused = 1.0 - share
    active_layer = per_layer - float(per_experts * unused)
    other = float(f.weight_bytes) - float(f.layer_bytes)
    active_params = float(f.params) - float(f.expert_params * unused)
    return _Shape(n, per_layer, per_experts, share, active_layer, max(other, 0.0), active_params)


def _flops(sh: _Shape, n_prompt: int) -> float:
    return float(2.0 * sh.active_params) * n_prompt


def _ubatches(n_prompt: int) -> int:
    return (n_prompt + UBATCH - 1) // UBATCH


def _spill(resident: float, ram_free: int) -> float:
    """Share of `resident` CPU-side bytes that do not fit free RAM (read from disk)."""
    if resident <= 0:
        return 0.0
    return max(resident - float(ram_free), 0.0) / resident


def _cpu_seconds(read: float, resident: float, ram_free: int, r: Rates) -> float:
    """Seconds for llama.cpp's CPU kernels on `read` bytes of CPU-side weights: bound by their own rate
    and by reading the weights from RAM or, for what does not fit, from disk."""
    spill = _spill(resident, ram_free)
    from_ram = float(read * (1.0 - spill)) / (min(r.host_memory_read, r.cpu_weight_read) * GB)
    return from_ram + float(read * spill) / (min(r.models_dir_read, r.cpu_weight_read) * GB)


def _copy_seconds(nbytes: float, ram_free: int, r: Rates) -> float:
    """Seconds to copy CPU-side weights to the GPU (op offload), reading the spilled part from disk."""
    spill = _spill(nbytes, ram_free)
    return nbytes / (r.host_to_device * GB) + float(nbytes * spill) / (r.models_dir_read * GB)


def _estimate(path: str, feasible: bool, layers: int, vram: float, ram: float, token_s: float,
              ttft: float) -> Estimate:
    return Estimate(path, feasible, layers, _bytes(vram), _bytes(ram), 1.0 / token_s, ttft)


def _bytes(x: float) -> int:
    """A byte count from the model's float arithmetic, truncated and capped at 2^64-1 (as Go's uint64)."""
    return MAX_UINT64 if x >= 2.0**64 else int(x)


def _layers(budget: float, per_layer: float, n_layer: int) -> int:
    """How many whole layers of `per_layer` bytes fit `budget`, at most n_layer."""
    if budget <= 0:
        return 0
    q = budget / per_layer
    return n_layer if q >= n_layer else math.floor(q)


def estimate_all_gpu(f: ModelFacts, r: Rates, model_bytes: int, usable: int, n_prompt: int) -> Estimate:
    """llama-server with every layer on the GPU."""
    sh = _shape(f)
    read = sh.other + float(sh.n_layer * sh.active_layer)
    token_s = read / (r.gpu_memory_read * GB)
    ttft = _flops(sh, n_prompt) / (r.gpu_f16_gemm * TFLOP)
    return _estimate("all-gpu", model_bytes <= usable, sh.n_layer, model_bytes, 0.0, token_s, ttft)


def estimate_fit(f: ModelFacts, r: Rates, usable: int, ram_free: int, n_prompt: int) -> Estimate:
    """llama-server as --fit places it: layers on the GPU until usable VRAM is full, the rest on the CPU."""
    sh = _shape(f)
    budget = float(usable) - sh.other - float(f.kv_bytes)
    g = _layers(budget, sh.per_layer, sh.n_layer)
    c = sh.n_layer - g
    cpu_resident = float(c * sh.per_layer)
    gpu_read = sh.other + float(g * sh.active_layer)
    cpu_s = _cpu_seconds(float(c * sh.active_layer), cpu_resident, ram_free, r)
    token_s = gpu_read / (r.gpu_memory_read * GB) + cpu_s
    copies = float(_ubatches(n_prompt) * _copy_seconds(cpu_resident, ram_free, r)) if c > 0 else 0.0
    ttft = copies + _flops(sh, n_prompt) / (r.gpu_f16_gemm * TFLOP)
    vram = sh.other + float(g * sh.per_layer) + float(f.kv_bytes)
    return _estimate("fit", True, g, vram, cpu_resident, token_s, ttft)


def estimate_cpu_moe(f: ModelFacts, r: Rates, model_bytes: int, usable: int, ram_free: int,
                     n_prompt: int) -> Estimate | None:
    """llama-server with the experts of the first N layers on the CPU, N the smallest that fits (MoE only)."""
    if f.n_expert <= 0 or f.expert_bytes <= 0:
        return None
    sh = _shape(f)
    n, feasible = 0, True
    if model_bytes > usable:
        q = float(model_bytes - usable) / sh.per_experts
        feasible = q <= sh.n_layer
        n = sh.n_layer if q >= sh.n_layer else math.ceil(q)
    cpu_resident = float(n * sh.per_experts)
    cpu_read = float(cpu_resident * sh.share)
    gpu_read = sh.other + float(sh.n_layer * sh.active_layer) - cpu_read
    token_s = gpu_read / (r.gpu_memory_read * GB) + _cpu_seconds(cpu_read, cpu_resident, ram_free, r)
    copies = float(_ubatches(n_prompt) * _copy_seconds(cpu_resident, ram_free, r)) if n > 0 else 0.0
    ttft = copies + _flops(sh, n_prompt) / (r.gpu_f16_gemm * TFLOP)
    return _estimate("cpu-moe", feasible, n, float(model_bytes) - cpu_resident, cpu_resident, token_s, ttft)


def estimate_cpu(f: ModelFacts, r: Rates, ram_free: int, n_prompt: int) -> Estimate:
    """llama-server with no layer on a GPU (-ngl 0): every weight and the prompt's FLOPs on the CPU."""
    sh = _shape(f)
    resident = float(f.weight_bytes)
    read = sh.other + float(sh.n_layer * sh.active_layer)
    token_s = _cpu_seconds(read, resident, ram_free, r)
    ttft = _flops(sh, n_prompt) / (r.cpu_gemm * TFLOP)
    return _estimate("cpu", True, 0, 0.0, resident + float(f.kv_bytes), token_s, ttft)


def estimate_runner(f: ModelFacts, r: Rates, usable: int, ram_free: int, n_prompt: int) -> Estimate:
    """Our runner: R layers resident (besides head, KV cache and two staging layers), the rest streamed."""
    sh = _shape(f)
    staging = float(2.0 * sh.per_layer)
    budget = float(usable) - float(f.kv_bytes) - sh.other - staging
    resident = _layers(budget, sh.per_layer, sh.n_layer)
    streamed = float((sh.n_layer - resident) * sh.per_layer)
    source = r.host_memory_read if streamed <= float(ram_free) else r.models_dir_read
    rate = min(r.host_to_device, source) * GB
    token_stream = float((sh.n_layer - resident) * sh.active_layer)  # only the routed experts are fetched
    compute = sh.other + float(sh.n_layer * sh.active_layer)
    token_s = token_stream / rate + compute / (r.engine_gemv * GB)
    ttft = streamed / rate + _flops(sh, n_prompt) / (r.engine_gemm * TFLOP)
    vram = sh.other + float(resident * sh.per_layer) + float(f.kv_bytes) + staging
    return _estimate("runner", True, resident, vram, streamed, token_s, ttft)


def llama_server_estimate(inp: FitInput, usable: int, n_prompt: int) -> Estimate:
    """llama-server's best path for a model beyond usable VRAM: experts on the CPU (MoE), else --fit."""
    moe = estimate_cpu_moe(inp.facts, inp.rates, inp.model_bytes, usable, inp.ram_free_bytes, n_prompt)
    if moe is not None and moe.feasible:
        return moe
    return estimate_fit(inp.facts, inp.rates, usable, inp.ram_free_bytes, n_prompt)


# --- the environment, read like Ollama's envconfig -------------------------------------------------------


def _env_value(env: Mapping[str, str], key: str) -> str:
    """Read a variable like Ollama's envconfig.Var: trim white space, then quotes."""
    return env.get(key, "").strip(_GO_SPACE).strip("\"'")


def _bad(key: str, value: str, allowed: str, used: str) -> str:
    return f"ignoring {key}={_go_quote(value)}: want {allowed}; using {used}"


def _go_quote(value: str) -> str:
    """Go's %q for the printable strings found in environment values."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append({"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t",
                        "\v": r"\v"}.get(ch, f"\\x{ord(ch):02x}"))
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _tokens(env: Mapping[str, str], key: str, default: int, warnings: list[str]) -> int:
    value = _env_value(env, key)
    if not value:
        return default
    if _DIGITS.fullmatch(value) and 1 <= int(value) <= MAX_WORKLOAD_TOKENS:
        return int(value)
    warnings.append(_bad(key, value, f"a number of tokens from 1 to {MAX_WORKLOAD_TOKENS}", str(default)))
    return default


def _read_settings(env: Mapping[str, str]) -> _Settings:
    s = _Settings()
    if value := _env_value(env, ENV_FORCE):
        if value in _GO_TRUE | _GO_FALSE:
            s.force, s.force_value = value in _GO_TRUE, value
        else:
            s.warnings.append(_bad(ENV_FORCE, value, "1 or 0 (true/false)", "not forced"))
    if value := _env_value(env, ENV_ENABLE):
        if value in _GO_TRUE | _GO_FALSE:
            s.off, s.off_value = value in _GO_FALSE, value
        else:
            s.warnings.append(_bad(ENV_ENABLE, value, "1 or 0 (true/false)", "on"))
    if value := _env_value(env, ENV_RUNNER):
        if value.startswith("/"):
            s.runner = posixpath.normpath(value)
            if s.runner.startswith("//"):  # Go's filepath.Clean keeps one leading slash
                s.runner = "/" + s.runner.lstrip("/")
        else:
            s.warnings.append(_bad(ENV_RUNNER, value, "an absolute path", DEFAULT_RUNNER))
    if value := _env_value(env, ENV_GPU_OVERHEAD):
        if _DIGITS.fullmatch(value) and int(value) <= MAX_UINT64:
            s.overhead = int(value)
        else:
            s.warnings.append(_bad(ENV_GPU_OVERHEAD, value, "a number of bytes", "0"))
    if value := _env_value(env, ENV_TAKEOVER):
        if value in TAKEOVER_POLICIES:
            s.takeover = value
        else:
            s.warnings.append(_bad(ENV_TAKEOVER, value, "auto, over-vram or never", "auto"))
    s.prompt_tokens = _tokens(env, ENV_PROMPT_TOKENS, DEFAULT_PROMPT_TOKENS, s.warnings)
    s.output_tokens = _tokens(env, ENV_OUTPUT_TOKENS, DEFAULT_OUTPUT_TOKENS, s.warnings)
    return s


# --- model facts and rates, as runner/airllmrunner/plan.go ----------------------------------------------

DEFAULT_RATES = Rates()
"""The documented defaults (ollama_airllm.calibrate.measure.DEFAULTS) for what calibration.json lacks."""


@dataclass(frozen=True)
class Tensor:
    """One tensor of a GGUF header."""

    name: str
    type: str
    """Lower case, e.g. q4_k."""
    bytes: int
    elements: int


def facts_from_tensors(tensors: Sequence[Tensor], n_layer: int, n_expert: int, n_expert_used: int,
                       kv_bytes: int) -> ModelFacts:
    """Sum a header's tensors: blk.N.* are layers, names with "_exps." MoE experts; the weight type is the
    layers' type with the most bytes (ties: the first in sort order)."""
    weight = params = layer = expert = expert_params = 0
    by_type: dict[str, int] = {}
    for t in tensors:
        weight, params = _sat(weight, t.bytes), _sat(params, t.elements)
        if not t.name.startswith("blk."):
            continue
        layer = _sat(layer, t.bytes)
        by_type[t.type] = _sat(by_type.get(t.type, 0), t.bytes)
        if "_exps." in t.name:
            expert, expert_params = _sat(expert, t.bytes), _sat(expert_params, t.elements)
    weight_type = min(by_type.items(), key=lambda kv: (-kv[1], kv[0]))[0] if by_type else ""
    return ModelFacts(weight, layer, expert, n_layer, n_expert, n_expert_used, params, expert_params,
                      kv_bytes, weight_type)


def _sat(a: int, b: int) -> int:
    """a + b capped at 2^64-1, as Go's addSat."""
    return min(a + b, MAX_UINT64)


def kv_bytes(n_layer: int, head_count_kv: int, embedding: int, head_count: int, n_ctx: int) -> int:
    """Ollama's f16 KV cache estimate: 2 (K+V) x layers x KV heads x head size x context x 2 bytes."""
    head_dim = embedding // head_count if head_count > 0 else 0
    return (2 * n_layer * max(head_count_kv, 1) * head_dim * n_ctx * 2) % 2**64


def rates_from_calibration(rates: Mapping[str, float], weight_type: str, threads: int) -> Rates:
    """The planner's rates from a calibration's rates by name: GPU 0's, else the `gpu.` default written
    without a GPU, else DEFAULT_RATES; the engine's GEMV/GEMM for `weight_type` where calibrated, else
    Q4_K's; llama.cpp's per-thread CPU rates times `threads` (at least 1). Non-positive values are
    ignored."""
    def get(default: float, *names: str) -> float:
        for n in names:
            v = rates.get(n)
            if v is not None and v > 0:
                return float(v)
        return default

    t, d, n = weight_type.lower(), DEFAULT_RATES, float(max(threads, 1))
    return Rates(
        host_to_device=get(d.host_to_device, "gpu0.host_to_device", "gpu.host_to_device"),
        host_memory_read=get(d.host_memory_read, "host_memory_read"),
        models_dir_read=get(d.models_dir_read, "models_dir_read"),
        gpu_memory_read=get(d.gpu_memory_read, "gpu0.memory_read", "gpu.memory_read"),
        gpu_f16_gemm=get(d.gpu_f16_gemm, "gpu0.f16_gemm", "gpu.f16_gemm"),
        engine_gemv=get(d.engine_gemv, f"gpu0.{t}_gemv", f"gpu.{t}_gemv", "gpu0.q4_k_gemv", "gpu.q4_k_gemv"),
        engine_gemm=get(d.engine_gemm, f"gpu0.{t}_gemm", f"gpu.{t}_gemm", "gpu0.q4_k_gemm", "gpu.q4_k_gemm"),
        cpu_weight_read=float(get(d.cpu_weight_read, "cpu.llama_weight_read") * n),
        cpu_gemm=float(get(d.cpu_gemm, "cpu.llama_gemm") * n),
    )


def llama_server_threads(num_thread: int, sysfs: str = "/sys") -> int:
    """The threads llama-server computes with: Ollama passes `-t num_thread` when it is set (> 0), else
    llama.cpp takes the physical cores (common_cpu_get_num_physical_cores: distinct thread_siblings)."""
    if num_thread > 0:
        return num_thread
    siblings: set[str] = set()
    for cpu in itertools.count():
        try:
            with open(f"{sysfs}/devices/system/cpu/cpu{cpu}/topology/thread_siblings") as fh:
                siblings.add(fh.readline().rstrip("\n"))
        except OSError:
            break
    return len(siblings) or os.cpu_count() or 1
