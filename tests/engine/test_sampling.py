"""Sampling: each llama-server parameter against a reference on fixed logits, chain order, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ollama_airllm.engine.sampling import Sampler, SamplingParams, token_probs
from transformers.generation import logits_process as lp

V = 200
OFF = dict(
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    typical_p=1.0,
    repeat_penalty=1.0,
    repeat_last_n=64,
    seed=1,
)


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(V).astype(np.float32) * 3)


def _kept(x: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(x)).flatten().tolist())


@pytest.mark.parametrize(
    ("params", "warper"),
    [
        ({"top_k": 7}, lp.TopKLogitsWarper(7)),
        ({"top_p": 0.6}, lp.TopPLogitsWarper(0.6)),
        ({"min_p": 0.2}, lp.MinPLogitsWarper(0.2)),
        ({"typical_p": 0.5}, lp.TypicalLogitsWarper(0.5)),
    ],
    ids=["top_k", "top_p", "min_p", "typical_p"],
)
def test_filters_match_transformers(params, warper):
    for seed in range(5):
        x = _logits(seed)
        ours = Sampler(SamplingParams(**{**OFF, **params}), 512).filter(x)
        ref = warper(torch.zeros(1, 1, dtype=torch.long), x[None].clone())[0]
        assert _kept(ours) == _kept(ref)
        torch.testing.assert_close(ours[torch.isfinite(ours)], x[torch.isfinite(ours)])


def test_repeat_penalty_matches_transformers_and_window():
    x = _logits(3)
    history = [5, 9, 9, 17, 150]
    ours = Sampler(SamplingParams(**{**OFF, "repeat_penalty": 1.3}), 512, history).filter(x)
    ref = lp.RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([history]), x[None].clone())[0]
    torch.testing.assert_close(ours, ref)
    # repeat_last_n=2 only sees the last two tokens (17, 150)
    ours2 = Sampler(
        SamplingParams(**{**OFF, "repeat_penalty": 1.3, "repeat_last_n": 2}), 512, history
    ).filter(x)
    changed = set(torch.nonzero(ours2 != x).flatten().tolist())
    assert changed == {17, 150}


def test_frequency_and_presence_penalties():
    x = _logits(4)
    history = [5, 9, 9, 9]
    out = Sampler(
        SamplingParams(**{**OFF, "frequency_penalty": 0.5, "presence_penalty": 0.25}), 512, history
    ).filter(x)
    assert math.isclose(out[9], x[9] - 3 * 0.5 - 0.25, rel_tol=1e-6)
    assert math.isclose(out[5], x[5] - 0.5 - 0.25, rel_tol=1e-6)
    assert out[6] == x[6]


def _reference_chain(x: np.ndarray, p: SamplingParams, history: list[int]) -> np.ndarray:
    """llama.cpp's order, written out plainly: penalties, top_k, typical, top_p, min_p, temperature."""
    x = x.astype(np.float64).copy()
    counts: dict[int, int] = {}
    for t in history[-p.repeat_last_n :]:
        counts[t] = counts.get(t, 0) + 1
    for t, c in counts.items():
        x[t] = x[t] * p.repeat_penalty if x[t] <= 0 else x[t] / p.repeat_penalty
        x[t] -= c * p.frequency_penalty + p.presence_penalty
    alive = list(np.argsort(-x, kind="stable"))[: p.top_k]

    def probs(ids):
        z = np.array([x[i] for i in ids])
        e = np.exp(z - z.max())
        return e / e.sum()

    pr = probs(alive)
    ent = -sum(q * math.log(q) for q in pr)
    order = sorted(range(len(alive)), key=lambda i: abs(-math.log(pr[i]) - ent))
    cum, keep = 0.0, []
    for i in order:
        cum += pr[i]
        keep.append(alive[i])
        if cum > p.typical_p:
            break
    alive = sorted(keep, key=lambda t: -x[t])
    pr, cum, keep = probs(alive), 0.0, []
    for t, q in zip(alive, pr, strict=True):
        keep.append(t)
        cum += q
        if cum >= p.top_p:
            break
    m = max(x[t] for t in keep)
    keep = [t for t in keep if x[t] >= m + math.log(p.min_p)]
    out = np.full_like(x, -np.inf)
    for t in keep:
        out[t] = x[t] / p.temperature
    return out


def test_chain_order_matches_reference():
    p = SamplingParams(
        temperature=0.7,
        top_k=60,
        typical_p=0.95,
        top_p=0.9,
        min_p=0.02,
        repeat_penalty=1.2,
        frequency_penalty=0.1,
        presence_penalty=0.2,
        repeat_last_n=8,
        seed=3,
    )
    for seed in range(5):
        x = _logits(seed)
        history = list(np.random.default_rng(seed).integers(0, V, 20))
        ours = Sampler(p, 512, history).filter(x).double().numpy()
        ref = _reference_chain(x.numpy(), p, history)
        assert set(np.flatnonzero(np.isfinite(ours))) == set(np.flatnonzero(np.isfinite(ref)))
        np.testing.assert_allclose(ours[np.isfinite(ours)], ref[np.isfinite(ref)], rtol=1e-5)


def test_greedy_and_seeds():
    x = _logits(7)
    assert Sampler(SamplingParams(temperature=0.0, seed=1), 512).sample(x) == int(torch.argmax(x))
    assert Sampler(SamplingParams(temperature=-1.0, top_k=0, seed=2), 512).sample(x) == int(torch.argmax(x))

    def draws(seed):
        s = Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed), 512)
        return [s.sample(_logits(i)) for i in range(30)]

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)
    assert 0 <= Sampler(SamplingParams(seed=-1), 512).seed < 2**32


def test_sampled_frequencies_follow_the_filtered_distribution():
    x = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    p = SamplingParams(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=5)
    s = Sampler(p, 512)
    n = 2000
    counts = np.bincount([s.sample(x) for _ in range(n)], minlength=5) / n
    want = torch.softmax(x[:3], 0).numpy()
    np.testing.assert_allclose(counts[:3], want, atol=0.04)
    assert counts[3:].sum() == 0


def test_token_probs():
    x = _logits(8)
    tp = token_probs(x, 3, 5)
    full = torch.softmax(x, 0)
    assert math.isclose(tp.prob, float(full[3]), rel_tol=1e-6)
    assert [t for t, _ in tp.top] == torch.topk(full, 5).indices.tolist()
