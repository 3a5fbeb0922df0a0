"""Mixture-of-experts models (issue 10): qwen3moe and Mixtral (llama with experts) as llama.cpp's own
convert_hf_to_gguf.py writes them, against transformers; the routing and expert FFN pieces against
transformers' modules, gpt-oss's included; clear errors for bad expert metadata and tensors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFValueType as T
from ollama_airllm.devtools import tinymoe
from ollama_airllm.engine import Engine, EngineConfig
from ollama_airllm.engine.gguf_file import ModelFileError, open_gguf
from ollama_airllm.engine.moe import Expert, MoeSpec, mix, route

from tests.engine.test_damaged_gguf import _rewrite

PROMPT = [1, 263, 80, 335, 17, 42, 99, 7, 400, 5]
ARCHS = list(tinymoe.ARCHS)


def need_tools(*names: str) -> None:
    """Skip locally when a llama.cpp tool is not set up; fail under CI (tests/setup.d provides them)."""
    for name in names:
        if not os.environ.get(name):
            if os.environ.get("CI"):
                pytest.fail(f"{name} is not set: run the suite through tests/run.sh")
            pytest.skip(f"{name} is not set (tests/setup.d provides it)")


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """Factory: moe(arch, qtype="F32") -> (HF dir, GGUF path), converted by llama.cpp's converter."""
    work = tmp_path_factory.mktemp("moe")

    def make(arch: str, qtype: str = "F32") -> tuple[Path, Path]:
        need_tools("LLAMA_CONVERT_PY", *(("LLAMA_QUANTIZE_BIN",) if qtype != "F32" else ()))
        hf, files = tinymoe.build(work, arch, (qtype,))
        return hf, files[qtype]

    return make


def _hf_logits(hf_dir: Path, tokens: list[int]) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_converter_output_is_read_as_moe(moe, arch):
    _, path = moe(arch)
    spec = open_gguf(path).spec
    assert spec.arch == {"qwen3moe": "qwen3moe", "mixtral": "llama"}[arch]
    assert spec.moe == MoeSpec(n_expert=4, n_used=2, n_ff=tinymoe.EXPERT_FF[arch])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("resident", [None, 0, 1])
def test_f32_logits_equal_transformers(moe, arch, resident):
    """All resident, all streamed, one layer resident: the same logits as transformers' MoE model."""
    hf, path = moe(arch)
    eng = Engine.load(path, EngineConfig(device="cpu", resident_layers=resident, n_ctx=64))
    try:
        ours = eng.logits(PROMPT)
    finally:
        eng.close()
    torch.testing.assert_close(ours, _hf_logits(hf, PROMPT), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_quantized_logits_equal_transformers_on_the_same_file(moe, arch, qtype):
    """llama-quantize's file: qwen3moe against transformers' own gguf_file= loader; Mixtral (which that
    loader reads as a dense llama) against MixtralForCausalLM on gguf-py's dequantization of the file."""
    import transformers

    hf, path = moe(arch, qtype)
    if arch == "qwen3moe":
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
    else:
        ref = tinymoe.reference_model(path, hf)
    with torch.inference_mode():
        want = ref(torch.tensor([PROMPT])).logits[0]
    eng = Engine.load(path, EngineConfig(device="cpu", resident_layers=0, n_ctx=64))
    try:
        torch.testing.assert_close(eng.logits(PROMPT), want, rtol=1e-4, atol=1e-4)
    finally:
        eng.close()


@pytest.mark.parametrize(("resident", "graphs"), [(0, False), (None, True)])
def test_greedy_decode_equals_transformers(moe, resident, graphs):
    """Decode routes one token at a time through the KV cache: 12 greedy tokens as transformers. With
    decode graphs on and everything resident, the MoE layers stay eager: only the head is a run."""
    import transformers

    hf, path = moe("qwen3moe")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = model.generate(torch.tensor([PROMPT]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    eng = Engine.load(path, EngineConfig(device="cpu", resident_layers=resident, n_ctx=64, graphs=graphs))
    try:
        from ollama_airllm.engine import SamplingParams

        res = eng.generate(0, PROMPT, SamplingParams(n_predict=12, temperature=0.0, ignore_eos=True))
    finally:
        eng.close()
    assert res.tokens == ref[0, len(PROMPT) :].tolist()
    n = eng.info.n_layer
    assert (eng.info.graphs.runs == [(n, n + 1)]) if graphs else eng.info.graphs is None


# --- bad expert metadata and tensors: one clear line ----------------------------------------------------


def _load_error(path: Path) -> str:
    with pytest.raises(ModelFileError) as e:
        open_gguf(path)
    return str(e.value)


def test_expert_used_count_must_be_within_expert_count(moe, tmp_path):
    _, path = moe("qwen3moe")
    bad = _rewrite(path, tmp_path / "used.gguf", {"qwen3moe.expert_used_count": (5, T.UINT32, None)})
    assert "metadata qwen3moe.expert_used_count is 5; must be an integer from 1 to 4" in _load_error(bad)
    bad = _rewrite(path, tmp_path / "zero.gguf", {"qwen3moe.expert_used_count": (0, T.UINT32, None)})
    assert "expert_used_count is 0; must be an integer from 1 to 4" in _load_error(bad)


def test_qwen3moe_needs_expert_count(moe, tmp_path):
    _, path = moe("qwen3moe")
    bad = _rewrite(path, tmp_path / "count.gguf", drop={"qwen3moe.expert_count"})
    assert "metadata key 'qwen3moe.expert_count' is missing" in _load_error(bad)


def test_sigmoid_gating_is_refused(moe, tmp_path):
    _, path = moe("mixtral")
    bad = _rewrite(path, tmp_path / "gating.gguf", {"llama.expert_gating_func": (2, T.UINT32, None)})
    assert "llama.expert_gating_func is 2; must be 1 (softmax; sigmoid gating is not supported)" in (
        _load_error(bad)
    )


def test_missing_router_and_wrong_expert_shapes(moe, tmp_path):
    _, path = moe("mixtral")
    bad = _rewrite(path, tmp_path / "router.gguf", tensors={"blk.1.ffn_gate_inp.weight": None})
    assert "tensor 'blk.1.ffn_gate_inp.weight' is missing" in _load_error(bad)
    wrong = np.zeros((4, 256, 511), dtype=np.float32)
    bad = _rewrite(path, tmp_path / "shape.gguf", tensors={"blk.0.ffn_down_exps.weight": wrong})
    assert "tensor 'blk.0.ffn_down_exps.weight' has shape [4, 256, 511], expected [4, 256, 512]" in (
        _load_error(bad)
    )


def test_expert_tensors_in_a_dense_model_are_refused(moe, tmp_path):
    _, path = moe("mixtral")
    bad = _rewrite(path, tmp_path / "dense.gguf", drop={"llama.expert_count", "llama.expert_used_count"})
    want = "tensor 'blk.0.ffn_gate_inp.weight' is an expert router, but metadata key 'llama.expert_count'"
    assert want + " is missing" in _load_error(bad)


def test_unknown_architecture_names_the_supported_ones(moe, tmp_path):
    _, path = moe("qwen3moe")
    bad = _rewrite(path, tmp_path / "arch.gguf", {"general.architecture": ("deepseek2", T.STRING, None)})
    msg = _load_error(bad)
    assert "architecture 'deepseek2' is not supported" in msg and "qwen3moe" in msg and "Mixtral" in msg


# --- the pieces against transformers' modules -----------------------------------------------------------


def _experts_of(gate_up: torch.Tensor, down: torch.Tensor, **biases) -> list[Expert]:
    """Per-expert weights from transformers 5's fused [E, 2*ff, hidden] gate_up and [E, hidden, ff] down."""
    ff = down.shape[2]
    return [
        Expert(gate_up[e, :ff], gate_up[e, ff:], down[e], **{k: v[e] for k, v in biases.items()})
        for e in range(down.shape[0])
    ]


def _mix(h: torch.Tensor, logits: torch.Tensor, experts: list[Expert], spec: MoeSpec) -> torch.Tensor:
    """moe_ffn after the router: route, then mix the selected experts (all are at hand here)."""
    weights, idx = route(logits, spec)
    return mix(h, weights, idx, {e: experts[e] for e in torch.unique(idx).tolist()}, spec)


@pytest.mark.parametrize("norm", [True, False])
def test_softmax_topk_routing_equals_qwen3moe_block(norm):
    import transformers
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    torch.manual_seed(1)
    cfg = transformers.Qwen3MoeConfig(
        hidden_size=32, moe_intermediate_size=16, num_experts=6, num_experts_per_tok=3, norm_topk_prob=norm
    )
    block = Qwen3MoeSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
    h = torch.randn(7, 32)
    spec = MoeSpec(n_expert=6, n_used=3, n_ff=16, norm_topk=norm)
    with torch.no_grad():
        want = block(h[None])[0]
        experts = _experts_of(block.experts.gate_up_proj, block.experts.down_proj)
        got = _mix(h, h @ block.gate.weight.T, experts, spec)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gpt_oss_router_bias_expert_biases_and_swiglu_oai_equal_gpt_oss_mlp():
    """gpt-oss: top-k of the biased logits, softmax over the selected; clamped swiglu with (up + 1);
    gate/up/down biases. transformers keeps gate and up interleaved in [E, hidden, 2*ff]."""
    import transformers
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    torch.manual_seed(2)
    cfg = transformers.GptOssConfig(hidden_size=32, intermediate_size=16, num_local_experts=5,
                                    num_experts_per_tok=2)  # fmt: skip
    mlp = GptOssMLP(cfg).eval()
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 1.0)  # large enough that the 7.0 clamps bite
    h = torch.randn(9, 32)
    ex = mlp.experts
    gu, gub = ex.gate_up_proj, ex.gate_up_proj_bias  # [E, hidden, 2ff], [E, 2ff]: gate ::2, up 1::2
    experts = [
        Expert(
            gu[e, :, ::2].T, gu[e, :, 1::2].T, ex.down_proj[e].T,
            gate_bias=gub[e, ::2], up_bias=gub[e, 1::2], down_bias=ex.down_proj_bias[e],
        )
        for e in range(5)
    ]  # fmt: skip
    spec = MoeSpec(n_expert=5, n_used=2, n_ff=16, gating="topk-softmax", norm_topk=False, act="swiglu-oai")
    with torch.no_grad():
        want = mlp(h[None])[0][0]
        logits = torch.nn.functional.linear(h, mlp.router.weight, mlp.router.bias)
        got = _mix(h, logits, experts, spec)
        gate = torch.nn.functional.linear(h, experts[0].gate, experts[0].gate_bias)
    assert gate.max() > spec.swiglu_limit  # the clamp is exercised
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
