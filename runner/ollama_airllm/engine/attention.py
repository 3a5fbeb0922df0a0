"""Where a chunk of tokens sits in the KV cache, and causal attention with windows, sinks and soft-caps.

A chunk's queries sit at positions pos..pos+T-1 and see the cached keys 0..pos+T-1: a key at p is visible
to a query at q when p <= q and, on a sliding layer, q - p < window (llama.cpp's LLAMA_SWA_TYPE_STANDARD
and transformers' sliding_window_causal mask).

Two placements say how a layer reads its rope rows, writes its K/V and which keys it attends to:
- Span: positions given as Python ints, every shape follows them (prefill, and decode by default);
- Fixed: one token whose position is a device tensor, attending to the first `length` cache rows under a
  mask, so every shape is fixed and one captured CUDA/HIP graph serves each position below `length`.

Without sinks or a soft-cap attention is one SDPA call; with either, it is transformers' eager attention:
scores in the compute dtype, the sink logit of each head appended as one more column before a float32
softmax and dropped after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def visible(T: int, pos: int, window: int | None, device) -> torch.Tensor:
    """[T, pos+T] bool: which cached key each query of the chunk may attend to."""
    q = torch.arange(pos, pos + T, device=device)[:, None]
    k = torch.arange(pos + T, device=device)[None, :]
    ok = k <= q
    return ok & (q - k < window) if window is not None else ok


@dataclass(frozen=True)
class Span:
    """T tokens at positions pos..pos+T-1, attending to the cached keys 0..pos+T-1."""

    pos: int
    T: int

    def rows(self, table: torch.Tensor) -> torch.Tensor:
        """The chunk's rows of a rope table [n_pos, hd], as [T, 1, hd]."""
        return table[self.pos : self.pos + self.T, None, :]

    def keep(self, cache, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [T, n_head_kv, hd] into layer i's cache; the keys and values to attend to."""
        end = self.pos + self.T
        cache.k[i, :, self.pos : end] = k.transpose(0, 1)
        cache.v[i, :, self.pos : end] = v.transpose(0, 1)
        return cache.k[i, :, :end], cache.v[i, :, :end]

    def mask(self, window: int | None, device) -> torch.Tensor:
        return visible(self.T, self.pos, window, device)

    def causal(self) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) for SDPA without a window: a chunk at offset pos sees every cached key up
        to its own position (a lower-right causal mask); one token sees them all."""
        if self.T == 1:
            return None, False
        return (causal_lower_right(self.T, self.pos + self.T), False) if self.pos else (None, True)


@dataclass(frozen=True)
class Fixed:
    """One token at the position held by `pos` (a [1] int64 tensor on the device), attending to the first
    `length` cache rows; rows past the position are masked out, so the shapes do not depend on it."""

    pos: torch.Tensor
    length: int
    T: int = 1
    _keys: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", torch.arange(self.length, device=self.pos.device))

    def rows(self, table: torch.Tensor) -> torch.Tensor:
        return table.index_select(0, self.pos)[:, None, :]

    def keep(self, cache, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache.k[i].index_copy_(1, self.pos, k.transpose(0, 1))
        cache.v[i].index_copy_(1, self.pos, v.transpose(0, 1))
        return cache.k[i, :, : self.length], cache.v[i, :, : self.length]

    def mask(self, window: int | None, device=None) -> torch.Tensor:
        """[1, length] bool: the rows up to the position (and within the window)."""
        ok = self._keys <= self.pos
        return (ok & (self.pos - self._keys < window) if window is not None else ok)[None, :]

    def causal(self) -> tuple[torch.Tensor, bool]:
        return self.mask(None), False


Placement = Span | Fixed


def attend(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    sinks: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q [T, n_head, hd] against keys/values [n_head_kv, L, hd] where mask [T, L] -> [T, n_head, hd]."""
    T, nh, _ = q.shape
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
