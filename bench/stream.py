"""Layer streaming, side by side on one model: transformers resident, airllm 4.0.0 stock, airllm with its
per-layer clean-up removed, this engine with every layer streamed, and with half the layers resident.

    python bench/stream.py                      # makes a random 16-layer Llama (~181M params, F32), CPU
    python bench/stream.py --device cuda --qtype Q4_K --layers 32 --hidden 2048 --intermediate 5632

Every setup is timed alike: one warm-up run, then the best of --repeats timed runs (to damp noise from
other jobs). Stock airllm is slow, so it generates only --airllm-tokens; the ratio to it compares this
engine timed on that same token count. Prints tok/s, bytes streamed per token and the ratios; the last
stdout line is one JSON object.
On CUDA it also measures pinned host->device bandwidth and reports decode / (0.8 x GB/s / GB per token).

    python bench/stream.py --moe                # a random Qwen3-MoE, every layer streamed

--moe: bytes read per decoded token with only the routed experts fetched, against the bytes of the dense
tensors plus the top-k experts of every layer (target <= 1.1x), and tok/s against fetching every expert of
each layer (airllm's way). Needs $LLAMA_CONVERT_PY (tests/setup.d/31-llama-convert.sh).
Not a test: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from ollama_airllm.devtools import tinymodel, tinymoe
from ollama_airllm.engine import Engine, EngineConfig, SamplingParams
from ollama_airllm.engine.experts import ExpertStore, expert_bytes, moe_layers
from safetensors.torch import load_file

PROMPT = [5, 100, 200, 300, 17, 42, 7, 99]


def _line(label: str, rate: float, nbytes: int | None = None) -> None:
    per_token = f"{nbytes / 2**20:8.1f} MiB/token" if nbytes else ""
    print(f"{label:<30} {rate:8.2f} tok/s  {per_token}", flush=True)


def _rate(n_tokens: int, seconds: float) -> float:
    return n_tokens / seconds if seconds > 0 else float("inf")


def bench_transformers(hf_dir: Path, device: str, n: int, repeats: int) -> tuple[float, list[int]]:
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device).eval()
    ids = torch.tensor([PROMPT], device=device)
    kw = dict(do_sample=False, pad_token_id=2)
    best = 0.0
    with torch.inference_mode():
        m.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            out = m.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
            _sync(device)
            best = max(best, _rate(n, time.perf_counter() - t))
    del m
    return best, out[0, len(PROMPT) :].tolist()


def bench_airllm_stock(
    hf_dir: Path, split_dir: Path, device: str, n: int, repeats: int
) -> tuple[float, list[int], int]:
    """airllm 4.0.0 as shipped: its own generate(), clean_memory() after every streamed module."""
    import contextlib
    import io

    import airllm
    import airllm.airllm_base
    import airllm.utils

    airllm.airllm_base.clean_memory = airllm.utils.clean_memory  # undo any patch: stock behaviour
    with contextlib.redirect_stdout(io.StringIO()):
        m = airllm.AutoModel.from_pretrained(
            str(hf_dir), device=device, dtype=torch.float32, layer_shards_saving_path=str(split_dir)
        )
    ids = torch.tensor([PROMPT], device=device)
    kw = dict(do_sample=False, use_cache=True, pad_token_id=2)
    best = 0.0
    with torch.inference_mode():
        m.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)  # warm-up, as for every setup
        for _ in range(repeats):
            t = time.perf_counter()
            out = m.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
            _sync(device)
            best = max(best, _rate(n, time.perf_counter() - t))
    split_bytes = sum(f.stat().st_size for f in Path(m.checkpoint_path).glob("*.safetensors"))
    if getattr(m, "_executor", None) is not None:
        m._executor.shutdown(wait=True)
    del m
    return best, out[0, len(PROMPT) :].tolist(), split_bytes


def engine_rate(eng: Engine, n: int, repeats: int) -> tuple[float, list[int]]:
    """Best tok/s of `repeats` greedy runs of n tokens from an empty cache, after one warm-up run."""
    greedy = dict(temperature=0.0, ignore_eos=True)
    eng.generate(0, PROMPT, SamplingParams(n_predict=2, **greedy))  # warm-up (page cache, allocator)
    best = 0.0
    for _ in range(repeats):
        eng.clear_slot(0)
        t = time.perf_counter()
        res = eng.generate(0, PROMPT, SamplingParams(n_predict=n, **greedy))
        _sync(eng.info.device)
        best = max(best, _rate(n, time.perf_counter() - t))
    return best, res.tokens


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def h2d_gbps(device: str, nbytes: int = 1 << 30) -> float:
    """Pinned host -> device copy bandwidth (GB/s), best of 5."""
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def _bytes_read(eng: Engine) -> int:
    """Bytes read from the file so far: streamed units plus streamed experts."""
    return eng.backend.store.streamed_bytes + eng.backend.transformer.experts.stats.bytes_read


def decode_bytes_per_token(eng: Engine, n: int) -> float:
    """Bytes read per decoded token: a run of n tokens less a run of 1 (the prefill), over n - 1."""
    greedy = dict(temperature=0.0, ignore_eos=True)
    counts = []
    for k in (1, n):
        eng.clear_slot(0)
        before = _bytes_read(eng)
        eng.generate(0, PROMPT, SamplingParams(n_predict=k, **greedy))
        counts.append(_bytes_read(eng) - before)
    return (counts[1] - counts[0]) / (n - 1)


def bench_moe(a) -> dict:
    """--moe: routed-expert streaming against the dense-plus-top-k bound and against fetching all experts."""
    work = Path(a.workdir or tempfile.mkdtemp(prefix="oar-bench-moe-"))
    try:
        shape = dict(hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, experts=a.experts, used=a.used,
                     expert_ff=a.expert_ff)  # fmt: skip
        print(f"making a random Qwen3-MoE: {a.layers} layers, {shape}", flush=True)
        _, files = tinymoe.build(work, "qwen3moe", ("F32",), n_layers=a.layers, **shape)
        path = files["F32"]
        eng = Engine.load(path, EngineConfig(resident_layers=0, device=a.device, n_ctx=512, dtype="float32"))
        try:
            return _moe_runs(a, eng, path)
        finally:
            eng.close()
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


def _moe_runs(a, eng: Engine, path: Path) -> dict:
    model = eng.backend.model
    dense = sum(u.raw_bytes for u in eng.backend.store.units)
    top_k = sum(expert_bytes(model, i) for i in moe_layers(model)) * model.spec.moe.n_used
    r: dict = {"moe": True, "device": a.device, "file_size": path.stat().st_size, "tokens": a.tokens,
               "dense_bytes_per_token": dense, "top_k_expert_bytes_per_token": top_k}  # fmt: skip
    r["routed_bytes_per_token"] = decode_bytes_per_token(eng, a.tokens)
    r["routed_vs_dense_plus_top_k"] = r["routed_bytes_per_token"] / (dense + top_k)
    r["routed_tok_s"], routed_tokens = engine_rate(eng, a.tokens, a.repeats)
    eng.backend.transformer.experts = ExpertStore(eng.backend.store, set(), fetch_all=True)
    r["all_experts_bytes_per_token"] = decode_bytes_per_token(eng, a.tokens)
    r["all_experts_tok_s"], all_tokens = engine_rate(eng, a.tokens, a.repeats)
    r["tokens_match"] = routed_tokens == all_tokens
    r["routed_vs_all_experts"] = r["routed_tok_s"] / r["all_experts_tok_s"]
    mib = 2**20
    print(f"dense tensors {dense / mib:.2f} MiB + top-{model.spec.moe.n_used} experts {top_k / mib:.2f} MiB "
          f"per token; routed streaming read {r['routed_bytes_per_token'] / mib:.2f} MiB per token = "
          f"{r['routed_vs_dense_plus_top_k']:.3f}x (target <= 1.1)")  # fmt: skip
    _line("engine, routed experts", r["routed_tok_s"], int(r["routed_bytes_per_token"]))
    _line("engine, all experts (airllm)", r["all_experts_tok_s"], int(r["all_experts_bytes_per_token"]))
    print(f"ratio: routed/all-experts {r['routed_vs_all_experts']:.2f}x; same tokens: {r['tokens_match']}")
    return r


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=16, help="new tokens per run")
    p.add_argument("--airllm-tokens", type=int, default=3, help="new tokens for stock airllm (it is slow)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setup after a warm-up (best kept)")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2304)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=16)
    p.add_argument("--qtype", default="F32", choices=tinymodel.QTYPES, help="GGUF type for this engine")
    p.add_argument("--workdir", help="keep the model here (default: a temporary directory)")
    p.add_argument("--skip-airllm-stock", action="store_true")
    p.add_argument("--moe", action="store_true", help="benchmark expert-aware streaming instead (see above)")
    p.add_argument("--experts", type=int, default=8, help="--moe: experts per layer")
    p.add_argument("--used", type=int, default=2, help="--moe: experts per token")
    p.add_argument("--expert-ff", type=int, default=512, help="--moe: one expert's FFN width")
    return p


def main() -> None:
    p = _parser()
    a = p.parse_args()
    if a.moe:
        if not 1 <= a.used <= a.experts:
            p.error(f"--used must be from 1 to --experts ({a.experts}), got {a.used}")
        if a.tokens < 2:
            p.error(f"--tokens must be at least 2 with --moe (decode bytes need two runs), got {a.tokens}")
        if not os.environ.get("LLAMA_CONVERT_PY"):
            p.error("--moe needs LLAMA_CONVERT_PY (llama.cpp's convert_hf_to_gguf.py; see tests/setup.d)")
        print(json.dumps(bench_moe(a)))
        return

    bench_dense(a)


def bench_dense(a: argparse.Namespace) -> None:
    """A dense Llama: transformers, this engine streamed and half resident, airllm; ratios and a JSON line."""
    work = Path(a.workdir or tempfile.mkdtemp(prefix="oar-bench-"))
    try:
        hf_dir, gguf_path, n_params = _make_model(a, work)
        r: dict = {
            "device": a.device,
            "n_params": n_params,
            "qtype": a.qtype,
            "tokens": a.tokens,
            "airllm_tokens": a.airllm_tokens,
            "repeats": a.repeats,
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }

        r["resident_tok_s"], ref_tokens = bench_transformers(hf_dir, a.device, a.tokens, a.repeats)
        _line("transformers resident", r["resident_tok_s"])

        dev_cfg = dict(device=a.device, n_ctx=512, dtype="float32")
        runs = {
            "stream": (gguf_path, EngineConfig(resident_layers=0, **dev_cfg)),
            "stream_half_resident": (gguf_path, EngineConfig(resident_fraction=0.5, **dev_cfg)),
            "airllm_no_cleanup": (hf_dir, EngineConfig(hf_split_dir=str(work / "airllm-split"), **dev_cfg)),
        }
        labels = {
            "stream": "engine, all streamed",
            "stream_half_resident": "engine, 50% resident",
            "airllm_no_cleanup": "airllm, clean-up removed",
        }
        for key, (path, cfg) in runs.items():
            eng = Engine.load(path, cfg)
            rate, toks = engine_rate(eng, a.tokens, a.repeats)
            if key == "stream" and not a.skip_airllm_stock:  # the same token count as stock airllm
                r["stream_short_tok_s"], _ = engine_rate(eng, a.airllm_tokens, a.repeats)
            r[f"{key}_tok_s"] = rate
            r[f"{key}_bytes_per_token"] = eng.info.streamed_bytes_per_pass
            r[f"{key}_tokens_match_transformers"] = toks == ref_tokens if a.qtype == "F32" else None
            eng.close()
            del eng
            _line(labels[key], rate, r[f"{key}_bytes_per_token"])
        r["streamed_bytes_per_token"] = r["stream_bytes_per_token"]

        r["airllm_tok_s"] = None
        if not a.skip_airllm_stock:
            print(
                f"airllm 4.0.0 stock: generating only {a.airllm_tokens} tokens (it is slow) ...", flush=True
            )
            split = work / "airllm-split"
            r["airllm_tok_s"], toks, nbytes = bench_airllm_stock(
                hf_dir, split, a.device, a.airllm_tokens, a.repeats
            )
            r["airllm_bytes_per_token"] = nbytes
            r["airllm_tokens_match_transformers"] = toks == ref_tokens[: a.airllm_tokens]
            _line(f"airllm 4.0.0 stock ({a.airllm_tokens} tok)", r["airllm_tok_s"], nbytes)
            _line(f"engine, all streamed ({a.airllm_tokens} tok)", r["stream_short_tok_s"])

        _ratios(r, a)
        print(json.dumps(r))
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


def _make_model(a: argparse.Namespace, work: Path) -> tuple[Path, Path, int]:
    """The random Llama's HF directory and GGUF (made once per workdir) and its parameter count."""
    hf_dir, gguf_path = work / "hf", work / f"model-{a.qtype}.gguf"
    if not (hf_dir / "config.json").exists():
        print(
            f"making a random Llama: {a.layers} layers, hidden {a.hidden}, ffn {a.intermediate}",
            flush=True,
        )
        tinymodel.make_hf_model(
            hf_dir,
            arch="llama",
            n_layers=a.layers,
            hidden=a.hidden,
            heads=a.heads,
            kv_heads=a.kv_heads,
            intermediate=a.intermediate,
            max_pos=4096,
        )
    if not gguf_path.exists():
        tinymodel.write_gguf(hf_dir, gguf_path, qtype=a.qtype)
    n_params = sum(t.numel() for t in load_file(hf_dir / "model.safetensors").values())
    size = gguf_path.stat().st_size / 2**20
    print(
        f"model: {n_params / 1e6:.1f}M params, GGUF {a.qtype} {size:.0f} MiB; device {a.device}, "
        f"torch threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return hf_dir, gguf_path, n_params


def _ratios(r: dict, a: argparse.Namespace) -> None:
    """The side-by-side ratios of one run, into `r` and printed."""
    r["stream_vs_resident"] = r["stream_tok_s"] / r["resident_tok_s"]
    r["half_vs_resident"] = r["stream_half_resident_tok_s"] / r["resident_tok_s"]
    if r["airllm_tok_s"]:
        r["stream_vs_airllm"] = r["stream_short_tok_s"] / r["airllm_tok_s"]
    if a.device.startswith("cuda"):
        gbps = h2d_gbps(a.device)
        limit = gbps * 1e9 / r["streamed_bytes_per_token"]
        r.update(h2d_gb_s=gbps, h2d_limit_tok_s=limit, stream_vs_h2d_limit=r["stream_tok_s"] / limit)
        print(
            f"host->device {gbps:.1f} GB/s -> limit {limit:.2f} tok/s; streamed decode reaches "
            f"{r['stream_vs_h2d_limit']:.2f} of it (target >= 0.8)"
        )
    print(
        f"ratios: streamed/resident {r['stream_vs_resident']:.2f} (target >= 0.9), "
        f"50%-resident/resident {r['half_vs_resident']:.2f}"
        + (
            f", streamed/airllm-stock {r['stream_vs_airllm']:.1f}x at {a.airllm_tokens} tokens"
            " (target >= 30)"
            if r.get("stream_vs_airllm")
            else ""
        )
    )


if __name__ == "__main__":
    sys.exit(main())
