"""Gemma 3 (dense) and gpt-oss: their metadata, tensor tables and repeating layer.

As llama.cpp reads the GGUF its converter writes (conversion/gemma.py, conversion/gpt_oss.py) and as
transformers' modeling_gemma3 / modeling_gpt_oss compute:

- which layers slide: `{arch}.attention.sliding_window` (the window) and
  `{arch}.attention.sliding_window_pattern` (a per-layer bool array, or every n-th layer global; the
  converter writes neither pattern key for either arch, so llama.cpp's defaults apply: gemma3 6, gpt-oss 2);
- sliding layers' rope: gemma3 plain at `rope.freq_base_swa` (default 10000), the global layers at
  `rope.freq_base` with the file's scaling; gpt-oss the same YaRN everywhere (base_swa if given);
- gemma3: embeddings times sqrt(n_embd), norms whose weights the converter stored as 1 + w, q/k norms,
  post-attention and post-FFN norms, GELU-tanh gated MLP, queries scaled by 1/sqrt(key_length) (by
  1/sqrt(n_embd / n_head) for the 62-layer 27B, as llama.cpp), final (and attention) logit soft-capping;
- gpt-oss: q/k/v/o biases, a per-head attention sink logit in the softmax, `post_attention_norm` as the
  FFN's input norm, the MoE FFN of moe.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from gguf import GGUFValueType as T

from .attention import Placement, attend
from .linear import linear
from .rope import Rope

ARCHS = ("gemma3", "gpt-oss")
DEFAULT_PATTERN = {"gemma3": 6, "gpt-oss": 2}


@dataclass(frozen=True)
class LayerAttn:
    """One layer's attention: its sliding window (None: every earlier position) and its rope."""

    window: int | None
    rope: Rope


@dataclass(frozen=True)
class Layout:
    """What gemma3 / gpt-oss add to the llama-family spec."""

    layers: tuple[LayerAttn, ...]
    q_scale: float
    attn_softcap: float | None = None
    final_softcap: float | None = None
    embed_scale: float | None = None


def layout(
    meta, arch: str, n_layer: int, n_embd: int, n_head: int, head_dim: int, rope: Rope
) -> Layout | None:
    """The Layout of a gemma3 / gpt-oss GGUF from its metadata; None for the other architectures."""
    if arch not in ARCHS:
        return None
    window = meta.integer(f"{arch}.attention.sliding_window", 0, lo=0)
    swa = _swa_layers(meta, arch, n_layer) if window else [False] * n_layer
    if arch == "gemma3":
        local = Rope(meta.number(f"{arch}.rope.freq_base_swa", 10000.0))
        scale = 1 / math.sqrt(n_embd // n_head if n_layer == 62 else head_dim)  # llama.cpp: integers
    else:
        local = replace(rope, theta=meta.number(f"{arch}.rope.freq_base_swa", rope.theta))
        scale = 1 / math.sqrt(head_dim)
    return Layout(
        layers=tuple(LayerAttn(window, local) if s else LayerAttn(None, rope) for s in swa),
        q_scale=scale,
        attn_softcap=meta.number(f"{arch}.attn_logit_softcapping", None),
        final_softcap=meta.number(f"{arch}.final_logit_softcapping", None),
        embed_scale=math.sqrt(n_embd) if arch == "gemma3" else None,
    )


def _swa_layers(meta, arch: str, n_layer: int) -> list[bool]:
    """llama.cpp's load_swa_pattern: a bool per layer, or every n-th layer (the last of n) is global."""
    key = f"{arch}.attention.sliding_window_pattern"
    f = meta.fields.get(key)
    if f is not None and f.types[0] == T.ARRAY:
        flags = meta.array(key, frozenset({T.BOOL}), "booleans")
        if len(flags) != n_layer:
            meta.bad(key, f"an array of {n_layer} booleans (one per layer)")
        return [bool(x) for x in flags]
    n = meta.integer(key, DEFAULT_PATTERN[arch], lo=0)
    return [n == 0 or i % n < n - 1 for i in range(n_layer)]


# --- tensors ---------------------------------------------------------------------------------------------

_EXTRA = {
    "gemma3": {
        "post_attention_norm.weight": lambda s: (s.n_embd,),
        "post_ffw_norm.weight": lambda s: (s.n_embd,),
        "attn_q_norm.weight": lambda s: (s.head_dim,),
        "attn_k_norm.weight": lambda s: (s.head_dim,),
    },
    "gpt-oss": {
        "post_attention_norm.weight": lambda s: (s.n_embd,),
        "attn_sinks.weight": lambda s: (s.n_head,),
        "attn_q.bias": lambda s: (s.n_head * s.head_dim,),
        "attn_k.bias": lambda s: (s.n_head_kv * s.head_dim,),
        "attn_v.bias": lambda s: (s.n_head_kv * s.head_dim,),
        "attn_output.bias": lambda s: (s.n_embd,),
    },
}
_NOT_IN = {"gpt-oss": ("ffn_norm.weight",)}  # its FFN input norm is post_attention_norm
_SEPARATE_QKV = tuple(f"attn_{a}.{p}" for a in "qkv" for p in ("weight", "bias"))
# Ollama's converter fuses gpt-oss's q/k/v (OpenAI's original checkpoints), as llama.cpp also reads them
_FUSED_QKV = {
    "attn_qkv.weight": lambda s: ((s.n_head + 2 * s.n_head_kv) * s.head_dim, s.n_embd),
    "attn_qkv.bias": lambda s: ((s.n_head + 2 * s.n_head_kv) * s.head_dim,),
}


def tensor_tables(spec, layer: dict, required: dict, allowed: dict) -> tuple[dict, dict]:
    """(required, allowed) tensor tables of one layer with gemma3's / gpt-oss's own tensors."""
    extra = _EXTRA.get(spec.arch)
    if extra is None:
        return required, allowed
    drop = _NOT_IN.get(spec.arch, ())
    if spec.arch == "gpt-oss" and "attn_qkv.weight" in layer:
        drop, extra = (
            (*drop, *_SEPARATE_QKV),
            {k: v for k, v in extra.items() if k not in _SEPARATE_QKV} | _FUSED_QKV,
        )
    required = {k: v for k, v in required.items() if k not in drop} | extra
    return required, {k: v for k, v in allowed.items() if k not in drop} | extra


# --- forward ---------------------------------------------------------------------------------------------


def gemma_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma3RMSNorm with the converter's folded weight (1 + w): scale in float32, then cast."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * w.float()).type_as(x)


def layer(tf, w: dict, x: torch.Tensor, cache, i: int, at: Placement) -> torch.Tensor:
    """One gemma3 / gpt-oss layer of the Transformer `tf` (its spec, rope tables and FFN)."""
    spec, eps = tf.spec, tf.spec.rms_eps
    if spec.arch == "gemma3":
        a = _attention(tf, w, gemma_norm(x, w["attn_norm.weight"], eps), cache, i, at, gemma_norm)
        x = x + gemma_norm(a, w["post_attention_norm.weight"], eps)
        h = gemma_norm(x, w["ffn_norm.weight"], eps)
        f = linear(
            F.gelu(linear(h, w["ffn_gate.weight"]), approximate="tanh") * linear(h, w["ffn_up.weight"]),
            w["ffn_down.weight"],
        )
        return x + gemma_norm(f, w["post_ffw_norm.weight"], eps)
    from .model import rms_norm

    x = x + _attention(tf, w, rms_norm(x, w["attn_norm.weight"], eps), cache, i, at, rms_norm)
    return x + tf._ffn(w, rms_norm(x, w["post_attention_norm.weight"], eps), i)


def _attention(tf, w: dict, h: torch.Tensor, cache, i: int, at: Placement, norm) -> torch.Tensor:
    """Self-attention of layer i: biases, q/k norms, this layer's rope, window, sinks and soft-cap."""
    spec, lay = tf.spec, tf.spec.layout
    T, nh, nkv, hd = h.shape[0], spec.n_head, spec.n_head_kv, spec.head_dim
    if "attn_qkv.weight" in w:
        q, k, v = linear(h, w["attn_qkv.weight"], w["attn_qkv.bias"]).split([nh * hd, nkv * hd, nkv * hd], -1)
    else:
        q, k, v = (linear(h, w[f"attn_{a}.weight"], w.get(f"attn_{a}.bias")) for a in "qkv")
    q, k, v = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd)
    if "attn_q_norm.weight" in w:
        q = norm(q, w["attn_q_norm.weight"], spec.rms_eps)
        k = norm(k, w["attn_k_norm.weight"], spec.rms_eps)
    q, k = tf.rotate(i, at, q, k)
    keys, values = at.keep(cache, i, k, v)
    o = attend(
        q,
        keys,
        values,
        at.mask(lay.layers[i].window, q.device),
        scale=lay.q_scale,
        sinks=w.get("attn_sinks.weight"),
        softcap=lay.attn_softcap,
    )
    return linear(o.reshape(T, nh * hd), w["attn_output.weight"], w.get("attn_output.bias"))


def head_logits(tf, logits: torch.Tensor) -> torch.Tensor:
    """Final logit soft-capping: cap * tanh(logits / cap), where the file sets a cap."""
    cap = tf.spec.layout.final_softcap if tf.spec.layout is not None else None
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap
