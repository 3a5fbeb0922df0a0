"""Gemma 3 and gpt-oss, converted by llama.cpp's convert_hf_to_gguf: our runner against two references.

Tiny random Gemma3ForCausalLM / GptOssForCausalLM (hidden 256, so llama-quantize's K-quants apply; a
sliding window of 4, shorter than every prompt; sliding and full layers), converted to an F32 GGUF, then
quantized by the real llama-quantize to Q8_0 and Q4_K_M; and a gpt-oss checkpoint whose experts are MXFP4
blocks, as OpenAI ships them, which the converter repacks into GGUF MXFP4 (its activations are 8-bit in
llama-server too).

- transformers on that very file (tinyarch.reference_model: the weights as gguf-py dequantizes them):
  greedy tokens equal; where they part, the reference's top two logits are a near tie (EXACT_TIE).
- llama-server on the same file, both under an ASCII grammar. F32: tokens equal, or part where
  llama-server's token is within F32_TIE_NATS of ours (F16 KV cache, summation order; gpt-oss: llama.cpp
  floors/ceils YaRN's correction range, transformers and we do not: about 5e-3 nats). Q8_0/Q4_K_M:
  llama-server quantizes activations to 8 bits in its dot products, so there the margin is MARGIN_NATS,
  as in test_conformance_quantized.py; gpt-oss may part by more only after a router near-tie on the way
  (ROUTER_TIE, as test_moe_conformance.py), where that noise can select another expert.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ollama_airllm.devtools import llamacpp, tinyarch

from tests.server import compare
from tests.server.conftest import _required_tool

pytestmark = [pytest.mark.llamaserver, pytest.mark.slow]

ARCHS = ["gemma3", "gpt-oss"]
QUANTIZED = ["Q8_0", "Q4_K_M"]
# gpt-oss's own format too: experts as MXFP4 blocks in the checkpoint, repacked by the converter
FILES = [(a, q) for a in ARCHS for q in ["F32", *QUANTIZED]] + [("gpt-oss", "MXFP4")]
PROMPTS = [[1, 263, 80, 335, 12, 99], [1, 400, 17, 42, 99, 7, 250, 31], [5, 100, 200, 300, 64, 18]]
N = 16
EXACT_TIE = 1e-3
F32_TIE_NATS = 0.05
MARGIN_NATS = 0.5


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[tuple[str, str], tuple[Path, Path]]:
    """(arch, qtype) -> (GGUF, the HF checkpoint it came from) for F32 and each of QUANTIZED."""
    _required_tool("LLAMA_CONVERT_PY", "tests/setup.d/31-llama-convert.sh")
    _required_tool("LLAMA_QUANTIZE_BIN", "tests/setup.d/30-llama-server.sh")
    out = {}
    for arch in ARCHS:
        d = tmp_path_factory.mktemp(arch.replace("-", ""))
        hf = tinyarch.make_hf_model(d / "hf", arch, hidden=256)
        f32 = llamacpp.convert(hf, d / "model-F32.gguf")
        out[arch, "F32"] = (f32, hf)
        for qtype in QUANTIZED:
            out[arch, qtype] = (llamacpp.quantize(f32, d / f"model-{qtype}.gguf", qtype), hf)
    d = tmp_path_factory.mktemp("gptoss-mxfp4")
    hf = tinyarch.make_hf_model(d / "hf", "gpt-oss", hidden=256, mxfp4=True)
    out["gpt-oss", "MXFP4"] = (llamacpp.convert(hf, d / "model-MXFP4.gguf"), hf)
    return out


@pytest.fixture(scope="module")
def servers(files, srvtools, module_servers):
    """servers(arch, qtype) -> (our runner, llama-server) on that file; one pair runs at a time."""
    flags = ["-c", "512", "-t", "1", *srvtools.OLLAMA_FLAGS]
    running: dict[tuple[str, str], tuple] = {}

    def get(arch: str, qtype: str) -> tuple:
        if (arch, qtype) not in running:
            for pair in running.values():
                for srv in pair:
                    srv.stop()
            running.clear()
            path = files[arch, qtype][0]
            ours = srvtools.launch([*srvtools.runner_cmd(), "--model", str(path), *flags])
            theirs = srvtools.launch([srvtools.llama_server_bin(), "--model", str(path), *flags])
            module_servers.extend([ours, theirs])
            running[arch, qtype] = (ours, theirs)
        return running[arch, qtype]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_greedy_tokens_equal_llama_server(servers, arch):
    ours, theirs = servers(arch, "F32")
    agreed = compare.agree_with_llama_server(ours, theirs, PROMPTS, N, F32_TIE_NATS, arch)
    assert agreed >= 2, f"{arch}: parted on most prompts"


@pytest.mark.parametrize(("arch", "qtype"), FILES)
def test_greedy_tokens_equal_transformers_on_the_same_file(files, servers, arch, qtype):
    path, hf = files[arch, qtype]
    model = tinyarch.reference_model(path, hf)
    ours = servers(arch, qtype)[0]
    compare.assert_greedy_equals_transformers(model, ours, PROMPTS, N, EXACT_TIE, (arch, qtype))


@pytest.mark.parametrize(("arch", "qtype"), [f for f in FILES if f[1] != "F32"])
def test_quantized_greedy_tokens_agree_with_llama_server_within_its_8bit_noise(files, servers, arch, qtype):
    ours, theirs = servers(arch, qtype)
    router = tinyarch.reference_model(*files[arch, qtype]) if arch == "gpt-oss" else None
    agreed = compare.agree_with_llama_server(ours, theirs, PROMPTS, N, MARGIN_NATS, (arch, qtype), router)
    assert agreed >= 1, (arch, qtype)
