"""The engine's shared types: what a backend provides, what a load reports, what a generation returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from .config import EngineConfig, device_name, dtype_name
from .sampling import TokenProbs

if TYPE_CHECKING:
    from .graphs import GraphStats
    from .tokenizer import Tokenizer


class Cancelled(Exception):
    """should_stop() returned True between two layers."""


class ContextLengthError(ValueError):
    """The prompt does not fit in the slot's context."""

    def __init__(self, n_prompt: int, n_ctx: int) -> None:
        super().__init__(
            f"the prompt has {n_prompt} tokens, which does not fit the context of {n_ctx} tokens"
        )
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


@runtime_checkable
class Constraint(Protocol):
    """A token-level constraint (e.g. a grammar matcher). apply() masks logits in place (-inf = forbidden);
    accept() advances the state; is_terminated() (optional) ends generation like an EOG token."""

    def apply(self, logits: torch.Tensor) -> None: ...

    def accept(self, token: int) -> None: ...


@dataclass
class ExpertStats:
    """A MoE model's expert residency and traffic; the ExpertStore updates the counters as it runs."""

    n_expert: int  # experts per MoE layer
    n_used: int  # experts per token
    n_moe_layers: int
    expert_bytes: int  # raw bytes of one expert (gate + up + down) of a layer
    resident_experts: int  # experts kept on the device for good
    cache_bytes: int  # capacity of the device LRU cache of streamed experts (0: none)
    fetch_all: bool = False  # airllm-style: every expert of a streamed layer is read each pass
    tokens: int = 0  # tokens routed (counted once per forward pass, at the first MoE layer)
    touched: int = 0  # (layer, expert) uses
    hits: int = 0  # uses served by a resident or cached expert
    bytes_read: int = 0  # expert bytes read from the mapped file

    @property
    def hit_rate(self) -> float:
        return self.hits / self.touched if self.touched else 0.0

    @property
    def bytes_per_token(self) -> float:
        return self.bytes_read / self.tokens if self.tokens else 0.0

    def as_json(self) -> dict:
        """The numbers /props' engine object reports."""
        return {
            "n_expert": self.n_expert,
            "n_expert_used": self.n_used,
            "resident_experts": self.resident_experts,
            "cache_bytes": self.cache_bytes,
            "tokens": self.tokens,
            "bytes_read_per_token": round(self.bytes_per_token),
            "cache_hit_rate": round(self.hit_rate, 4),
        }


@dataclass
class EngineInfo:
    """What was loaded and where it lives; enough for llama.cpp-style log lines."""

    backend: str  # "gguf" | "airllm"
    architecture: str
    model_name: str
    file_size: int
    file_type: str
    n_vocab: int
    n_ctx_train: int
    n_ctx: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_params: int  # total parameters: the element counts of all weight tensors
    vocab_type: int  # llama.cpp's numbering: 1 SPM, 2 BPE, 3 WPM, 4 UGM (0: none of these)
    chat_template: str | None
    device: str
    device_name: str
    dtype: str
    n_slots: int
    n_resident_layers: int
    n_streamed_layers: int
    head_resident: bool
    resident_bytes: int  # weights kept on the device
    host_bytes: int  # weights read from the file per pass (streamed units + token embedding)
    kv_bytes: int  # all slots
    staging_bytes: int
    streamed_bytes_per_pass: int  # bytes read from the file per forward pass (one token during decode)
    bos_id: int | None = None
    eos_id: int | None = None
    eog_ids: tuple[int, ...] = ()
    experts: ExpertStats | None = None  # MoE models only (live counters)
    compute_bytes: int = 0  # work buffers + activations (llama.cpp's compute buffer)
    graphs: GraphStats | None = None  # decode graphs of the resident runs (live counters)


def build_info(
    backend: str,
    tokenizer: Tokenizer,
    config: EngineConfig,
    device: torch.device,
    dtype: torch.dtype,
    **model,
) -> EngineInfo:
    """EngineInfo from the model's own facts (`model`: the fields a backend knows) and what every backend
    shares: the device, dtype, slots and the tokenizer's special tokens."""
    return EngineInfo(
        backend=backend,
        device=str(device),
        device_name=device_name(device),
        dtype=dtype_name(dtype),
        n_slots=config.n_slots,
        vocab_type=tokenizer.vocab_type,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
        eog_ids=tuple(sorted(tokenizer.eog_ids)),
        **model,
    )


def kv_cache_bytes(n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int, dtype: torch.dtype) -> int:
    """Bytes of one sequence's K and V caches: [n_layer, n_head_kv, n_ctx, head_dim] each."""
    item = torch.empty((), dtype=dtype).element_size()
    return 2 * n_layer * n_head_kv * n_ctx * head_dim * item


@dataclass
class GenerationResult:
    tokens: list[int]
    text: str
    stop_reason: str  # "eos" | "limit" | "word" | "cancelled" | "context"
    stopping_word: str = ""
    n_cached: int = 0  # prompt tokens whose KV was reused
    n_prompt: int = 0  # prompt tokens processed now
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0
    seed: int = 0
    probs: list[TokenProbs] = field(default_factory=list)

    @property
    def n_decoded(self) -> int:
        return len(self.tokens)


class Backend(Protocol):
    """What Engine needs from a model implementation (GGUF streaming, or airllm for HF directories)."""

    tokenizer: Tokenizer

    def new_cache(self, n_ctx: int): ...

    def forward(
        self, cache, tokens: list[int], start: int, want: str, should_stop: Callable[[], bool] | None
    ) -> torch.Tensor: ...

    def truncate(self, cache, n: int) -> None: ...

    def close(self) -> None: ...
