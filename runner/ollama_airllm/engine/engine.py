"""The Engine: load a model, keep per-slot KV caches, generate tokens, embed text."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .config import EngineConfig, resolve_device, resolve_dtype
from .gguf_backend import load_gguf
from .sampling import Sampler, SamplingParams, TokenProbs, token_probs
from .textstream import TextStream
from .tokenizer import Tokenizer
from .types import Backend, Cancelled, Constraint, ContextLengthError, EngineInfo, GenerationResult

log = logging.getLogger("ollama_airllm.engine")

# Prompt tokens per sweep of the layers: bounds the activations kept for a sweep ([tokens, n_embd]).
SWEEP_TOKENS = 16384

OnToken = Callable[[int, str, TokenProbs | None], None]


class _Sequence:
    """One slot's sequence: its KV cache and the tokens whose K/V it holds."""

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
        self._seqs = [_Sequence(backend.new_cache(info.n_ctx)) for _ in range(info.n_slots)]

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
            backend, info = load_gguf(path, config, device, dtype)
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
        return len(self._seqs)

    def slot_tokens(self, slot: int) -> list[int]:
        """The tokens whose K/V the slot holds (the reusable prefix for the next request)."""
        return list(self._seqs[slot].tokens)

    def clear_slot(self, slot: int) -> None:
        s = self._seqs[slot]
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
        on_token: OnToken | None = None,
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
        if not 0 <= slot < len(self._seqs):
            raise ValueError(f"slot {slot} does not exist (this engine has {len(self._seqs)} slots)")
        s = self._seqs[slot]
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

    def _generate(self, s: _Sequence, prompt, params, on_token, should_stop, constraint) -> GenerationResult:
        n_cached = self._reuse_prefix(s, prompt)
        sampler = Sampler(params, self.info.n_ctx, prompt)
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
        self._decode(s, logits, sampler, res, params, on_token, should_stop, constraint)
        res.predicted_ms = (time.perf_counter() - t1) * 1e3
        return res

    def _reuse_prefix(self, s: _Sequence, prompt: list[int]) -> int:
        """Keep the cached K/V of the longest common prefix (never the last prompt token); its length."""
        n_cached = 0
        for a, b in zip(s.tokens, prompt, strict=False):
            if a != b:
                break
            n_cached += 1
        n_cached = min(n_cached, len(prompt) - 1)  # always recompute the last prompt token
        s.tokens = s.tokens[:n_cached]
        self.backend.truncate(s.cache, n_cached)
        return n_cached

    def _decode(self, s: _Sequence, logits, sampler, res, params, on_token, should_stop, constraint) -> None:
        """Sample tokens into `res` until a stop; streams the text through on_token."""
        stream = TextStream(params.stop)
        pieces: list[str] = []
        while True:
            res.stop_reason = _stop_before_sampling(res, params, should_stop)
            if res.stop_reason:
                break
            tok = self._sample(logits, sampler, params, constraint)
            if self.tokenizer.is_eog(tok):
                res.stop_reason = "eos"
                break
            probs = token_probs(logits, tok, params.n_probs) if params.n_probs > 0 else None
            res.tokens.append(tok)
            if probs is not None:
                res.probs.append(probs)
            piece = stream.push(self.tokenizer.token_to_piece(tok))
            res.stop_reason, res.stopping_word = self._stop_after_token(s, res, stream, params, constraint)
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
        res.text = "".join(pieces) + _flush(stream, on_token)

    def _sample(self, logits: torch.Tensor, sampler: Sampler, params: SamplingParams, constraint) -> int:
        """The next token: EOG masked for ignore_eos, the constraint applied and advanced."""
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
        return tok

    def _stop_after_token(self, s: _Sequence, res, stream: TextStream, params, constraint) -> tuple[str, str]:
        """(stop_reason, stopping_word) once a token was added; ("", "") to go on."""
        if stream.stop_word is not None:
            return "word", stream.stop_word
        if getattr(constraint, "is_terminated", lambda: False)():
            return "eos", ""
        if params.n_predict >= 0 and len(res.tokens) >= params.n_predict:
            return "limit", ""
        if len(s.tokens) + 1 >= self.info.n_ctx:
            return "context", ""
        return "", ""

    def _forward(self, s: _Sequence, tokens: list[int], should_stop) -> torch.Tensor:
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


def _stop_before_sampling(res: GenerationResult, params: SamplingParams, should_stop) -> str:
    """The stop reason before the next token: "limit" (n_predict reached), "cancelled", or "" to go on."""
    if params.n_predict >= 0 and len(res.tokens) >= params.n_predict:
        return "limit"
    if should_stop is not None and should_stop():
        return "cancelled"
    return ""


def _flush(stream: TextStream, on_token: OnToken | None) -> str:
    """Text still held back when generation ended on EOG or cancellation, delivered as on_token(-1, ...)."""
    tail = stream.finish()
    if tail and on_token is not None:
        on_token(-1, tail, None)
    return tail
