"""The memory budget: work buffers, activations, KV and staging are counted before weights are made
resident; units go resident by bus bytes saved per byte of budget; the compute buffer line reports it."""

from __future__ import annotations

import re

import pytest
import torch
from ollama_airllm.engine import Engine, EngineConfig, budget, gguf_backend
from ollama_airllm.engine.budget import Needs, activation_bytes, choose_resident, weight_budget
from ollama_airllm.engine.config import DEFAULT_RESERVE
from ollama_airllm.engine.gguf_file import open_gguf
from ollama_airllm.engine.weights import Unit, build_units, work_buffer_bytes
from ollama_airllm.server.loglines import load_lines

CPU = torch.device("cpu")


def _units(*sizes: tuple[int, int]) -> list[Unit]:
    """Units from (raw, dense) sizes; the last one is the head."""
    return [Unit(i, {}, raw, dense, raw) for i, (raw, dense) in enumerate(sizes)]


def test_units_go_resident_by_bytes_saved_per_byte_of_budget():
    # the head saves 100 bytes per token for 800 bytes of budget; each layer 300 for 400
    units = _units((300, 400), (300, 400), (300, 400), (100, 800))
    chosen = choose_resident(units, EngineConfig(), 800, lambda u: u.dense_bytes)
    assert chosen == {0, 1}
    # equal value per byte: the head first, as before; a unit that does not fit is passed over
    units = _units((400, 400), (400, 400), (300, 300))
    assert choose_resident(units, EngineConfig(), 700, lambda u: u.raw_bytes) == {0, 2}


def test_the_budget_counts_kv_compute_and_staging_only_when_needed():
    n = Needs(kv=1000, work=200, activations=300, staging=4000)
    units = _units((500, 500), (500, 500))
    cfg = EngineConfig(reserve=100)
    assert weight_budget(100 + 1000 + 500 + 1000, cfg, units, n, lambda u: u.raw_bytes) == 1000  # all fit
    assert weight_budget(100 + 1000 + 500 + 999, cfg, units, n, lambda u: u.raw_bytes) == 999 - 4000


def test_moe_experts_count_in_what_fits_and_a_fetch_is_reserved_when_they_stream():
    n = Needs(kv=1000, work=200, activations=300, staging=4000, experts=600, expert_fetch=250)
    units = _units((500, 500), (500, 500))
    cfg = EngineConfig(reserve=100)
    fixed = 100 + 1000 + 500
    assert weight_budget(fixed + 1000 + 600, cfg, units, n, lambda u: u.raw_bytes) == 1600  # all fit
    # the layers alone would fit, but the experts then stream: staging and one layer's fetch are held back
    assert weight_budget(fixed + 1000, cfg, units, n, lambda u: u.raw_bytes) == 1000 - 4000 - 250


def test_expert_fetch_room_is_the_largest_moe_layer_on_cuda_only():
    spec = type("S", (), dict(n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=128, n_vocab=100))
    units = _units((500, 500), (500, 500))
    cfg = EngineConfig(n_batch=8)
    cpu = budget.needs(spec, units, cfg, 32, CPU, torch.float32, 0, [300, 700])
    assert (cpu.experts, cpu.expert_fetch) == (1000, 0)  # the CPU computes on views of the mapped file
    # sizes only: a torch.device("cuda") object needs no GPU
    cuda = budget.needs(spec, units, cfg, 32, torch.device("cuda"), torch.bfloat16, 0, [300, 700])
    assert (cuda.experts, cuda.expert_fetch) == (1000, 700)  # a prefill may select all of one layer's


def test_a_70b_head_needs_its_logits_counted():
    spec = type("S", (), dict(n_embd=8192, n_head=64, n_head_kv=8, head_dim=128, n_ff=28672, n_vocab=128256))
    act = activation_bytes(spec, 4096, 512, torch.bfloat16)
    assert act >= 2 * 512 * 128256 * 4  # the float32 logits of one n_batch chunk
    assert act >= 512 * 4096 * 64 * 2  # the attention scores of one chunk


def test_load_fits_weights_into_what_the_rest_leaves(tiny_gguf, monkeypatch):
    path = tiny_gguf("llama", "Q8_0", n_layers=4)
    model = open_gguf(path)
    units = build_units(model, torch.float32)
    cfg = EngineConfig(device="cpu", n_ctx=64)
    kv = Engine.load(path, cfg).info.kv_bytes
    need = budget.needs(model.spec, units, cfg, 64, CPU, torch.float32, kv)
    assert need.work == work_buffer_bytes(units, CPU) + budget.NUMPY_TEMP_BYTES > budget.NUMPY_TEMP_BYTES
    fixed = DEFAULT_RESERVE + kv + need.compute
    all_dense = sum(u.dense_bytes for u in units)
    for free, n_resident in ((fixed + all_dense, 5), (fixed + all_dense - 1, 4), (fixed, 0)):
        monkeypatch.setattr(gguf_backend, "device_free_bytes", lambda _dev, free=free: free)
        info = Engine.load(path, cfg).info
        assert info.n_resident_layers + info.head_resident == n_resident, free - fixed
        assert info.compute_bytes == need.compute


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_the_compute_buffer_line_reports_work_and_activations(tiny_gguf, qtype):
    info = Engine.load(tiny_gguf("llama", qtype), EngineConfig(device="cpu", n_ctx=64)).info
    assert info.compute_bytes > 0
    (line,) = [x for x in load_lines(info) if "compute buffer" in x]
    mib = float(re.search(r"= +([\d.]+) MiB", line).group(1))
    assert mib == pytest.approx((info.compute_bytes + info.staging_bytes) / 2**20, abs=0.01)
