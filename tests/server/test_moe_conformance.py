"""MoE models through the runner (issue 10): tiny random Qwen3-MoE and Mixtral converted by llama.cpp's
convert_hf_to_gguf.py, quantized by llama-quantize, served by our runner and by the real llama-server.

- F32: greedy tokens equal llama-server's; where they part, the two tokens are a near tie for us (TIE).
- Q8_0, Q4_K_M: greedy tokens equal transformers' on that very file (qwen3moe: `gguf_file=`; Mixtral, which
  that loader reads as a dense llama: MixtralForCausalLM on gguf-py's dequantization), parting only at an
  exact near tie; they agree with llama-server within the noise of its 8-bit activations (MARGIN_NATS), or
  part after a router near-tie, where that noise can select another expert (ROUTER_TIE).
- /props' engine object and the load log report the experts' residency, bytes per token and hit rate.
Our runner runs with -ngl 1: layer 0 (and its experts) resident, layer 1 streamed.
"""

from __future__ import annotations

import httpx
import pytest
import torch
from ollama_airllm.devtools import tinymoe

from tests.server import compare
from tests.server.conftest import _required_tool

pytestmark = [pytest.mark.llamaserver, pytest.mark.slow]

FILES = ["F32", "Q8_0", "Q4_K_M"]
PROMPTS = [[1, 263, 80, 335], [1, 400, 17, 42, 99, 7], [5, 100, 200, 300], [1, 50, 60, 70], [9, 8, 7, 6, 5],
           [1, 33, 444, 55, 6]]
N = 16
TIE = 1e-3  # nats
# llama-server's 8-bit activations put noise of a few tenths of a nat into the dense tiny Llama's logits
# (tests/server/test_conformance_quantized.py: 0.5); tinymoe's output weights are 2.5x as large, so are its
# logits and that noise.
MARGIN_NATS = 1.0


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple]:
    """{arch: (HF dir, {qtype: GGUF})}."""
    _required_tool("LLAMA_QUANTIZE_BIN", "tests/setup.d/30-llama-server.sh")
    _required_tool("LLAMA_CONVERT_PY", "tests/setup.d/31-llama-convert.sh")
    work = tmp_path_factory.mktemp("moe-files")
    return {arch: tinymoe.build(work, arch, FILES) for arch in tinymoe.ARCHS}


@pytest.fixture(scope="module")
def servers(models, srvtools, module_servers) -> dict[tuple[str, str], tuple]:
    """{(arch, qtype): (our runner, llama-server)}."""
    flags = ["-c", "1024", "-t", "1", *srvtools.OLLAMA_FLAGS]
    out = {}
    for arch, (_, files) in models.items():
        for qtype, path in files.items():
            ours = srvtools.launch([*srvtools.runner_cmd(), "--model", str(path), "-ngl", "1", *flags])
            theirs = srvtools.launch([srvtools.llama_server_bin(), "--model", str(path), *flags])
            module_servers.extend([ours, theirs])
            out[arch, qtype] = (ours, theirs)
    return out


@pytest.mark.parametrize("arch", tinymoe.ARCHS)
def test_f32_greedy_tokens_equal_llama_server(servers, arch):
    agreed = compare.agree_with_llama_server(*servers[arch, "F32"], PROMPTS, N, TIE, arch)
    assert agreed >= 1, f"{arch}: llama-server parted from us on every prompt"


def _reference(arch: str, hf_dir, path):
    import transformers

    if arch == "qwen3moe":
        return transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
    return tinymoe.reference_model(path, hf_dir)


@pytest.mark.parametrize("arch", tinymoe.ARCHS)
@pytest.mark.parametrize("qtype", FILES[1:])
def test_quantized_greedy_tokens_equal_transformers_on_the_same_file(models, servers, arch, qtype):
    hf_dir, files = models[arch]
    model = _reference(arch, hf_dir, files[qtype])
    compare.assert_greedy_equals_transformers(model, servers[arch, qtype][0], PROMPTS, N, TIE, (arch, qtype))


@pytest.mark.parametrize("arch", tinymoe.ARCHS)
@pytest.mark.parametrize("qtype", FILES[1:])
def test_quantized_greedy_tokens_agree_with_llama_server_within_its_8bit_noise(models, servers, arch, qtype):
    """Where llama-server parts from us, its token is within MARGIN_NATS of ours, or its 8-bit noise
    met a router near-tie (ROUTER_TIE) on the way and so may have picked another expert: the reference
    model's router shows that tie on our tokens."""
    hf_dir, files = models[arch]
    router = _reference(arch, hf_dir, files[qtype])
    what = (arch, qtype)
    agreed = compare.agree_with_llama_server(*servers[arch, qtype], PROMPTS, N, MARGIN_NATS, what, router)
    assert agreed >= 1, f"{arch} {qtype}: llama-server parted from us on every prompt"


def test_props_and_load_log_report_the_experts(servers):
    ours_srv, _ = servers["qwen3moe", "F32"]
    compare.complete(ours_srv, PROMPTS[0], N)
    engine = httpx.get(ours_srv.url + "/props", timeout=30).json()["engine"]
    ex = engine["experts"]
    assert (engine["resident_layers"], engine["streamed_layers"]) == (1, 1)
    assert (ex["n_expert"], ex["n_expert_used"], ex["resident_experts"], ex["cache_bytes"]) == (4, 2, 4, 0)
    assert ex["tokens"] >= len(PROMPTS[0]) + N - 1
    per_expert = 3 * 768 * 256 * 4  # gate + up + down, F32
    # decode reads the top-2 experts of the one streamed layer; the prompt's union can only read less
    assert 0 < ex["bytes_read_per_token"] <= 2 * per_expert
    assert 0.4 < ex["cache_hit_rate"] < 0.6  # half the routed experts are in the resident layer
    log = ours_srv.log()
    assert "load_tensors: experts: 2 of 4 per token in 2 layers, 4 resident, cache 0.00 MiB; 4.50 MiB" in log
