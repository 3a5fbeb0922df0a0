"""Token sampling with llama-server's parameters and llama.cpp's default sampler order.

Order (llama.cpp common_sampler defaults, without DRY/XTC/top-n-sigma):
constraint mask -> penalties (repeat, frequency, presence over the last repeat_last_n tokens, prompt included)
-> top_k -> typical_p -> top_p -> min_p -> temperature -> draw from the softmax with a seeded generator.
temperature <= 0 keeps only the most likely token (greedy). Disabled values as in llama.cpp: top_k <= 0,
typical_p >= 1, top_p >= 1, min_p <= 0, repeat_last_n == 0, penalties 1.0/0.0/0.0.
Any finite parameter is safe: penalties are computed in float64 and kept within float32's finite range,
and a temperature so small that the logits overflow keeps only the top tokens.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field

import torch

DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: pick a random seed
FLT_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class SamplingParams:
    """llama-server's /completion sampling and stopping fields (same names and defaults)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = DEFAULT_SEED
    n_predict: int = -1
    stop: list[str] = field(default_factory=list)
    n_probs: int = 0
    ignore_eos: bool = False
    min_keep: int = 0


@dataclass
class TokenProbs:
    """Probability of the chosen token and the top-n alternatives, from the softmax of the raw logits."""

    token: int
    prob: float
    top: list[tuple[int, float]]


class Sampler:
    """One sequence's sampler state: the penalty window and the seeded random generator."""

    def __init__(self, params: SamplingParams, n_ctx: int, history: list[int] = ()) -> None:
        self.p = params
        seed = params.seed
        if seed is None or seed < 0 or seed == DEFAULT_SEED:
            seed = random.SystemRandom().randrange(1 << 32)
        self.seed = int(seed)
        self.gen = torch.Generator().manual_seed(self.seed)
        last_n = n_ctx if params.repeat_last_n < 0 else params.repeat_last_n
        self.window: deque[int] = deque(maxlen=max(last_n, 0))
        if last_n > 0:
            self.window.extend(list(history)[-last_n:])

    def accept(self, token: int) -> None:
        if self.window.maxlen:
            self.window.append(token)

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the chain up to and including temperature; removed tokens get -inf. Returns a new tensor."""
        p = self.p
        x = logits.detach().to("cpu", torch.float32).clone()
        self._penalties(x)
        min_keep = max(p.min_keep, 1)
        if p.top_k > 0:
            k = max(p.top_k, min_keep)
            if k < x.numel():
                keep = torch.topk(x, k).indices
                y = torch.full_like(x, float("-inf"))
                y[keep] = x[keep]
                x = y
        if p.typical_p < 1.0:
            x = _typical(x, p.typical_p, min_keep)
        if p.top_p < 1.0:
            x = _top_p(x, p.top_p, min_keep)
        if p.min_p > 0.0:
            x = _min_p(x, p.min_p, min_keep)
        t = _temperature(p.temperature)
        if t <= 0:
            best = int(torch.argmax(x))
            y = torch.full_like(x, float("-inf"))
            y[best] = x[best]
            return y
        y = x / t
        if torch.isposinf(y).any():  # a tiny temperature: relative to the best token, the rest vanish
            y = (x - x.max()) / t
        return y

    def sample(self, logits: torch.Tensor) -> int:
        x = self.filter(logits)
        if _temperature(self.p.temperature) <= 0:
            return int(torch.argmax(x))
        probs = torch.softmax(x, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.gen))

    def _penalties(self, x: torch.Tensor) -> None:
        p = self.p
        if not self.window or (
            p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0
        ):
            return
        counts = Counter(self.window)
        ids = torch.tensor(list(counts), dtype=torch.long)
        n = torch.tensor([counts[i] for i in counts], dtype=torch.float64)
        old = x[ids]
        v = old.double()
        v = torch.where(v <= 0, v * p.repeat_penalty, v / p.repeat_penalty)
        v = v - n * p.frequency_penalty - p.presence_penalty
        # masked tokens (-inf) stay masked; overflow (repeat_penalty 0, huge penalties) saturates
        x[ids] = torch.where(torch.isfinite(old), v.clamp(-FLT_MAX, FLT_MAX).float(), old)


def _temperature(t: float) -> float:
    """The temperature as llama.cpp's float holds it: huge values saturate, tiny ones round to 0."""
    return float(torch.tensor(min(t, FLT_MAX), dtype=torch.float32))


def _keep_only(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    y = torch.full_like(x, float("-inf"))
    y[idx] = x[idx]
    return y


def _typical(x: torch.Tensor, mass: float, min_keep: int) -> torch.Tensor:
    probs = torch.softmax(x, dim=-1)
    alive = probs > 0
    logp = torch.log(probs.clamp_min(torch.finfo(torch.float32).tiny))
    entropy = -(probs[alive] * logp[alive]).sum()
    shifted = torch.where(alive, (-logp - entropy).abs(), torch.full_like(x, float("inf")))
    order = torch.argsort(shifted, stable=True)
    cum = torch.cumsum(probs[order], dim=0)
    over = torch.nonzero((cum > mass) & (torch.arange(cum.numel()) >= min_keep - 1))
    if over.numel() == 0:
        return x
    return _keep_only(x, order[: int(over[0]) + 1])


def _top_p(x: torch.Tensor, top_p: float, min_keep: int) -> torch.Tensor:
    probs = torch.softmax(x, dim=-1)
    order = torch.argsort(x, descending=True, stable=True)
    cum = torch.cumsum(probs[order], dim=0)
    over = torch.nonzero((cum >= top_p) & (torch.arange(cum.numel()) + 1 >= min_keep))
    if over.numel() == 0:
        return x
    return _keep_only(x, order[: int(over[0]) + 1])


def _min_p(x: torch.Tensor, min_p: float, min_keep: int) -> torch.Tensor:
    threshold = x.max() + torch.log(torch.tensor(min_p))
    keep = x >= threshold
    if int(keep.sum()) < min_keep:
        return _keep_only(x, torch.topk(x, min_keep).indices)
    return torch.where(keep, x, torch.full_like(x, float("-inf")))


def token_probs(logits: torch.Tensor, token: int, n: int) -> TokenProbs:
    """The chosen token's probability and the top-n tokens of softmax(logits)."""
    probs = torch.softmax(logits.detach().to("cpu", torch.float32), dim=-1)
    top = torch.topk(probs, min(n, probs.numel()))
    return TokenProbs(
        token, float(probs[token]), [(int(i), float(v)) for i, v in zip(top.indices, top.values, strict=True)]
    )
