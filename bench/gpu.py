"""The engine on a GPU, in one shot: a synthetic Llama-3-70B-geometry Q4_K_M model, streamed and resident.

    python bench/gpu.py                        # a CUDA/HIP device; picks the layer count for <= 6 min
    python bench/gpu.py --layers 20            # a fixed layer count
    python bench/gpu.py --tiny                 # a quick smoke run of the same code on the GPU
    python bench/gpu.py --device cpu --tiny    # the same code path on the CPU with tiny dims (CI)

The model: Llama-3-70B layers (n_embd 8192, 64 heads, 8 KV heads, head_dim 128, n_ff 28672, vocab 128256)
in llama.cpp's Q4_K_M mix (Q4_K; attn_v Q6_K or Q5_K and ffn_down Q6_K or Q4_K by llama.cpp's use_more_bits
rule for a 70B; token_embd Q4_K, output Q6_K). Blocks are random but valid (small finite fp16 scales),
written with gguf.GGUFWriter to /dev/shm (or the temp dir) with the full 128256-token list. No downloads.

Measured, side by side (each after a warm-up that compiles the kernels):
- h2d_pinned_gbps: a pinned host -> device copy of 1 GiB, best of 5 (CPU: a host memcpy stands in);
- decode_tok_s_streamed: every layer and the head streamed (resident_layers=0); bus_limit_tok_s =
  h2d / streamed_bytes_per_token (the layer and head tensor bytes, computed from the file written);
- decode_tok_s_resident: every layer and the head resident, decoded through the captured decode graphs
  (engine/graphs.py; the CPU has none; "graphs" says what was captured and replayed, or why they were
  turned off); decode_tok_s_resident_eager: the same, launched from Python;
- dense_bf16_decode_tok_s: the same layer count as torch bf16 F.linear on resident dense weights
  (up to DENSE_DISTINCT distinct layers, as many as half the free memory holds, used in turn: each is far
  larger than the GPU's L2, so this reads as many bytes as distinct weights would);
- prefill_tok_s_4k: a 4096-token prompt with every layer streamed (prefill_tok_s_4k_resident: resident);
- peak_device_bytes <= budget_bytes: a run on a simulated smaller card. A ballast tensor leaves
  budget_bytes = --budget-fraction of the file size free, and the engine sizes itself from the free
  memory as it does under Ollama (memory_budget unset: resident layers, KV, work buffers, activations,
  staging). Its peak is torch.cuda.max_memory_allocated during the run, from load to close, less what
  was allocated before (the ballast). CPU: no ballast, budget_bytes is the available RAM at load and
  the peak is the growth of the peak RSS;
- overhead_ms_per_layer: a decode step of a model with the same layer count and tiny dims (all resident,
  0.4 MB per layer, so bytes explain none of its time), divided by the layer count; compared with a
  bus-bound step of one of the big layers (its bytes / h2d); overhead_ms_per_layer_eager without the
  graphs. resident_unexplained_ms_per_layer is the other view: resident decode time minus resident bytes
  / measured device-memory bandwidth, per layer.
Human-readable lines come first; the last stdout line is one JSON object. A run that fails is reported
in "errors" (its numbers null, its traceback on stderr) and the exit status is 1. No GPU: exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

STARTED = time.monotonic()  # wall_s counts the imports below
ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("ollama_airllm") is None:  # a plain checkout (the device machine)
    sys.path.insert(0, str(ROOT / "runner"))

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from ollama_airllm.engine import Engine, EngineConfig, SamplingParams  # noqa: E402

PROG = "bench/gpu.py"
MAX_LAYERS = 80  # Llama-3-70B's own count
DENSE_DISTINCT = 8  # distinct dense layers in the bf16 baseline, used in turn
SAFETY = 1.5  # the layer-count estimate assumes every step takes this much longer than its bytes say
FIXED_S = 60.0  # set-up that does not scale with the layer count (imports, vocabulary, small runs)
WALL_TARGET_S = 360.0
QK_K = 256
BLOCK_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
BASE_BLOCKS = 1 << 14  # random blocks made per type; bigger tensors repeat them
EMBD_QTYPE, HEAD_QTYPE = "Q4_K", "Q6_K"
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")
GREEDY = {"temperature": 0.0, "ignore_eos": True}


@dataclass(frozen=True)
class Geometry:
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def matrices(self) -> dict[str, tuple[int, int]]:
        """(rows, cols) of each 2-D weight of one layer, numpy order."""
        q, kv, e, f = self.n_head * self.head_dim, self.n_head_kv * self.head_dim, self.n_embd, self.n_ff
        return {
            "attn_q": (q, e), "attn_k": (kv, e), "attn_v": (kv, e), "attn_output": (e, q),
            "ffn_gate": (f, e), "ffn_up": (f, e), "ffn_down": (e, f),
        }  # fmt: skip


LLAMA3_70B = Geometry(n_embd=8192, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=128256)
TINY = Geometry(n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=1024)
OVERHEAD = Geometry(n_embd=256, n_head=2, n_head_kv=1, n_ff=256, n_vocab=256)  # bytes negligible


@dataclass(frozen=True)
class Workload:
    decode_tokens: int
    prefill_tokens: int
    n_batch: int

    @property
    def n_ctx(self) -> int:
        return self.prefill_tokens + self.decode_tokens + 32


# --- the synthetic model ---------------------------------------------------------------------------------


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits(i_layer, n_layers) (llama-quant.cpp), C integer division."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def layer_qtypes(i: int, n: int) -> dict[str, str]:
    """llama.cpp's Q4_K_M choice per 2-D weight of layer i of n in a 70B (attn_v bumped to Q5_K)."""
    more = use_more_bits(i, n)
    types = dict.fromkeys(("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"), "Q4_K")
    return {**types, "attn_v": "Q6_K" if more else "Q5_K", "ffn_down": "Q6_K" if more else "Q4_K"}


def model_tensors(geom: Geometry, n_layers: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, type, numpy shape) of every tensor, in file order."""
    e = geom.n_embd
    out = [("token_embd.weight", EMBD_QTYPE, (geom.n_vocab, e))]
    for i in range(n_layers):
        types = layer_qtypes(i, n_layers)
        out.append((f"blk.{i}.attn_norm.weight", "F32", (e,)))
        out += [(f"blk.{i}.{k}.weight", types[k], rc) for k, rc in geom.matrices().items() if k[:4] == "attn"]
        out.append((f"blk.{i}.ffn_norm.weight", "F32", (e,)))
        out += [(f"blk.{i}.{k}.weight", types[k], rc) for k, rc in geom.matrices().items() if k[:3] == "ffn"]
    return [*out, ("output_norm.weight", "F32", (e,)), ("output.weight", HEAD_QTYPE, (geom.n_vocab, e))]


def tensor_bytes(qtype: str, shape: tuple[int, ...]) -> int:
    n = math.prod(shape)
    return 4 * n if qtype == "F32" else n // QK_K * BLOCK_BYTES[qtype]


def pass_bytes(geom: Geometry, n_layers: int) -> int:
    """Bytes of one forward pass with everything streamed: every layer and the head (not token_embd)."""
    return sum(
        tensor_bytes(q, s) for name, q, s in model_tensors(geom, n_layers) if name != "token_embd.weight"
    )


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(-1, 2)


def random_blocks(rng: np.random.Generator, qtype: str, n_blocks: int) -> np.ndarray:
    """uint8 [n_blocks, block_bytes] of valid blocks: random bits, fp16 scales giving weights of ~0.03.

    BASE_BLOCKS random blocks are repeated to the size asked, so gigabytes take seconds."""
    base = rng.integers(0, 256, (min(n_blocks, BASE_BLOCKS), BLOCK_BYTES[qtype]), dtype=np.uint8)
    d = rng.uniform(0.5, 1.5, base.shape[0])
    if qtype == "Q6_K":  # ql[128] qh[64] scales[16] (int8) d (fp16): w = d * scale * (q - 32)
        base[:, 208:210] = _f16(d * 0.05 / (64 * 32))
    else:  # Q4_K / Q5_K: d, dmin (fp16) scales[12] ...: w = d * sc * q - dmin * m
        qmax = 15 if qtype == "Q4_K" else 31
        dd = d * 0.06 / (63 * qmax)
        base[:, 0:2] = _f16(dd)
        base[:, 2:4] = _f16(dd * qmax / 2)
    return np.resize(base, (n_blocks, base.shape[1]))


class BlockPool:
    """One flat pool of random blocks per type, sized for its biggest tensor; tensors are views of it."""

    def __init__(self, rng: np.random.Generator, tensors: list[tuple[str, str, tuple[int, ...]]]) -> None:
        need: dict[str, int] = {}
        for _name, q, shape in tensors:
            if q != "F32":
                need[q] = max(need.get(q, 0), math.prod(shape) // QK_K)
        self._flat = {q: random_blocks(rng, q, n).reshape(-1) for q, n in need.items()}

    def tensor(self, qtype: str, shape: tuple[int, ...]) -> np.ndarray:
        return self._flat[qtype][: tensor_bytes(qtype, shape)].reshape(shape[0], -1)


def _vocabulary(n_vocab: int) -> tuple[list[str], list[int]]:
    """Short distinct token strings, the last three Llama 3's control tokens."""
    tokens = [f"t{i}" for i in range(n_vocab - len(SPECIALS))] + list(SPECIALS)
    return tokens, [1] * (n_vocab - len(SPECIALS)) + [3] * len(SPECIALS)


def _metadata(w: gguf.GGUFWriter, geom: Geometry, n_layers: int) -> None:
    w.add_name(f"synthetic-llama-{geom.n_embd}x{n_layers}-Q4_K_M")
    w.add_context_length(8192)
    w.add_embedding_length(geom.n_embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(geom.n_ff)
    w.add_head_count(geom.n_head)
    w.add_head_count_kv(geom.n_head_kv)
    w.add_key_length(geom.head_dim)
    w.add_value_length(geom.head_dim)
    w.add_rope_dimension_count(geom.head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(geom.n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, types = _vocabulary(geom.n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(geom.n_vocab - 3)
    w.add_eos_token_id(geom.n_vocab - 2)
    w.add_eot_token_id(geom.n_vocab - 1)
    w.add_add_bos_token(True)


def write_model(path: Path, geom: Geometry, n_layers: int, seed: int = 0) -> int:
    """Write the synthetic GGUF to `path` (a temp file, then renamed); its size in bytes."""
    tensors = model_tensors(geom, n_layers)
    pool = BlockPool(np.random.default_rng(seed), tensors)
    norm = np.ones(geom.n_embd, dtype=np.float32)
    tmp = path.with_name(path.name + ".tmp")
    try:
        w = gguf.GGUFWriter(str(tmp), "llama")
        _metadata(w, geom, n_layers)
        for name, q, shape in tensors:
            if q == "F32":
                w.add_tensor(name, norm)
            else:
                w.add_tensor(name, pool.tensor(q, shape), raw_dtype=gguf.GGMLQuantizationType[q])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


# --- the machine ------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_copy_s(dst: torch.Tensor, src: torch.Tensor, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        _sync(dst.device)
        t = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        _sync(dst.device)
        best = min(best, time.perf_counter() - t)
    return best


def h2d_bandwidth(device: torch.device, nbytes: int, repeats: int = 5) -> float:
    """Bytes/s of a pinned host -> device copy, best of `repeats` (CPU: a host memcpy stands in)."""
    src = torch.ones(nbytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return nbytes / _best_copy_s(dst, src, repeats)


def memory_bandwidth(device: torch.device, nbytes: int, repeats: int = 5) -> float:
    """Bytes/s read + written by a device -> device copy, best of `repeats`."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / _best_copy_s(dst, src, repeats)


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_start(device: torch.device) -> int:
    """Reset the peak-memory counter; the bytes in use now (subtracted from the peak later)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with contextlib.suppress(OSError):  # without it, the peak may predate the run
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _status_bytes("VmRSS")


def peak_since(device: torch.device, base: int) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) - base
    return _status_bytes("VmHWM") - base


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def host_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def pick_dir(need: int) -> Path:
    """/dev/shm when the biggest model fits there, else whichever of it and the temp dir has more room."""
    shm, tmp = Path("/dev/shm"), Path(tempfile.gettempdir())
    if not shm.is_dir():
        return tmp
    free = {p: _free_bytes(p) for p in (shm, tmp)}
    return shm if free[shm] >= need else max(free, key=free.get)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def write_rate(directory: Path, nbytes: int = 256 << 20) -> float:
    """Bytes/s of writing a file to `directory` (the page cache, as the model will be written)."""
    probe = directory / f".oar-gpu-bench-probe-{os.getpid()}"
    data = np.ones(nbytes, dtype=np.uint8)
    try:
        t = time.perf_counter()
        data.tofile(probe)
        return nbytes / (time.perf_counter() - t)
    finally:
        probe.unlink(missing_ok=True)


def streamed_passes(work: Workload, budget_fraction: float) -> float:
    """Whole-model streaming passes the runs make: the streamed run (warm-up 2, decode 1 + n, prefill 1)
    and the budget run's streamed share (warm-up 2, decode 1 + n)."""
    return 4 + work.decode_tokens + (3 + work.decode_tokens) * (1 - budget_fraction)


def choose_layers(
    geom: Geometry,
    h2d: float,
    write: float,
    seconds: float,
    file_space: int,
    device_bytes: int,
    passes: float,
) -> tuple[int, str]:
    """The most layers (<= MAX_LAYERS) whose run fits `seconds`, the file space (and host memory) and the
    device; and the name of the limit that decided. Each layer costs its write, `passes` streamed copies
    and three loads (two resident runs and the budget run; pageable copies, at half the pinned rate),
    x SAFETY."""
    per_layer = (pass_bytes(geom, MAX_LAYERS) - pass_bytes(geom, 0)) / MAX_LAYERS
    fixed = file_size(geom, 0)
    cost = SAFETY * (1 / write + passes / h2d + 3 / (h2d / 2))
    limits = {
        "time": (seconds - cost * fixed) / (cost * per_layer),
        "file space": (0.9 * file_space - fixed) / per_layer,
        "device memory": (0.6 * device_bytes - fixed) / per_layer,
        "layers": MAX_LAYERS,
    }
    limit = min(limits, key=limits.get)
    return max(1, int(limits[limit])), limit


# --- the runs -------------------------------------------------------------------------------------------


def _prompt(n: int, n_vocab: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, n_vocab - len(SPECIALS), n).tolist()


def _rate(n: int, seconds: float) -> float | None:
    return n / seconds if n > 0 and seconds > 0 else None


def _measure(eng: Engine, work: Workload, prefill: bool) -> dict:
    """Greedy decode tok/s (and prefill tok/s) after a warm-up that runs the prefill and decode kernels."""
    n_vocab = eng.info.n_vocab
    eng.generate(0, _prompt(16, n_vocab, 1), SamplingParams(n_predict=2, **GREEDY))
    eng.clear_slot(0)
    res = eng.generate(0, _prompt(2, n_vocab, 2), SamplingParams(n_predict=work.decode_tokens + 1, **GREEDY))
    out = {"decode_tok_s": _rate(len(res.tokens) - 1, res.predicted_ms / 1e3)}
    if prefill:
        eng.clear_slot(0)
        res = eng.generate(0, _prompt(work.prefill_tokens, n_vocab, 3), SamplingParams(n_predict=1, **GREEDY))
        out["prefill_tok_s"] = _rate(work.prefill_tokens, res.prompt_ms / 1e3)
    return out


def engine_run(path: Path, device: torch.device, work: Workload, prefill: bool = False, **config) -> dict:
    """Load `path` with `config`, measure, close; with the engine's accounting and the run's peak."""
    base = peak_start(device)
    t = time.perf_counter()
    eng = Engine.load(
        path, EngineConfig(device=device.type, n_ctx=work.n_ctx, n_batch=work.n_batch, **config)
    )
    try:
        load_s = time.perf_counter() - t
        out = _measure(eng, work, prefill)
        _sync(device)
        out["peak_device_bytes"] = peak_since(device, base)
    finally:
        eng.close()
    i = eng.info
    out.update(
        load_s=load_s, device_name=i.device_name, n_resident_layers=i.n_resident_layers,
        head_resident=i.head_resident, resident_bytes=i.resident_bytes, kv_bytes=i.kv_bytes,
        compute_bytes=i.compute_bytes, staging_bytes=i.staging_bytes,
        accounted_bytes=i.resident_bytes + i.kv_bytes + i.compute_bytes + i.staging_bytes,
        streamed_bytes_per_pass=i.streamed_bytes_per_pass,
        graphs=None if i.graphs is None else i.graphs.as_json(),
    )  # fmt: skip
    del eng
    _release(device)
    return out


def budget_run(path: Path, device: torch.device, work: Workload, leave: int) -> dict:
    """engine_run on a simulated card with `leave` bytes free (CUDA: a ballast tensor holds the rest);
    the engine picks its resident units from the free memory itself. budget_bytes: the free memory."""
    _release(device)
    ballast = None
    if device.type == "cuda":
        ballast = torch.empty(max(torch.cuda.mem_get_info(device)[0] - leave, 0), dtype=torch.uint8,
                              device=device)  # fmt: skip
    try:
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else host_available()
        out = engine_run(path, device, work)
    finally:
        del ballast
        _release(device)
    return out | {"budget_bytes": free}


def _rms(x: torch.Tensor) -> torch.Tensor:
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)


def _dense_attention(w: dict, h: torch.Tensor, cache: torch.Tensor, i: int, pos: int, g: Geometry):
    nh, nkv, hd = g.n_head, g.n_head_kv, g.head_dim
    q = F.linear(h, w["attn_q"]).view(1, nh, hd)
    cache[0, i, :, pos] = F.linear(h, w["attn_k"]).view(nkv, hd)
    cache[1, i, :, pos] = F.linear(h, w["attn_v"]).view(nkv, hd)
    keys, values = cache[0, i, :, : pos + 1], cache[1, i, :, : pos + 1]
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys[None], values[None], enable_gqa=nkv != nh
    )
    return F.linear(o[0].transpose(0, 1).reshape(1, nh * hd), w["attn_output"])


def _dense_step(x, layers: list[dict], head, cache, n_layers: int, pos: int, g: Geometry) -> int:
    """One decode step through n_layers dense layers and the head; the greedy token (a host sync)."""
    for i in range(n_layers):
        w = layers[i % len(layers)]
        x = x + _dense_attention(w, _rms(x), cache, i, pos, g)
        h = _rms(x)
        x = x + F.linear(F.silu(F.linear(h, w["ffn_gate"])) * F.linear(h, w["ffn_up"]), w["ffn_down"])
    return int(F.linear(_rms(x), head).float().argmax())


def _dense_distinct(geom: Geometry, n_layers: int, device: torch.device) -> int:
    """Distinct dense layers to make: up to DENSE_DISTINCT, in at most half the free device memory."""
    if device.type != "cuda":
        return min(n_layers, DENSE_DISTINCT)
    layer = 2 * sum(r * c for r, c in geom.matrices().values())
    free = torch.cuda.mem_get_info(device)[0] - 2 * geom.n_vocab * geom.n_embd
    return max(1, min(n_layers, DENSE_DISTINCT, free // 2 // layer))


def dense_decode(geom: Geometry, n_layers: int, device: torch.device, n_tokens: int) -> dict:
    """Decode tok/s of the same layers as torch bf16 F.linear on resident dense weights (the baseline)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def mat(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.bfloat16).mul_(0.02)

    distinct = _dense_distinct(geom, n_layers, device)
    layers = [{k: mat(*rc) for k, rc in geom.matrices().items()} for _ in range(distinct)]
    head = mat(geom.n_vocab, geom.n_embd)
    cache = torch.zeros(2, n_layers, geom.n_head_kv, n_tokens + 4, geom.head_dim, device=device,
                        dtype=torch.bfloat16)  # fmt: skip
    x = mat(1, geom.n_embd)
    with torch.inference_mode():
        for pos in range(2):  # warm-up
            _dense_step(x, layers, head, cache, n_layers, pos, geom)
        _sync(device)
        t = time.perf_counter()
        for pos in range(2, 2 + n_tokens):
            _dense_step(x, layers, head, cache, n_layers, pos, geom)
        seconds = time.perf_counter() - t
    del layers, head, cache
    _release(device)
    return {"decode_tok_s": _rate(n_tokens, seconds), "distinct_layers": distinct}


# --- the report -------------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def summarize(m: dict, geom: Geometry, n_layers: int, wall_s: float) -> dict:
    """The result object from the measurements `m` (runs may be missing: their numbers are null)."""
    runs = m["runs"]
    streamed, resident = runs.get("streamed", {}), runs.get("resident", {})
    budget_run, overhead = runs.get("budget", {}), runs.get("overhead", {})
    h2d, hbm = m["h2d"], m["hbm"]
    per_token = pass_bytes(geom, n_layers)
    bus_limit = h2d / per_token
    ratio = _ratio(streamed.get("decode_tok_s"), bus_limit)
    res_rate, dense = resident.get("decode_tok_s"), runs.get("dense_bf16", {}).get("decode_tok_s")
    ovh = _ratio(_ratio(1e3, overhead.get("decode_tok_s")), n_layers)
    ovh_eager = _ratio(_ratio(1e3, runs.get("overhead_eager", {}).get("decode_tok_s")), n_layers)
    eager_rate = runs.get("resident_eager", {}).get("decode_tok_s")
    bus_ms_per_layer = 1e3 * (per_token - pass_bytes(geom, 0)) / n_layers / h2d
    unexplained = None
    if res_rate and hbm:
        unexplained = (1e3 / res_rate - 1e3 * resident["resident_bytes"] / hbm) / n_layers
    peak, budget = budget_run.get("peak_device_bytes"), budget_run.get("budget_bytes")
    share = _ratio(ovh, bus_ms_per_layer)
    return {
        "device": m["device"],
        "device_name": m["device_name"],
        "geometry": asdict(geom) | {"head_dim": geom.head_dim},
        "n_layers": n_layers,
        "layers_limited_by": m["limited_by"],
        "file_bytes": m["file_bytes"],
        "h2d_pinned_gbps": h2d / 1e9,
        "hbm_gbps": hbm / 1e9 if hbm else None,
        "streamed_bytes_per_token": per_token,
        "decode_tok_s_streamed": streamed.get("decode_tok_s"),
        "bus_limit_tok_s": bus_limit,
        "ratio_to_bus_limit": ratio,
        "decode_tok_s_resident": res_rate,
        "decode_tok_s_resident_eager": eager_rate,
        "graphs_speedup": _ratio(res_rate, eager_rate),
        "graphs": resident.get("graphs"),  # runs, captures, replays; why they were turned off, if they were
        "dense_bf16_decode_tok_s": dense,
        "resident_vs_dense_bf16": _ratio(res_rate, dense),
        "prefill_tokens": m["work"].prefill_tokens,
        "prefill_tok_s_4k": streamed.get("prefill_tok_s"),
        "prefill_tok_s_4k_resident": resident.get("prefill_tok_s"),
        "decode_tok_s_budget": budget_run.get("decode_tok_s"),
        "peak_device_bytes": peak,
        "budget_bytes": budget,
        "overhead_ms_per_layer": ovh,
        "overhead_ms_per_layer_eager": ovh_eager,
        "bus_ms_per_layer": bus_ms_per_layer,
        "overhead_share_of_bus_step": share,
        "resident_unexplained_ms_per_layer": unexplained,
        "targets": {
            "ratio_to_bus_limit_ge_0_8": _at_least(ratio, 0.8),
            "resident_ge_1_5x_dense_bf16": _at_least(_ratio(res_rate, dense), 1.5),
            "peak_le_budget": None if peak is None or budget is None else peak <= budget,
            "overhead_le_10pct_of_bus_step": None if share is None else share <= 0.10,
            "n_layers": n_layers,
            "wall_s": wall_s,
            "wall_le_360_s": wall_s <= WALL_TARGET_S,
        },
        "wall_s": wall_s,
        "versions": {"torch": torch.__version__, "gguf": _version("gguf"), "triton": _version("triton")},
        "runs": runs,
        "errors": m["errors"],
    }


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def print_summary(r: dict) -> None:
    t = r["targets"]
    gib = 2**30
    print(
        f"{r['device_name']}: {r['n_layers']} layers (limited by {r['layers_limited_by']}), "
        f"file {r['file_bytes'] / gib:.2f} GiB"
    )
    print(
        f"host->device (pinned) {r['h2d_pinned_gbps']:.1f} GB/s, "
        f"device memory {_fmt(r['hbm_gbps'], '.0f')} GB/s"
    )
    print(
        f"streamed decode {_fmt(r['decode_tok_s_streamed'])} tok/s, "
        f"bus limit {r['bus_limit_tok_s']:.2f} tok/s "
        f"({r['streamed_bytes_per_token'] / gib:.2f} GiB/token): ratio {_fmt(r['ratio_to_bus_limit'])} "
        f"(target >= 0.8: {t['ratio_to_bus_limit_ge_0_8']})"
    )
    print(
        f"resident decode {_fmt(r['decode_tok_s_resident'])} tok/s "
        f"({_fmt(r['decode_tok_s_resident_eager'])} without graphs), "
        f"dense bf16 {_fmt(r['dense_bf16_decode_tok_s'])} tok/s: {_fmt(r['resident_vs_dense_bf16'])}x "
        f"(target >= 1.5: {t['resident_ge_1_5x_dense_bf16']})"
    )
    print(
        f"prefill of {r['prefill_tokens']} tokens: {_fmt(r['prefill_tok_s_4k'], '.0f')} tok/s streamed, "
        f"{_fmt(r['prefill_tok_s_4k_resident'], '.0f')} tok/s resident"
    )
    peak = r["peak_device_bytes"]
    print(
        f"budget run: decode {_fmt(r['decode_tok_s_budget'])} tok/s, peak "
        f"{_fmt(None if peak is None else peak / gib)} GiB of "
        f"{_fmt(None if r['budget_bytes'] is None else r['budget_bytes'] / gib)} GiB free "
        f"(peak <= budget: {t['peak_le_budget']})"
    )
    print(
        f"overhead {_fmt(r['overhead_ms_per_layer'], '.3f')} ms/layer "
        f"({_fmt(r['overhead_ms_per_layer_eager'], '.3f')} without graphs) = "
        f"{_fmt(r['overhead_share_of_bus_step'], '.1%')} of a bus-bound layer step "
        f"({r['bus_ms_per_layer']:.2f} ms; target <= 10%: {t['overhead_le_10pct_of_bus_step']}); resident "
        f"time unexplained by bytes {_fmt(r['resident_unexplained_ms_per_layer'], '.3f')} ms/layer"
    )
    print(f"wall {r['wall_s']:.0f} s (target <= {WALL_TARGET_S:.0f} s: {t['wall_le_360_s']})")
    for run, problem in r["errors"].items():
        print(f"FAILED {run}: {problem}")


def _finite(x):
    """JSON has no inf/nan: null instead, recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


# --- main -------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{PROG}: {message} (see --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog=PROG, description="The engine on a GPU: a synthetic 70B-geometry Q4_K_M model.")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (CUDA or HIP); cpu runs only with --tiny")  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="tiny dims, 3 layers: proves the logic")
    p.add_argument("--layers", type=int, help="layer count (default: as many as --time-budget allows)")
    p.add_argument("--time-budget", type=float, default=300.0, help="seconds the whole run may take")
    p.add_argument("--decode-tokens", type=int, help="tokens timed per decode run (default 6; tiny 4)")
    p.add_argument("--prefill-tokens", type=int, help="prefill prompt (default 4096; tiny 256)")
    p.add_argument("--n-batch", type=int, default=512, help="the engine's n_batch (Ollama passes 512)")
    p.add_argument("--budget-fraction", type=float, default=0.5,
                   help="the budget run's free device memory, as a fraction of the file size")  # fmt: skip
    p.add_argument("--dir", type=Path, help="where the model files go (default: /dev/shm or the temp dir)")
    p.add_argument("--json-out", type=Path, help="also write the JSON object to this file")
    a = p.parse_args(argv)
    for name in ("layers", "decode_tokens", "prefill_tokens", "n_batch"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.dir is not None and not a.dir.is_dir():
        p.error(f"--dir {a.dir} is not a directory")
    if a.json_out is not None and not a.json_out.parent.is_dir():
        p.error(f"--json-out {a.json_out}: its directory does not exist")
    if not 0 < a.budget_fraction <= 1:
        p.error(f"--budget-fraction must be within (0, 1], got {a.budget_fraction}")
    return a


def _device(a: argparse.Namespace) -> torch.device:
    """The device to measure; exits 2 with one line when there is none (or cpu without --tiny)."""
    if a.device == "cpu":
        if not a.tiny:
            msg = "--device cpu runs only with --tiny (the CPU proves the logic, it is no benchmark)"
            print(f"{PROG}: {msg}", file=sys.stderr)
            sys.exit(2)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        print(f"{PROG}: no GPU found (torch.cuda.is_available() is false: no CUDA or HIP device); "
              "--device cpu --tiny runs the same code on the CPU", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    return torch.device("cuda", torch.cuda.current_device())


class Attempts:
    """Runs each measurement; a failure (or no time left) is recorded in `errors` and yields None."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic() after which the remaining runs are skipped
        self.errors: dict[str, str] = {}

    def __call__(self, name: str, fn: Callable, *args, **kw):
        if time.monotonic() > self.deadline:
            self.errors[name] = "skipped: the time budget is spent"
            return None
        print(f"-- {name} ...", flush=True)
        try:
            return fn(*args, **kw)
        except Exception as e:
            traceback.print_exc()  # unexpected: the next session needs the whole story
            self.errors[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
        gc.collect()  # the failed run's tensors, before the next run starts
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def _plan(a: argparse.Namespace) -> tuple[Geometry, Workload, int, str]:
    """Geometry, workload and the layer count when fixed (0: chosen later from the measured rates)."""
    geom = TINY if a.tiny else LLAMA3_70B
    work = Workload(
        decode_tokens=a.decode_tokens or (4 if a.tiny else 6),
        prefill_tokens=a.prefill_tokens or (256 if a.tiny else 4096),
        n_batch=a.n_batch,
    )
    if a.layers or a.tiny:
        return geom, work, a.layers or 3, "--layers" if a.layers else "--tiny"
    return geom, work, 0, ""


def file_size(geom: Geometry, n_layers: int) -> int:
    """The tensor bytes of the model file (its header adds a few MB)."""
    return sum(tensor_bytes(q, s) for _n, q, s in model_tensors(geom, n_layers))


def _layer_count(a, geom: Geometry, work: Workload, h2d: float, device, workdir: Path) -> tuple[int, str]:
    dev_total = torch.cuda.get_device_properties(device).total_memory
    space = min(_free_bytes(workdir), int(0.7 * host_available()))
    seconds = a.time_budget - FIXED_S - (time.monotonic() - STARTED)
    passes = streamed_passes(work, a.budget_fraction)
    return choose_layers(geom, h2d, write_rate(workdir), seconds, space, dev_total, passes)


def measure(a: argparse.Namespace, device: torch.device, workdir: Path, plan) -> tuple[dict, int]:
    """Every measurement; (the result object, exit status: 1 when a run failed)."""
    geom, work, n_layers, limited_by = plan
    size = (16 << 20) if a.tiny else (1 << 30)
    h2d = h2d_bandwidth(device, size)
    hbm = memory_bandwidth(device, size) if device.type == "cuda" else None
    print(f"host->device {h2d / 1e9:.1f} GB/s" + (f", device memory {hbm / 1e9:.0f} GB/s" if hbm else ""))
    if not n_layers:
        n_layers, limited_by = _layer_count(a, geom, work, h2d, device, workdir)
    print(f"writing {n_layers} layers of {geom} (Q4_K_M mix) to {workdir} ...", flush=True)
    t = time.perf_counter()
    path, small = workdir / "model.gguf", workdir / "overhead.gguf"
    file_bytes = write_model(path, geom, n_layers)
    write_model(small, OVERHEAD, n_layers)
    print(f"wrote {file_bytes / 2**30:.2f} GiB in {time.perf_counter() - t:.1f} s", flush=True)
    attempt = Attempts(STARTED + a.time_budget + 30)
    runs = {
        "streamed": attempt("streamed", engine_run, path, device, work, True, resident_layers=0),
        "resident": attempt("resident", engine_run, path, device, work, True, resident_layers=n_layers),
    }
    runs["resident_eager"] = attempt(
        "resident_eager", engine_run, path, device, work, resident_layers=n_layers, graphs=False
    )
    runs["dense_bf16"] = attempt("dense_bf16", dense_decode, geom, n_layers, device, work.decode_tokens)
    runs["overhead"] = attempt("overhead", engine_run, small, device, work, resident_layers=n_layers)
    runs["overhead_eager"] = attempt(
        "overhead_eager", engine_run, small, device, work, resident_layers=n_layers, graphs=False
    )
    runs["budget"] = attempt("budget", budget_run, path, device, work, int(a.budget_fraction * file_bytes))
    m = {
        "device": device.type, "device_name": _device_name(device), "limited_by": limited_by,
        "file_bytes": file_bytes, "h2d": h2d, "hbm": hbm, "work": work,
        "runs": {k: v for k, v in runs.items() if v is not None},
        "errors": attempt.errors,
    }  # fmt: skip
    return summarize(m, geom, n_layers, time.monotonic() - STARTED), 1 if attempt.errors else 0


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _write_json(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    os.environ.pop("OLLAMA_AIRLLM_DEVICE", None)  # measure the device asked for
    device = _device(a)
    plan = _plan(a)
    base = a.dir or pick_dir(int(1.1 * file_size(plan[0], plan[2] or MAX_LAYERS)))
    with tempfile.TemporaryDirectory(prefix="oar-gpu-bench-", dir=base) as d:
        result, status = measure(a, device, Path(d), plan)
    print_summary(result)
    text = json.dumps(_finite(result))
    if a.json_out:
        _write_json(a.json_out, text)
    sys.stderr.flush()
    print(text, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
