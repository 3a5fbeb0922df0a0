"""The llama-family forward pass (llama, mistral, qwen2, qwen3) over streamed weights (torch.nn.functional).

Gemma 3 and gpt-oss layers (sliding windows, sinks, per-layer rope, soft-caps) are in archs.py.

The same matmuls as transformers' modeling code: RMSNorm in float32, rotate-half RoPE, SDPA attention with
grouped KV heads, SwiGLU MLP. GGUF's Q/K rotary permutation (llama) is undone on the projected activations
(q/k rows are permuted, so the output columns come out interleaved; one reshape-transpose per head
restores HF order), which costs no weight copy and keeps F32 weights usable in place from the mapped file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import archs
from . import rope as rotary
from .attention import Placement, Span
from .gguf_file import ModelSpec
from .graphs import DecodeGraphs
from .linear import linear
from .moe import moe_ffn
from .types import Cancelled, kv_cache_bytes
from .weights import WeightStore

if TYPE_CHECKING:
    from .experts import ExpertStore


@dataclass
class KVCache:
    """One sequence's keys and values: [n_layer, n_head_kv, n_ctx, head_dim] each."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def allocate(cls, spec: ModelSpec, n_ctx: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (spec.n_layer, spec.n_head_kv, n_ctx, spec.head_dim)
        return cls(
            torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
        )

    @property
    def n_ctx(self) -> int:
        return self.k.shape[2]

    @staticmethod
    def bytes_for(spec: ModelSpec, n_ctx: int, dtype: torch.dtype) -> int:
        return kv_cache_bytes(spec.n_layer, spec.n_head_kv, spec.head_dim, n_ctx, dtype)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalize in float32, then scale in the input dtype."""
    dt = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w.to(dt) * h.to(dt)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Transformer:
    """Runs the layers of one model over a WeightStore."""

    def __init__(
        self,
        spec: ModelSpec,
        store: WeightStore,
        max_ctx: int,
        n_batch: int,
        experts: ExpertStore | None = None,
        graphs: bool | None = None,
    ) -> None:
        """graphs: one-token decode through graphs.DecodeGraphs (None: where the device captures them, CUDA
        and HIP; True on the CPU runs the same fixed-shape steps eagerly)."""
        self.spec = spec
        self.store = store
        self.n_batch = n_batch
        self.experts = experts  # MoE models: the routed experts' weights
        dev, dt = store.device, store.dtype
        ropes = [spec.rope or rotary.Rope(spec.rope_theta, spec.rope_linear_factor)] * spec.n_layer
        if spec.layout is not None:  # gemma3 / gpt-oss: a rope per layer (equal ones share a table)
            ropes = [a.rope for a in spec.layout.layers]
        made = {r: rotary.tables(r, spec.head_dim, max_ctx, dev, dt, store.rope_freqs) for r in set(ropes)}
        self.layer_rope = [made[r] for r in ropes]
        capture = dev.type == "cuda"
        self.graphs = DecodeGraphs(self, capture) if (capture if graphs is None else graphs) else None

    def forward(
        self,
        cache: KVCache | None,
        tokens: list[int],
        start: int,
        want: str = "last",
        should_stop: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Run `tokens` at positions start.. through every layer, writing their K/V into `cache`.

        want: "last" -> logits of the last token [n_vocab]; "all" -> logits [T, n_vocab];
        "hidden" -> final normalized hidden states [T, n_embd]. Raises Cancelled between layers.
        cache None: attention only within `tokens` (a temporary cache is used).
        A slot's one-token "last" step goes through the decode graphs' resident runs, where there are any.
        """
        spec, store = self.spec, self.store
        one = len(tokens) == 1 and want == "last" and cache is not None  # a decode step of a slot
        graphs = self.graphs if one and self.graphs is not None and self.graphs.runs else None
        if cache is None:
            cache = KVCache.allocate(spec, start + len(tokens), store.device, store.dtype)
        with torch.inference_mode():
            x = store.embed(tokens)
            if spec.layout is not None and spec.layout.embed_scale is not None:  # gemma3, compute dtype
                x = x * torch.tensor(spec.layout.embed_scale, dtype=x.dtype)
            i = -1
            while (i := i + 1) < spec.n_layer:
                if should_stop is not None and should_stop():
                    raise Cancelled
                if graphs is not None and i in graphs.runs:
                    store.prefetch(store.next_streamed(i))
                    end = graphs.runs[i]
                    x, i = graphs.run(i, x, cache, start), end - 1
                    if end > spec.n_layer:  # the run ended with the head: x holds the logits
                        return x.clone()
                    continue
                w = store.get(i)
                try:
                    store.prefetch(store.next_streamed(i))
                    for c0 in range(0, len(tokens), self.n_batch):
                        if c0 and should_stop is not None and should_stop():
                            raise Cancelled  # long prompts: also between chunks of one layer
                        c1 = min(c0 + self.n_batch, len(tokens))
                        x[c0:c1] = self._layer(w, x[c0:c1], cache, i, Span(start + c0, c1 - c0))
                finally:
                    del w
                    store.done(i)  # after the layer's kernels are queued (CUDA: frees its staging slot)
            if should_stop is not None and should_stop():
                raise Cancelled
            head = spec.n_layer
            if graphs is not None and head in graphs.runs:
                store.prefetch(store.next_streamed(head))
                return graphs.run(head, x, cache, start).clone()
            w = store.get(head)
            try:
                store.prefetch(store.next_streamed(head))  # the next pass's first streamed layer
                return self._head(w, x[-1:] if want == "last" else x, want)
            finally:
                del w
                store.done(head)

    def rotate(self, i: int, at: Placement, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q [T, n_head, hd] and k [T, n_head_kv, hd] rotated by layer i's rope at the chunk's positions."""
        cos, sin = (at.rows(t) for t in self.layer_rope[i])
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin

    def _head(self, w: dict[str, torch.Tensor], x: torch.Tensor, want: str) -> torch.Tensor:
        norm = archs.gemma_norm if self.spec.arch == "gemma3" else rms_norm
        h = norm(x, w["output_norm.weight"], self.spec.rms_eps)
        if want == "hidden":
            return h.float()
        out = torch.cat(
            [
                linear(h[a : a + self.n_batch], w["output.weight"]).float()
                for a in range(0, h.shape[0], self.n_batch)
            ]
        )
        out = archs.head_logits(self, out)
        return out[0] if want == "last" else out

    def _layer(self, w: dict, x: torch.Tensor, cache: KVCache, i: int, at: Placement) -> torch.Tensor:
        """One repeating layer at the chunk's placement: x + attention(norm(x)), then + ffn(norm(x))."""
        if self.spec.layout is not None:  # gemma3 / gpt-oss
            return archs.layer(self, w, x, cache, i, at)
        eps = self.spec.rms_eps
        x = x + self._attention(w, rms_norm(x, w["attn_norm.weight"], eps), cache, i, at)
        return x + self._ffn(w, rms_norm(x, w["ffn_norm.weight"], eps), i)

    def _attention(self, w: dict, h: torch.Tensor, cache: KVCache, i: int, at: Placement) -> torch.Tensor:
        """Self-attention of the normed hidden states h at the chunk's placement, through layer i's cache."""
        spec = self.spec
        T, nh, nkv, hd = h.shape[0], spec.n_head, spec.n_head_kv, spec.head_dim
        q = linear(h, w["attn_q.weight"], w.get("attn_q.bias")).view(T, nh, hd)
        k = linear(h, w["attn_k.weight"], w.get("attn_k.bias")).view(T, nkv, hd)
        v = linear(h, w["attn_v.weight"], w.get("attn_v.bias")).view(T, nkv, hd)
        if spec.rope_permuted:  # GGUF rows (pairs interleaved) -> HF rows (rotate-half halves)
            q = q.view(T, nh, hd // 2, 2).transpose(-1, -2).reshape(T, nh, hd)
            k = k.view(T, nkv, hd // 2, 2).transpose(-1, -2).reshape(T, nkv, hd)
        if "attn_q_norm.weight" in w:
            q = rms_norm(q, w["attn_q_norm.weight"], spec.rms_eps)
            k = rms_norm(k, w["attn_k_norm.weight"], spec.rms_eps)
        q, k = self.rotate(i, at, q, k)
        keys, values = at.keep(cache, i, k, v)
        mask, causal = at.causal()
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            keys[None],
            values[None],
            attn_mask=mask,
            is_causal=causal,
            enable_gqa=nkv != nh,
        )
        o = o[0].transpose(0, 1).reshape(T, nh * hd)
        return linear(o, w["attn_output.weight"])

    def _ffn(self, w: dict[str, torch.Tensor], h: torch.Tensor, i: int) -> torch.Tensor:
        """The SwiGLU MLP of layer i on the normed hidden states h (MoE layers: the routed experts')."""
        if "ffn_gate_inp.weight" in w:
            return moe_ffn(w, h, i, self.spec.moe, self.experts)
        return linear(
            F.silu(linear(h, w["ffn_gate.weight"])) * linear(h, w["ffn_up.weight"]), w["ffn_down.weight"]
        )
