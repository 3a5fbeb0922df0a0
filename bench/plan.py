"""Is the planner's estimate any good? On this machine's CPU, measure llama-server's and our runner's decode
and prompt speed on one model, next to what the planner (ollama_airllm.fit) predicts for the same machine.

    python bench/plan.py             # a random Llama of >= 500 MB in Q8_0, made here; about 5-10 minutes
    python bench/plan.py --quick     # a small model, bounded (the test's mode, well under a minute)

Steps: write the model (tinymodel: random weights, converted to Q8_0 GGUF); calibrate this machine with the
calibration's own measure functions (host memory read, the engine's Q8_0 GEMV/GEMM on the CPU); predict
with the planner's own path estimates and rates (llama-server: estimate_cpu, i.e. -ngl 0, with
rates_from_calibration for --threads threads: llama.cpp's documented per-thread CPU rates; runner:
estimate_runner with no usable VRAM, the CPU standing in for the device, every layer streamed from the page
cache); then measure llama-server ($LLAMA_SERVER_BIN, -ngl 0, -t --threads) through its /completion
timings, and the engine (Engine.load, device cpu, resident_layers=0) through its own timings.
Prints predicted and measured tok/s and their ratios (target: each within +-35 %); the last stdout line is
one JSON object. Not a test: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import torch
from ollama_airllm import fit
from ollama_airllm.calibrate import measure
from ollama_airllm.devtools import tinymodel
from ollama_airllm.engine import Engine, EngineConfig, SamplingParams
from ollama_airllm.plan.model import read_model

TARGET = 0.35
FULL = dict(layers=11, hidden=2048, intermediate=5632, heads=16, kv_heads=4, prompt=256, tokens=16)
QUICK = dict(layers=2, hidden=256, intermediate=512, heads=4, kv_heads=2, prompt=32, tokens=4)
CAL_FULL = replace(measure.FULL, memory=256 << 20, rows=2048, cols=2048, tokens=128, reps=3, budget_s=3.0)
CAL_QUICK = replace(measure.QUICK, rows=256, cols=1024, tokens=32, reps=2, budget_s=0.5)
RAM = 2**62


def make_model(work: Path, shape: dict) -> Path:
    """A random Llama in Q8_0, written by the project's tinymodel writer."""
    hf = tinymodel.make_hf_model(
        work / "hf",
        n_layers=shape["layers"],
        hidden=shape["hidden"],
        heads=shape["heads"],
        kv_heads=shape["kv_heads"],
        intermediate=shape["intermediate"],
        max_pos=4096,
    )
    path = tinymodel.write_gguf(hf, work / "model.gguf", qtype="Q8_0")
    shutil.rmtree(hf)
    return path


def calibrate(sizes: measure.Sizes) -> dict[str, float]:
    """This machine's CPU rates, measured as `ollama-airllm calibrate` measures them."""
    cpu = torch.device("cpu")
    gemv, gemm = measure.quantized_rates(cpu, sizes, lambda: None, measure.Q8_0)
    return {
        "host_memory_read": measure.host_memory_read(sizes, None).value,
        "cpu.q8_0_gemv": gemv.value,
        "cpu.q8_0_gemm": gemm.value,
    }


def predict(facts: fit.ModelFacts, cal: dict[str, float], n_prompt: int,
            threads: int) -> dict[str, dict[str, float]]:
    """The planner's estimates: llama-server with -ngl 0 on `threads` threads; the runner with the CPU as
    its device (no usable VRAM)."""
    host = cal["host_memory_read"]
    llama = fit.estimate_cpu(facts, fit.rates_from_calibration(cal, "q8_0", threads), RAM, n_prompt)
    runner_rates = fit.Rates(
        host_to_device=host,
        host_memory_read=host,
        models_dir_read=host,
        gpu_memory_read=host,
        engine_gemv=cal["cpu.q8_0_gemv"],
        engine_gemm=cal["cpu.q8_0_gemm"],
    )
    runner = fit.estimate_runner(facts, runner_rates, 0, RAM, n_prompt)
    return {
        name: {"decode_tps": e.decode_tps, "prompt_tps": n_prompt / e.ttft_s}
        for name, e in (("llama_server", llama), ("runner", runner))
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_llama_server(binary: str, model: Path, prompt: list[int], n: int, threads: int) -> dict:
    """llama-server on the CPU: decode and prompt tok/s from its own /completion timings (best of 2)."""
    port = _free_port()
    cmd = [
        binary,
        "-m",
        str(model),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "-c",
        "2048",
        "-ngl",
        "0",
        "-t",
        str(threads),
        "--no-webui",
        "-b",
        "512",
        "-ub",
        "512",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url)
        body = {
            "prompt": prompt,
            "n_predict": n,
            "ignore_eos": True,
            "cache_prompt": False,
            "temperature": 0,
            "grammar": "root ::= [ -~]*",
        }
        best = {"decode_tps": 0.0, "prompt_tps": 0.0}
        for i in range(3):  # the first run warms the page cache and is not counted
            r = httpx.post(url + "/completion", json=body, timeout=600)
            r.raise_for_status()
            t = r.json()["timings"]
            if i:
                best["decode_tps"] = max(best["decode_tps"], t["predicted_per_second"])
                best["prompt_tps"] = max(best["prompt_tps"], t["prompt_per_second"])
        return best
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"llama-server did not become healthy within {timeout:.0f} s")


def measure_runner(model: Path, prompt: list[int], n: int) -> dict:
    """The engine on the CPU, every layer streamed: decode and prompt tok/s from its timings (best of 2)."""
    eng = Engine.load(model, EngineConfig(device="cpu", resident_layers=0, n_ctx=2048))
    greedy = SamplingParams(n_predict=n, temperature=0.0, ignore_eos=True)
    best = {"decode_tps": 0.0, "prompt_tps": 0.0}
    try:
        for i in range(3):  # the first run warms the page cache and is not counted
            eng.clear_slot(0)
            res = eng.generate(0, prompt, greedy)
            if i:
                best["decode_tps"] = max(best["decode_tps"], res.n_decoded / (res.predicted_ms / 1e3))
                best["prompt_tps"] = max(best["prompt_tps"], res.n_prompt / (res.prompt_ms / 1e3))
    finally:
        eng.close()
    return best


def report(predicted: dict, measured: dict) -> dict:
    """Print each rate's prediction, measurement and ratio; return them with the verdict."""
    out: dict = {}
    print(f"{'':<26}{'predicted':>12}{'measured':>12}{'ratio':>8}")
    for who in ("llama_server", "runner"):
        out[who] = {}
        for rate in ("decode_tps", "prompt_tps"):
            p, m = predicted[who][rate], measured[who][rate]
            ratio = p / m if m > 0 else float("inf")
            out[who][rate] = {"predicted": round(p, 4), "measured": round(m, 4), "ratio": round(ratio, 3)}
            print(f"{who + ' ' + rate:<26}{p:>12.3f}{m:>12.3f}{ratio:>8.2f}")
    ratios = [r["ratio"] for who in out.values() for r in who.values()]
    out["within_target"] = all(abs(r - 1) <= TARGET for r in ratios)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small model and short runs (for the test)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads, both sides")
    ap.add_argument("--tokens", type=int, help="tokens decoded per run (default 16, quick 4)")
    ap.add_argument("--prompt", type=int, help="prompt tokens (default 256, quick 32)")
    ap.add_argument("--keep", type=Path, help="write the model here and keep it")
    args = ap.parse_args(argv)
    binary = os.environ.get("LLAMA_SERVER_BIN") or shutil.which("llama-server")
    if not binary:
        sys.exit("set LLAMA_SERVER_BIN to a llama-server build (tests/setup.d/30-llama-server.sh)")
    shape = dict(QUICK if args.quick else FULL)
    shape.update({k: v for k, v in (("tokens", args.tokens), ("prompt", args.prompt)) if v})
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="oar-bench-plan-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = make_model(work, shape)
        info = read_model(model, model.name, 2048, 1)
        print(
            f"model: {model} ({info.file_bytes / 1e6:.0f} MB Q8_0, {info.facts.n_layer} layers), "
            f"{args.threads} threads",
            flush=True,
        )
        cal = calibrate(CAL_QUICK if args.quick else CAL_FULL)
        print("calibration: " + ", ".join(f"{k} {v:g}" for k, v in cal.items()), flush=True)
        prompt = [(7 * i + 5) % 200 + 3 for i in range(shape["prompt"])]
        predicted = predict(info.facts, cal, len(prompt), args.threads)
        measured = {
            "llama_server": measure_llama_server(binary, model, prompt, shape["tokens"], args.threads),
            "runner": measure_runner(model, prompt, shape["tokens"]),
        }
    result = report(predicted, measured)
    result.update(
        model_bytes=info.file_bytes,
        threads=args.threads,
        quick=args.quick,
        calibration=cal,
        prompt_tokens=len(prompt),
        decode_tokens=shape["tokens"],
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
