"""bench/gpu.py: no GPU is one line and exit 2; `--device cpu --tiny` runs the whole code path and its last
line is the JSON object with every field; the synthetic model is llama.cpp's Q4_K_M mix of valid blocks."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"
KEYS = (
    "device", "h2d_pinned_gbps", "streamed_bytes_per_token", "decode_tok_s_streamed", "bus_limit_tok_s",
    "ratio_to_bus_limit", "decode_tok_s_resident", "dense_bf16_decode_tok_s", "prefill_tok_s_4k",
    "peak_device_bytes", "budget_bytes", "overhead_ms_per_layer", "targets", "n_layers", "wall_s",
    "decode_tok_s_resident_eager", "graphs_speedup", "overhead_ms_per_layer_eager", "graphs",
)  # fmt: skip
RATES = ("h2d_pinned_gbps", "decode_tok_s_streamed", "bus_limit_tok_s", "ratio_to_bus_limit",
         "decode_tok_s_resident", "dense_bf16_decode_tok_s", "prefill_tok_s_4k", "overhead_ms_per_layer",
         "wall_s", "decode_tok_s_resident_eager", "overhead_ms_per_layer_eager")  # fmt: skip
TARGETS = ("ratio_to_bus_limit_ge_0_8", "resident_ge_1_5x_dense_bf16", "peak_le_budget",
           "overhead_le_10pct_of_bus_step", "wall_le_360_s")  # fmt: skip


@pytest.fixture(scope="module")
def bench():
    """bench/gpu.py as a module (its pure functions)."""
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_bench"]


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the CPU fallback path
    env.update(CUDA_VISIBLE_DEVICES="", HIP_VISIBLE_DEVICES="")  # as on a machine without a GPU
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_without_a_gpu_it_exits_2_with_one_line():
    out = _run(timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "no GPU found" in lines[0]
    assert "--device cpu --tiny" in lines[0]


def test_cpu_without_tiny_is_a_usage_error_of_one_line():
    out = _run("--device", "cpu", timeout=120)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "bench/gpu.py: --device cpu runs only with --tiny (the CPU proves the logic, it is no benchmark)"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--budget-fraction", "2"), "--budget-fraction must be within (0, 1], got 2.0"),
        (("--json-out", "/no/g.json"), "--json-out /no/g.json: its directory does not exist"),
    ],
)
def test_bad_option_is_one_line_before_any_work(args, message):
    out = _run("--device", "cpu", "--tiny", *args, timeout=120)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"bench/gpu.py: {message} (see --help)"]


def test_cpu_tiny_run_reports_every_field(tmp_path):
    json_out = tmp_path / "gpu.json"
    out = _run("--device", "cpu", "--tiny", "--dir", str(tmp_path), "--json-out", str(json_out))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    r = json.loads(last)
    assert json.loads(json_out.read_text()) == r
    assert set(KEYS) <= set(r), set(KEYS) - set(r)
    assert r["errors"] == {}
    assert r["device"] == "cpu" and r["n_layers"] == 3
    for key in RATES:
        assert isinstance(r[key], float) and r[key] > 0, (key, r[key])
    assert math.isclose(r["bus_limit_tok_s"], r["h2d_pinned_gbps"] * 1e9 / r["streamed_bytes_per_token"])
    assert math.isclose(r["ratio_to_bus_limit"], r["decode_tok_s_streamed"] / r["bus_limit_tok_s"])
    # every layer and the head streamed: the engine streams exactly the tensor bytes the file holds
    assert r["runs"]["streamed"]["streamed_bytes_per_pass"] == r["streamed_bytes_per_token"]
    assert r["runs"]["resident"]["streamed_bytes_per_pass"] == 0
    assert isinstance(r["peak_device_bytes"], int) and r["peak_device_bytes"] > 0
    assert isinstance(r["budget_bytes"], int) and r["budget_bytes"] > 0  # the CPU: the RAM available
    assert r["runs"]["budget"]["accounted_bytes"] > 0
    assert all(isinstance(r["targets"][t], bool) for t in TARGETS), r["targets"]
    assert r["targets"]["n_layers"] == 3
    assert r["targets"]["peak_le_budget"] == (r["peak_device_bytes"] <= r["budget_bytes"])
    assert not list(tmp_path.glob("oar-gpu-bench-*")), "the model files are removed"


def test_use_more_bits_is_llama_cpps(bench):
    # llama.cpp: i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2, so 40 of a 70B's 80 layers get more bits
    more = [i for i in range(80) if bench.use_more_bits(i, 80)]
    assert more[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15] and more[-10:] == list(range(70, 80))
    assert len(more) == 40
    assert bench.layer_qtypes(0, 80)["attn_v"] == "Q6_K" and bench.layer_qtypes(10, 80)["attn_v"] == "Q5_K"
    assert (
        bench.layer_qtypes(10, 80)["ffn_down"] == "Q4_K" and bench.layer_qtypes(12, 80)["ffn_down"] == "Q6_K"
    )


def test_80_layers_are_the_size_of_llama_3_70b_q4_k_m(bench):
    # Meta-Llama-3-70B Q4_K_M GGUFs hold 42.5 GB of tensors
    assert 42.0e9 < bench.file_size(bench.LLAMA3_70B, 80) < 43.0e9


def test_synthetic_model_has_the_mix_and_valid_blocks(bench, tmp_path):
    path = tmp_path / "m.gguf"
    bench.write_model(path, bench.TINY, 4)
    assert not list(tmp_path.glob("*.tmp"))
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    assert len(r.fields["tokenizer.ggml.tokens"].data) == bench.TINY.n_vocab
    for name, qtype, shape in bench.model_tensors(bench.TINY, 4):
        t = tensors[name]
        assert t.tensor_type.name == qtype, name
        assert tuple(int(x) for x in reversed(t.shape)) == shape
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        assert np.isfinite(w).all() and np.abs(w).max() <= 1.0, name  # norms are 1


def test_layer_count_follows_the_tightest_limit(bench):
    g = bench.LLAMA3_70B
    roomy = dict(h2d=25e9, write=3e9, seconds=600.0, file_space=10**12, device_bytes=141 * 2**30, passes=14.5)
    assert bench.choose_layers(g, **roomy) == (80, "layers")
    n, limit = bench.choose_layers(g, **roomy | {"file_space": 20 * 2**30})
    assert limit == "file space" and bench.file_size(g, n) <= 20 * 2**30
    assert bench.file_size(g, n + 2) > 0.9 * 20 * 2**30  # two more would not fit (10% is kept free)
    n, limit = bench.choose_layers(g, **roomy | {"seconds": 60.0})
    assert limit == "time" and 1 <= n < 80
    assert bench.choose_layers(g, **roomy | {"seconds": 1.0}) == (1, "time")  # always one layer
