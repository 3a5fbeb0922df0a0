"""Rotary position tables: plain, linear and YaRN frequency scaling, computed as transformers computes them.

A `Rope` is one layer's rotary setting; models whose layers differ (Gemma 3's local base 10000 on its
sliding layers) get one per layer, and layers with equal settings share one table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCALINGS = ("none", "linear", "yarn")


@dataclass(frozen=True)
class Yarn:
    """YaRN (rope.scaling.type == "yarn"): transformers' `_compute_yarn_parameters`."""

    factor: float
    orig_ctx: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float | None = None  # None: 0.1 * ln(factor) + 1, applied to cos and sin
    truncate: bool = True  # floor/ceil the correction range (gpt-oss: False)


@dataclass(frozen=True)
class Rope:
    theta: float
    linear: float = 1.0  # positions divided by this (rope.scaling.type == "linear")
    yarn: Yarn | None = None


def _yarn(y: Yarn, theta: float, dim: int) -> tuple[torch.Tensor, float]:
    """Interpolated frequencies below the correction range, extrapolated above, a linear ramp between."""
    attn = (
        y.attn_factor
        if y.attn_factor is not None
        else (0.1 * math.log(y.factor) + 1.0 if y.factor > 1 else 1.0)
    )

    def corr_dim(rot: float) -> float:
        return (dim * math.log(y.orig_ctx / (rot * 2 * math.pi))) / (2 * math.log(theta))

    low, high = corr_dim(y.beta_fast), corr_dim(y.beta_slow)
    if y.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: no zero-width ramp
    pos_freqs = theta ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (y.factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extra = 1 - ramp
    return interpolation * (1 - extra) + extrapolation * extra, attn


def inv_freq(rope: Rope, dim: int) -> tuple[torch.Tensor, float]:
    """The inverse frequencies of `rope` for head dimension `dim`, and the factor cos/sin are scaled by."""
    if rope.yarn is not None:
        return _yarn(rope.yarn, rope.theta, dim)
    inv = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    return inv / rope.linear, 1.0


def tables(
    rope: Rope, dim: int, n_pos: int, device, dtype, freq_factors: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [n_pos, dim] (rotate-half layout) of positions 0..n_pos-1."""
    inv, scale = inv_freq(rope, dim)
    if freq_factors is not None:  # Llama 3.1+: per-dimension frequency factors (llama.cpp freq_factors)
        inv = inv / freq_factors
    freqs = torch.arange(n_pos, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(device, dtype), sin.to(device, dtype)


def from_metadata(meta, arch: str, problem) -> Rope:
    """The model-wide Rope of a GGUF's `{arch}.rope.*` keys; `problem(text)` raises the file's error."""
    theta = meta.number(f"{arch}.rope.freq_base", 10000.0)
    key = f"{arch}.rope.scaling"
    scaling = meta.string(f"{key}.type", "none")
    if scaling not in SCALINGS:
        problem(f"rope scaling {scaling!r} is not supported (supported: {', '.join(SCALINGS)})")
    if scaling == "none":
        return Rope(theta)
    factor = meta.number(f"{key}.factor", 1.0)
    if scaling == "linear":
        return Rope(theta, linear=factor)
    yarn = Yarn(
        factor=factor,
        orig_ctx=meta.integer(f"{key}.original_context_length"),
        beta_fast=meta.number(f"{key}.yarn_beta_fast", 32.0),
        beta_slow=meta.number(f"{key}.yarn_beta_slow", 1.0),
        attn_factor=meta.number(f"{key}.yarn_attn_factor", None),
        truncate=arch != "gpt-oss",  # gpt-oss's reference and transformers' GptOssConfig do not truncate
    )
    if meta.number(f"{key}.yarn_ext_factor", 1.0) != 1.0:
        problem("rope.scaling.yarn_ext_factor other than 1 is not supported")
    if f"{key}.yarn_log_multiplier" in meta.fields:  # DeepSeek's mscale_all_dim
        problem("rope.scaling.yarn_log_multiplier is not supported (YaRN without it only)")
    return Rope(theta, yarn=yarn)
