"""The Engine: load a model, keep per-slot KV caches, generate tokens, embed text."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from .config import EngineConfig, device_free_bytes, device_name, resolve_device, resolve_dtype
from .model import Cancelled
from .sampling import Sampler, SamplingParams, TokenProbs, token_probs
from .textstream import TextStream
from .tokenizer import Tokenizer

log = logging.getLogger("ollama_airllm.engine")

# Prompt tokens per sweep of the layers: bounds the activations kept for a sweep ([tokens, n_embd]).
SWEEP_TOKENS = 16384


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


class _Slot:
    def __init__(self, cache) -> None:
        self.cache = cache
        self.tokens: list[int] = []  # tokens whose K/V are in the cache, in order
        self.lock = threading.Lock()


class Engine:
    """A loaded model with `n_slots` independent sequences. Thread-safe: device work is serialized."""

    def __init__(self, backend: Backend, info: EngineInfo, config: EngineConfig) -> None:
        self.backend = backend
        self.info = info
        self.config = config
        self.tokenizer: Tokenizer = backend.tokenizer
        self._compute = threading.Lock()
        self._slots = [_Slot(backend.new_cache(info.n_ctx)) for _ in range(info.n_slots)]

    @classmethod
    def load(cls, path: str | os.PathLike, config: EngineConfig | None = None) -> Engine:
        """Load a GGUF file (any filename, e.g. an Ollama blob) or an HF safetensors dir (via airllm)."""
        config = config or EngineConfig()
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        path = Path(path)
        if path.is_dir():
            from .hf_airllm import load_airllm

            backend, info = load_airllm(path, config, device, dtype)
        else:
            backend, info = _load_gguf(path, config, device, dtype)
        log.info(
            "loaded %s: %d/%d layers resident on %s, %.1f MiB resident, %.1f MiB streamed per token",
            info.model_name,
            info.n_resident_layers,
            info.n_layer,
            info.device_name,
            info.resident_bytes / 2**20,
            info.streamed_bytes_per_pass / 2**20,
        )
        return cls(backend, info, config)

    @property
    def n_slots(self) -> int:
        return len(self._slots)

    def slot_tokens(self, slot: int) -> list[int]:
        """The tokens whose K/V the slot holds (the reusable prefix for the next request)."""
        return list(self._slots[slot].tokens)

    def clear_slot(self, slot: int) -> None:
        s = self._slots[slot]
        with s.lock:
            s.tokens = []
            self.backend.truncate(s.cache, 0)

    def close(self) -> None:
        self.backend.close()

    # --- generation ----------------------------------------------------------------------------------------

    def generate(
        self,
        slot: int,
        prompt_tokens: list[int],
        params: SamplingParams | None = None,
        on_token: Callable[[int, str, TokenProbs | None], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        constraint: Constraint | None = None,
    ) -> GenerationResult:
        """Continue `prompt_tokens` in `slot`, reusing its KV cache for the longest common prefix.

        on_token(token_id, text_piece, probs) is called for every generated token except EOG; text_piece is
        the text that became safe to show (may be "" while a possible stop string is held back). When
        generation ends on EOG or cancellation with text still held back, one last on_token(-1, text, None)
        delivers it. result.text is always the full text.
        Raises ContextLengthError when the prompt does not fit, ValueError for bad token ids.
        """
        params = params or SamplingParams()
        if not 0 <= slot < len(self._slots):
            raise ValueError(f"slot {slot} does not exist (this engine has {len(self._slots)} slots)")
        s = self._slots[slot]
        prompt = [int(t) for t in prompt_tokens]
        n_ctx = self.info.n_ctx
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= n_ctx:
            raise ContextLengthError(len(prompt), n_ctx)
        bad = [t for t in prompt if not 0 <= t < self.info.n_vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.info.n_vocab - 1})")
        with s.lock:
            return self._generate(s, prompt, params, on_token, should_stop, constraint)

    def _generate(self, s: _Slot, prompt, params, on_token, should_stop, constraint) -> GenerationResult:
        n_ctx = self.info.n_ctx
        n_cached = 0
        for a, b in zip(s.tokens, prompt, strict=False):
            if a != b:
                break
            n_cached += 1
        n_cached = min(n_cached, len(prompt) - 1)  # always recompute the last prompt token
        s.tokens = s.tokens[:n_cached]
        self.backend.truncate(s.cache, n_cached)
        sampler = Sampler(params, n_ctx, prompt)
        stream = TextStream(params.stop)
        res = GenerationResult(
            [], "", "limit", n_cached=n_cached, n_prompt=len(prompt) - n_cached, seed=sampler.seed
        )
        t0 = time.perf_counter()
        try:
            logits = self._forward(s, prompt[n_cached:], should_stop)
        except Cancelled:
            res.stop_reason = "cancelled"
            res.prompt_ms = (time.perf_counter() - t0) * 1e3
            return res
        t1 = time.perf_counter()
        res.prompt_ms = (t1 - t0) * 1e3
        pieces: list[str] = []
        n_predict = params.n_predict
        while True:
            if n_predict >= 0 and len(res.tokens) >= n_predict:
                res.stop_reason = "limit"
                break
            if should_stop is not None and should_stop():
                res.stop_reason = "cancelled"
                break
            if constraint is not None or params.ignore_eos:
                logits = logits.clone()
            if params.ignore_eos:
                logits[list(self.tokenizer.eog_ids)] = float("-inf")
            if constraint is not None:
                constraint.apply(logits)
            tok = sampler.sample(logits)
            sampler.accept(tok)
            if constraint is not None:
                constraint.accept(tok)
            if self.tokenizer.is_eog(tok):
                res.stop_reason = "eos"
                break
            probs = token_probs(logits, tok, params.n_probs) if params.n_probs > 0 else None
            res.tokens.append(tok)
            if probs is not None:
                res.probs.append(probs)
            piece = stream.push(self.tokenizer.token_to_piece(tok))
            if stream.stop_word is not None:
                res.stop_reason, res.stopping_word = "word", stream.stop_word
            elif getattr(constraint, "is_terminated", lambda: False)():
                res.stop_reason = "eos"
            elif n_predict >= 0 and len(res.tokens) >= n_predict:
                res.stop_reason = "limit"
            elif len(s.tokens) + 1 >= n_ctx:
                res.stop_reason = "context"
            else:
                res.stop_reason = ""
            if res.stop_reason:  # this is the last token: flush held-back text with it
                piece += stream.finish()
            pieces.append(piece)
            if on_token is not None:
                on_token(tok, piece, probs)
            if res.stop_reason:
                break
            try:
                logits = self._forward(s, [tok], should_stop)
            except Cancelled:
                res.stop_reason = "cancelled"
                break
        tail = stream.finish()
        if tail:  # generation ended on EOG or cancellation while text was held back
            pieces.append(tail)
            if on_token is not None:
                on_token(-1, tail, None)
        res.text = "".join(pieces)
        res.predicted_ms = (time.perf_counter() - t1) * 1e3
        return res

    def _forward(self, s: _Slot, tokens: list[int], should_stop) -> torch.Tensor:
        """Run tokens through the slot; a long prompt takes one weight sweep per SWEEP_TOKENS tokens."""
        for a in range(0, len(tokens), SWEEP_TOKENS):
            part = tokens[a : a + SWEEP_TOKENS]
            with self._compute:
                out = self.backend.forward(s.cache, part, len(s.tokens), "last", should_stop)
                out = out.to("cpu", torch.float32)  # samplers and constraints work on host logits
            s.tokens.extend(part)
        return out

    # --- other entry points --------------------------------------------------------------------------------

    def embed(self, tokens: list[int]) -> list[float]:
        """Mean over positions of the final normalized hidden state (after output_norm), as float32.

        Runs in a temporary cache, so no slot is touched. llama-server's --pooling mean does the same
        over its last hidden state.
        """
        if not tokens:
            raise ValueError("nothing to embed: no tokens")
        if len(tokens) > self.info.n_ctx:
            raise ContextLengthError(len(tokens), self.info.n_ctx)
        with self._compute:
            h = self.backend.forward(None, list(tokens), 0, "hidden", None)
        return h.mean(dim=0).tolist()

    def logits(self, tokens: list[int]) -> torch.Tensor:
        """Logits [len(tokens), n_vocab] of a fresh sequence (float32, cpu); for tests and tools."""
        with self._compute:
            return self.backend.forward(None, list(tokens), 0, "all", None).cpu()


def _choose_resident(units, config: EngineConfig, budget: int, cost: Callable) -> set[int]:
    """Resident units: as forced by config, else the head first, then layers in order, within budget."""
    n_layer = len(units) - 1
    head = n_layer
    forced = config.resident_layers
    if forced is None and config.resident_fraction is not None:
        forced = round(config.resident_fraction * n_layer)
    if forced is not None:
        forced = max(0, min(int(forced), n_layer))
        return set(range(forced)) | ({head} if forced > 0 else set())
    chosen: set[int] = set()
    for u in [units[head], *units[:n_layer]]:
        c = cost(u)
        if c <= budget:
            chosen.add(u.index)
            budget -= c
        elif u.index == head:
            continue
        else:
            break
    return chosen


def _load_gguf(path: Path, config: EngineConfig, device: torch.device, dtype: torch.dtype):
    from gguf import LlamaFileType

    from .gguf_file import open_gguf
    from .model import KVCache, Transformer
    from .tokenizer import from_gguf_metadata
    from .weights import WeightStore, build_units

    model = open_gguf(path)
    spec = model.spec
    tokenizer = from_gguf_metadata(model.metadata, str(path))
    n_ctx = config.n_ctx or min(spec.n_ctx_train, 4096)
    kv_bytes = KVCache.bytes_for(spec, n_ctx, dtype) * config.n_slots
    units = build_units(model, dtype)
    cuda = device.type == "cuda"

    def cost(u):
        return u.raw_bytes if cuda else u.dense_bytes

    biggest_raw = max(u.raw_bytes for u in units)
    biggest_dense = max(u.dense_bytes for u in units)
    staging = 2 * biggest_raw + biggest_dense if cuda else 2 * biggest_dense
    if config.memory_budget is not None:
        budget = int(config.memory_budget)
    else:
        budget = device_free_bytes(device) - config.reserve - kv_bytes - staging
    resident = _choose_resident(units, config, max(budget, 0), cost)
    store = WeightStore(model, device, dtype, resident)
    backend = _GGUFBackend(
        model, store, Transformer(spec, store, n_ctx, config.n_batch), tokenizer, device, dtype
    )
    streamed = [u for u in units if u.index not in resident]
    emb = model.globals["token_embd.weight"]
    try:
        ftype = (
            LlamaFileType(spec.file_type).name.removeprefix("MOSTLY_") if spec.file_type is not None else "?"
        )
    except ValueError:
        ftype = str(spec.file_type)
    info = EngineInfo(
        backend="gguf",
        architecture=spec.arch,
        model_name=spec.name,
        file_size=model.file_size,
        file_type=ftype,
        n_vocab=spec.n_vocab,
        n_ctx_train=spec.n_ctx_train,
        n_ctx=n_ctx,
        n_layer=spec.n_layer,
        n_embd=spec.n_embd,
        n_head=spec.n_head,
        n_head_kv=spec.n_head_kv,
        chat_template=spec.chat_template,
        device=str(device),
        device_name=device_name(device),
        dtype=str(dtype).removeprefix("torch."),
        n_slots=config.n_slots,
        n_resident_layers=sum(1 for i in resident if i < spec.n_layer),
        n_streamed_layers=sum(1 for u in streamed if u.index < spec.n_layer),
        head_resident=spec.n_layer in resident,
        resident_bytes=store.resident_bytes(),
        host_bytes=sum(u.raw_bytes for u in streamed) + emb.nbytes,
        kv_bytes=kv_bytes,
        staging_bytes=store.staging_bytes(),
        streamed_bytes_per_pass=sum(u.raw_bytes for u in streamed),
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
        eog_ids=tuple(sorted(tokenizer.eog_ids)),
    )
    return backend, info


class _GGUFBackend:
    def __init__(self, model, store, transformer, tokenizer, device, dtype) -> None:
        self.model = model
        self.store = store
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype

    def new_cache(self, n_ctx: int):
        from .model import KVCache

        return KVCache.allocate(self.model.spec, n_ctx, self.device, self.dtype)

    def forward(self, cache, tokens, start, want, should_stop):
        return self.transformer.forward(cache, tokens, start, want, should_stop)

    def truncate(self, cache, n: int) -> None:
        """Positions >= n are simply overwritten later."""

    def close(self) -> None:
        self.store.close()
