"""The cost model and the auto takeover policy (ollama_airllm.fit) against the vectors shared with Go."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
from ollama_airllm import fit

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "plan_decision.json").read_text())
GiB = 2**30


def _input(inp: dict) -> fit.FitInput:
    gpus = tuple(fit.GPU(**g) for g in inp["gpus"])
    return fit.FitInput(inp["model_bytes"], gpus, inp["num_gpu"], inp["ram_free_bytes"],
                        fit.ModelFacts(**inp["facts"]), fit.Rates(**inp["rates"]))


@pytest.mark.parametrize("case", VECTORS["decisions"], ids=[c["name"] for c in VECTORS["decisions"]])
def test_decision(case):
    d = fit.decide(_input(case["input"]), case["env"]).with_runner_check(case.get("runner_error"))
    got = {"airllm": d.airllm, "forced": d.forced, "runner": d.runner, "reason": d.reason,
           "warnings": list(d.warnings), "n_cpu_moe": d.n_cpu_moe}
    assert got == case["want"]


@pytest.mark.parametrize("case", VECTORS["estimates"], ids=[c["name"] for c in VECTORS["estimates"]])
def test_estimates(case):
    f, r = fit.ModelFacts(**case["facts"]), fit.Rates(**case["rates"])
    size, usable, ram, n = case["model_bytes"], case["usable_bytes"], case["ram_free_bytes"], case["n_prompt"]
    got = {
        "all-gpu": fit.estimate_all_gpu(f, r, size, usable, n),
        "fit": fit.estimate_fit(f, r, usable, ram, n),
        "cpu": fit.estimate_cpu(f, r, ram, n),
        "runner": fit.estimate_runner(f, r, usable, ram, n),
    }
    if (moe := fit.estimate_cpu_moe(f, r, size, usable, ram, n)) is not None:
        got["cpu-moe"] = moe
    assert {k: asdict(v) for k, v in got.items()} == case["want"]


@pytest.mark.parametrize("case", VECTORS["calibrations"], ids=[c["name"] for c in VECTORS["calibrations"]])
def test_rates_from_calibration(case):
    got = fit.rates_from_calibration(case["rates"], case["weight_type"], case["threads"])
    assert asdict(got) == case["want"]


@pytest.mark.parametrize("case", VECTORS["facts"], ids=[c["name"] for c in VECTORS["facts"]])
def test_facts_from_tensors(case):
    tensors = [fit.Tensor(**t) for t in case["tensors"]]
    meta = case["n_layer"], case["n_expert"], case["n_expert_used"], case["kv_bytes"]
    got = fit.facts_from_tensors(tensors, *meta)
    assert asdict(got) == case["want"]


def test_kv_bytes():
    for case in VECTORS["kv_bytes"]:
        assert fit.kv_bytes(*case["args"]) == case["want"], case


def test_cpu_moe_n_is_the_smallest_that_fits():
    """By hand: Mixtral-like, 32 layers of 0.8175 GB, experts 96 % of them; 30.743 GB over 20.219 GB usable
    leaves 10.524 GB to move, 13.4 layers of experts (0.7848 GB each): N = 14, and 13 would not fit."""
    case = next(c for c in VECTORS["decisions"] if c["name"].startswith("Mixtral"))
    inp = _input(case["input"])
    usable = fit.usable_vram(fit.available_vram(inp.gpus, 0))
    moe = fit.estimate_cpu_moe(inp.facts, inp.rates, inp.model_bytes, usable, inp.ram_free_bytes, 1)
    per_experts = inp.facts.expert_bytes / inp.facts.n_layer
    assert moe.gpu_layers == case["want"]["n_cpu_moe"] == 14
    assert inp.model_bytes - 14 * per_experts <= usable < inp.model_bytes - 13 * per_experts


def test_a_model_that_fits_never_gets_n_cpu_moe():
    case = next(c for c in VECTORS["decisions"] if "fits: all on the GPU" in c["name"])
    d = fit.decide(_input(case["input"]), {})
    assert (d.airllm, d.n_cpu_moe) == (False, 0) and "<= usable VRAM" in d.reason


def test_auto_picks_the_shorter_workload_time():
    """The reason's two workload times agree with the choice, in every auto vector that compares them."""
    compared = [c for c in VECTORS["decisions"] if "tok/s vs llama-server" in c["want"]["reason"]]
    assert len(compared) >= 5
    for case in compared:
        reason = case["want"]["reason"]
        times = reason.split("tokens: ")[1].split(";")[0].split(" vs ")
        runner_s, llama_s = (float(x.removesuffix(" s")) for x in times)
        assert case["want"]["airllm"] == (runner_s < llama_s), case["name"]


def test_policy_over_vram_is_todays_rule():
    case = next(c for c in VECTORS["decisions"] if c["name"].startswith("MoE with takeover over-vram"))
    inp = _input(case["input"])
    for facts in (inp.facts, fit.ModelFacts()):
        d = fit.decide(fit.FitInput(inp.model_bytes, inp.gpus, -1, inp.ram_free_bytes, facts), case["env"])
        assert d.airllm and d.reason.startswith("airllm: model ") and d.n_cpu_moe == 0


def _sysfs(root: Path, siblings: list[str]) -> str:
    for cpu, s in enumerate(siblings):
        topology = root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings").write_text(s + "\n")
    return str(root)


def test_llama_server_threads(tmp_path):
    """Ollama's num_thread when set, else llama.cpp's physical cores: distinct thread_siblings (as Go's
    LlamaServerThreads, tested with the same cases in plan_test.go)."""
    smt = _sysfs(tmp_path / "smt", ["05", "0a", "05", "0a"])
    assert fit.llama_server_threads(3, smt) == 3
    assert fit.llama_server_threads(0, smt) == 2
    assert fit.llama_server_threads(0, _sysfs(tmp_path / "plain", ["1", "2", "4"])) == 3
    assert fit.llama_server_threads(-1, str(tmp_path / "none")) == (os.cpu_count() or 1)


def test_one_thread_cpu_decode_is_compute_bound():
    """llama-server -ngl 0 on one thread reads its weights at llama.cpp's per-thread rate, far below the
    memory's (the bench's 1.7x over-estimate came from assuming memory speed)."""
    f = fit.ModelFacts(weight_bytes=529_000_000, layer_bytes=400_000_000, n_layer=11, params=498_000_000)
    rates = fit.rates_from_calibration({"host_memory_read": 50.0}, "q8_0", 1)
    e = fit.estimate_cpu(f, rates, 2**40, 256)
    assert e.decode_tps == pytest.approx(rates.cpu_weight_read * fit.GB / 529_000_000, rel=1e-12)
    assert e.ttft_s == pytest.approx(2 * 498_000_000 * 256 / (rates.cpu_gemm * fit.TFLOP), rel=1e-12)
    many = fit.estimate_cpu(f, fit.rates_from_calibration({"host_memory_read": 50.0}, "q8_0", 64), 2**40, 256)
    assert many.decode_tps == pytest.approx(50.0 * fit.GB / 529_000_000, rel=1e-12)
