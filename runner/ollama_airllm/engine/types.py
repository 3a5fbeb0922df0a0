"""The engine's shared types: what a backend provides, what a load reports, what a generation returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from .config import EngineConfig, device_name, dtype_name
from .sampling import TokenProbs

if TYPE_CHECKING:
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
