"""Quantized GGUFs made by the real llama-quantize (Q8_0, Q4_K_M): our runner against two references.

- Exact: transformers loading that very file (`gguf_file=`, dequantized by gguf-py). Greedy tokens are equal;
  at a step where they part, the reference's top two logits must be a near tie (1e-3).
- llama-server on the same file: it quantizes activations to 8 bits inside its dot products, so on a random
  tiny model its logits differ from exact math by up to a few tenths of a nat. Tokens are equal, or part at a
  token whose log-probability under our runner is within MARGIN_NATS of our best.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
import torch
from ollama_airllm.devtools import tinymodel

from tests.server.conftest import _required_tool

pytestmark = [pytest.mark.llamaserver, pytest.mark.slow]

QTYPES = ["Q8_0", "Q4_K_M"]
PROMPTS = [[1, 263, 80, 335], [1, 400, 17, 42, 99, 7], [5, 100, 200, 300]]
N = 16
MARGIN_NATS = 0.5
EXACT_TIE = 1e-3
# Printable ASCII for llama-server's sake: it answers 500 when a random model emits invalid UTF-8.
ASCII = "root ::= [ -~\\n]*"


@pytest.fixture(scope="module")
def quantized(tiny_hf, tmp_path_factory) -> dict[str, Path]:
    """The F32 GGUF of a random Llama with K-quant shapes, quantized by llama-quantize to each of QTYPES."""
    quantize = _required_tool("LLAMA_QUANTIZE_BIN", "tests/setup.d/30-llama-server.sh")
    out = tmp_path_factory.mktemp("quantized")
    f32 = tinymodel.write_gguf(tiny_hf("llama", "Q4_K"), out / "model-F32.gguf", qtype="F32")
    files = {}
    for qtype in QTYPES:
        files[qtype] = out / f"model-{qtype}.gguf"
        done = subprocess.run([quantize, str(f32), str(files[qtype]), qtype], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return files


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


def _complete(srv, prompt: list[int], **extra) -> dict:
    body = {"prompt": prompt, "n_predict": N, "temperature": 0, "ignore_eos": True, "return_tokens": True}
    r = httpx.post(srv.url + "/completion", json={**body, **extra}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


@pytest.mark.parametrize("qtype", QTYPES)
def test_greedy_tokens_equal_transformers_on_the_same_file(quantized, servers, qtype):
    import transformers

    path = quantized[qtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    ours_srv, _ = servers[qtype]
    for prompt in PROMPTS:
        with torch.inference_mode():
            gen = model.generate(
                torch.tensor([prompt]), max_new_tokens=N, min_new_tokens=N, do_sample=False,
                output_scores=True, return_dict_in_generate=True, pad_token_id=0,
            )  # fmt: skip
        ref = gen.sequences[0, len(prompt) :].tolist()
        ours = _complete(ours_srv, prompt)["tokens"]
        i = _first_difference(ours, ref)
        if i is not None:
            top2 = gen.scores[i][0].topk(2).values
            assert float(top2[0] - top2[1]) < EXACT_TIE, (qtype, prompt, i, ours, ref)


@pytest.mark.parametrize("qtype", QTYPES)
def test_greedy_tokens_agree_with_llama_server_within_its_8bit_noise(servers, qtype):
    ours_srv, ref_srv = servers[qtype]
    agreed = 0
    for prompt in PROMPTS:
        ours = _complete(ours_srv, prompt, grammar=ASCII, n_probs=10)
        theirs = _complete(ref_srv, prompt, grammar=ASCII)
        i = _first_difference(ours["tokens"], theirs["tokens"])
        if i is None:
            agreed += 1
            continue
        # where they part, llama-server's token is one of ours that is within its noise of our best
        top = {t["id"]: t["logprob"] for t in ours["completion_probabilities"][i]["top_logprobs"]}
        chosen = theirs["tokens"][i]
        assert chosen in top, (qtype, prompt, i, chosen, top)
        assert max(top.values()) - top[chosen] < MARGIN_NATS, (qtype, prompt, i, chosen, top)
    assert agreed >= 1, f"{qtype}: llama-server parted from us on every prompt"
