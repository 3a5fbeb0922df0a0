"""The mixture-of-experts FFN: route each token to its top-k experts, run only those, mix by the gates.

Matches transformers' modeling code (Qwen3MoeSparseMoeBlock, MixtralSparseMoeBlock, GptOssMLP):

- gating "softmax": softmax over all router logits in float32, top-k, then (norm_topk) divide by the sum of
  the selected (Qwen3-MoE with norm_topk_prob, Mixtral; llama.cpp always renormalises both);
- gating "topk-softmax": top-k of the logits (router bias included), softmax over the selected (gpt-oss);
- activation "silu-glu": down(silu(gate(h)) * up(h)); "swiglu-oai" (gpt-oss): gate clamped to <= limit,
  up to [-limit, limit], out = down((up + 1) * gate * sigmoid(alpha * gate)); optional expert biases.

Tokens are grouped by expert (one matmul per selected expert over its tokens), expert outputs are scaled
by their gate weights in float32 and summed in ascending expert order, as transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .linear import QWeight, linear

if TYPE_CHECKING:
    from .experts import ExpertStore

GATINGS = ("softmax", "topk-softmax")
ACTIVATIONS = ("silu-glu", "swiglu-oai")


@dataclass(frozen=True)
class MoeSpec:
    """A model's expert layers, from GGUF metadata."""

    n_expert: int
    n_used: int  # experts per token (top-k)
    n_ff: int  # one expert's FFN width
    gating: str = "softmax"  # one of GATINGS
    norm_topk: bool = True  # "softmax" gating: renormalise the selected experts' weights to sum 1
    act: str = "silu-glu"  # one of ACTIVATIONS
    swiglu_alpha: float = 1.702  # "swiglu-oai" only
    swiglu_limit: float = 7.0


# What an architecture's expert layers do when its GGUF metadata does not say (llama.cpp's graphs).
ARCH_DEFAULTS: dict[str, dict] = {
    "llama": {"gating": "softmax", "norm_topk": True},
    "qwen3moe": {"gating": "softmax", "norm_topk": True},
    "gpt-oss": {"gating": "topk-softmax", "norm_topk": False, "act": "swiglu-oai"},
}


@dataclass
class Expert:
    """One expert's weights, ready for linear(): dense tensors or QWeight; biases dense or None."""

    gate: torch.Tensor | QWeight
    up: torch.Tensor | QWeight
    down: torch.Tensor | QWeight
    gate_bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None


def route(logits: torch.Tensor, spec: MoeSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights float32 [T, k], expert ids [T, k]) from router logits [T, n_expert]."""
    if spec.gating == "topk-softmax":
        top, idx = torch.topk(logits, spec.n_used, dim=-1)
        return F.softmax(top, dim=-1, dtype=top.dtype).float(), idx
    probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    top, idx = torch.topk(probs, spec.n_used, dim=-1)
    if spec.norm_topk:
        top = top / top.sum(dim=-1, keepdim=True)
    return top, idx


def expert_ffn(h: torch.Tensor, e: Expert, spec: MoeSpec) -> torch.Tensor:
    """One expert's FFN on the hidden states h [n, n_embd]."""
    gate = linear(h, e.gate, e.gate_bias)
    up = linear(h, e.up, e.up_bias)
    if spec.act == "swiglu-oai":
        gate = gate.clamp(max=spec.swiglu_limit)
        up = up.clamp(min=-spec.swiglu_limit, max=spec.swiglu_limit)
        act = (up + 1) * (gate * torch.sigmoid(gate * spec.swiglu_alpha))
    else:
        act = F.silu(gate) * up
    return linear(act, e.down, e.down_bias)


def moe_ffn(
    w: dict, h: torch.Tensor, layer: int, spec: MoeSpec, experts: ExpertStore
) -> torch.Tensor:
    """The MoE FFN of `layer` on the normed hidden states h [T, n_embd]: route, fetch, mix."""
    logits = linear(h, w["ffn_gate_inp.weight"], w.get("ffn_gate_inp.bias"))
    weights, idx = route(logits, spec)
    selected = torch.unique(idx).tolist()  # sorted: the union of the batch's experts
    return mix(h, weights, idx, experts.fetch(layer, selected, n_tokens=h.shape[0]), spec)


def mix(
    h: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, experts: dict[int, Expert], spec: MoeSpec
) -> torch.Tensor:
    """Sum over each token's selected experts of weight * expert_ffn, one matmul per expert."""
    out = torch.zeros_like(h)
    for e in sorted(experts):
        tok, pos = torch.where(idx == e)
        y = expert_ffn(h[tok], experts[e], spec)
        # `tok` has no repeats (a token selects an expert once), so this equals index_add_, which the CPU
        # parallelises even for one row: 46 ms instead of 5 us for [1, 1024] with other jobs running
        out[tok] += (y.float() * weights[tok, pos, None]).to(out.dtype)
    return out
