"""Causal attention with a sliding window, attention sinks and logit soft-capping.

The queries of one chunk sit at positions pos..pos+T-1 and see the cached keys 0..pos+T-1: a key at p is
visible to a query at q when p <= q and, on a sliding layer, q - p < window (llama.cpp's
LLAMA_SWA_TYPE_STANDARD and transformers' sliding_window_causal mask). Without sinks or a soft-cap this
is one SDPA call; with either, it is transformers' eager attention: scores in the compute dtype, the
sink logit of each head appended as one more column before a float32 softmax and dropped after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def visible(T: int, pos: int, window: int | None, device) -> torch.Tensor:
    """[T, pos+T] bool: which cached key each query of the chunk may attend to."""
    q = torch.arange(pos, pos + T, device=device)[:, None]
    k = torch.arange(pos + T, device=device)[None, :]
    ok = k <= q
    return ok & (q - k < window) if window is not None else ok


def attend(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    pos: int,
    *,
    scale: float,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q [T, n_head, hd] against keys/values [n_head_kv, pos+T, hd] -> [T, n_head, hd]."""
    T, nh, _ = q.shape
    mask = visible(T, pos, window, q.device)
    qh = q.transpose(0, 1)  # [nh, T, hd]
    if sinks is None and softcap is None:
        o = F.scaled_dot_product_attention(
            qh[None], keys[None], values[None], attn_mask=mask, scale=scale, enable_gqa=keys.shape[0] != nh
        )
        return o[0].transpose(0, 1)
    rep = nh // keys.shape[0]
    k = keys.repeat_interleave(rep, dim=0)
    v = values.repeat_interleave(rep, dim=0)
    s = torch.matmul(qh, k.transpose(1, 2)) * scale  # [nh, T, L]
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    s = s.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.to(s.dtype).reshape(nh, 1, 1).expand(nh, T, 1)], dim=-1)
        s = s - s.max(dim=-1, keepdim=True).values
    p = F.softmax(s, dim=-1, dtype=torch.float32).to(v.dtype)
    if sinks is not None:
        p = p[..., :-1]
    return torch.matmul(p, v).transpose(0, 1)
