"""The engine serves GGUFs of every type llama-quantize makes without an imatrix, and MXFP4.

A random tiny Llama with K-quant shapes is written as F32, then quantized by the real llama-quantize to each
file type below (MXFP4: its --tensor-type override on every matrix; MXFP4_MOE itself touches only expert
tensors). The engine's greedy tokens, with every layer streamed (matrices multiplied from their blocks) and
with every layer resident (dequantized once), equal transformers' loading that very file (`gguf_file=`,
dequantized by gguf-py); where they part, the reference's top two logits are a near tie.
Needing an imatrix, so not here: IQ1_*, IQ2_*, IQ3_XXS, Q2_K_S; no kernels: IQ3_*, TQ*, Q1_0, Q2_0.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import torch
from ollama_airllm.devtools import llamacpp, tinymodel
from ollama_airllm.engine import Engine, EngineConfig, SamplingParams
from ollama_airllm.kernels import QTYPES

from tests.server import compare
from tests.server.conftest import _required_tool

pytestmark = [pytest.mark.llamaserver, pytest.mark.slow]  # llama-quantize: from the llama-server build

FILE_TYPES = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
    "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "F16", "BF16", "MXFP4",
]  # fmt: skip
PROMPTS = [[1, 263, 80, 335], [5, 100, 200, 300, 17, 42]]
N = 8
EXACT_TIE = 1e-3


@pytest.fixture(scope="module")
def quantized(tiny_hf, tmp_path_factory) -> dict[str, Path]:
    """{file type: GGUF} quantized by llama-quantize from one F32 GGUF."""
    _required_tool("LLAMA_QUANTIZE_BIN", "tests/setup.d/30-llama-server.sh")
    out = tmp_path_factory.mktemp("quant-types")
    f32 = tinymodel.write_gguf(tiny_hf("llama", "Q4_K"), out / "model-F32.gguf", qtype="F32")
    files = {}
    for ftype in FILE_TYPES:
        files[ftype] = out / f"model-{ftype}.gguf"
        extra, base = [], ftype
        if ftype == "MXFP4":  # every matrix but the embedding and the head; those are Q8_0
            extra, base = ["--tensor-type", "attn_.*=mxfp4", "--tensor-type", "ffn_.*=mxfp4"], "Q8_0"
        llamacpp.quantize(f32, files[ftype], base, *extra)
    return files


def _types(path: Path) -> set[str]:
    return {gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(path).tensors}


def test_the_files_cover_every_kernel_type(quantized):
    assert set().union(*(_types(p) for p in quantized.values())) == set(QTYPES)


@pytest.mark.parametrize("ftype", FILE_TYPES)
def test_greedy_tokens_equal_transformers_on_the_same_file(quantized, ftype):
    import transformers

    path = quantized[ftype]
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    engines = [Engine.load(path, EngineConfig(device="cpu", n_ctx=64, resident_layers=n)) for n in (0, 2)]
    for prompt in PROMPTS:
        ref, scores = compare.transformers_greedy(ref_model, prompt, N)
        for eng in engines:
            ours = eng.generate(0, prompt, SamplingParams(temperature=0, n_predict=N, ignore_eos=True)).tokens
            what = (ftype, eng.info.n_resident_layers, prompt)
            compare.assert_equal_but_at_a_near_tie(ours, ref, scores, EXACT_TIE, what)
    for eng in engines:
        eng.close()
