"""Quantized GGUFs made by the real llama-quantize (Q8_0, Q4_K_M): our runner against two references.

- Exact: transformers loading that very file (`gguf_file=`, dequantized by gguf-py). Greedy tokens are equal;
  at a step where they part, the reference's top two logits must be a near tie (1e-3).
- llama-server on the same file: it quantizes activations to 8 bits inside its dot products, so on a random
  tiny model its logits differ from exact math by up to a few tenths of a nat. Tokens are equal, or part at
  a token whose log-probability under our runner is within MARGIN_NATS of our own (tests/server/compare.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ollama_airllm.devtools import llamacpp, tinymodel

from tests.server import compare
from tests.server.conftest import _required_tool

pytestmark = [pytest.mark.llamaserver, pytest.mark.slow]

QTYPES = ["Q8_0", "Q4_K_M"]
PROMPTS = [[1, 263, 80, 335], [1, 400, 17, 42, 99, 7], [5, 100, 200, 300]]
N = 16
MARGIN_NATS = 0.5
EXACT_TIE = 1e-3


@pytest.fixture(scope="module")
def quantized(tiny_hf, tmp_path_factory) -> dict[str, Path]:
    """The F32 GGUF of a random Llama with K-quant shapes, quantized by llama-quantize to each of QTYPES."""
    _required_tool("LLAMA_QUANTIZE_BIN", "tests/setup.d/30-llama-server.sh")
    out = tmp_path_factory.mktemp("quantized")
    f32 = tinymodel.write_gguf(tiny_hf("llama", "Q4_K"), out / "model-F32.gguf", qtype="F32")
    return {q: llamacpp.quantize(f32, out / f"model-{q}.gguf", q) for q in QTYPES}


@pytest.fixture(scope="module")
def servers(quantized, srvtools, module_servers) -> dict[str, tuple]:
    """{qtype: (our runner, llama-server)} on each quantized file."""
    flags = ["-c", "1024", "-t", "1", *srvtools.OLLAMA_FLAGS]
    out = {}
    for qtype, path in quantized.items():
        ours = srvtools.launch([*srvtools.runner_cmd(), "--model", str(path), *flags])
        theirs = srvtools.launch([srvtools.llama_server_bin(), "--model", str(path), *flags])
        module_servers.extend([ours, theirs])
        out[qtype] = (ours, theirs)
    return out


@pytest.mark.parametrize("qtype", QTYPES)
def test_greedy_tokens_equal_transformers_on_the_same_file(quantized, servers, qtype):
    import transformers

    path = quantized[qtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    compare.assert_greedy_equals_transformers(model, servers[qtype][0], PROMPTS, N, EXACT_TIE, qtype)


@pytest.mark.parametrize("qtype", QTYPES)
def test_greedy_tokens_agree_with_llama_server_within_its_8bit_noise(servers, qtype):
    agreed = compare.agree_with_llama_server(*servers[qtype], PROMPTS, N, MARGIN_NATS, qtype)
    assert agreed >= 1, f"{qtype}: llama-server parted from us on every prompt"
