"""Comparing our runner's greedy tokens with the references, shared by the conformance tests.

- transformers (exact math on the same weights): tokens equal; where they part, the reference's top two
  logits are a near tie.
- llama-server (8-bit activations in its dot products), both under an ASCII grammar: tokens equal, or part
  where llama-server's token is within a margin of ours under our log-probabilities; for a MoE file, more
  only after a router near-tie on the way, where that noise can select another expert.
"""

from __future__ import annotations

import httpx
import torch

# Printable ASCII for llama-server's sake: it answers 500 when a random model emits invalid UTF-8.
ASCII = "root ::= [ -~\\n]*"
ROUTER_TIE = 0.25  # router logit gap between the last selected and the first unselected expert


def complete(srv, prompt: list[int], n: int, **extra) -> dict:
    """/completion of `n` greedy tokens (EOG ignored), with their ids."""
    body = {"prompt": prompt, "n_predict": n, "temperature": 0, "ignore_eos": True, "return_tokens": True}
    r = httpx.post(srv.url + "/completion", json={**body, **extra}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def transformers_greedy(model, prompt: list[int], n: int) -> tuple[list[int], tuple]:
    """`model`'s (transformers) `n` greedy tokens after `prompt`, and its logits at each of them."""
    with torch.inference_mode():
        gen = model.generate(
            torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            output_scores=True, return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
    return gen.sequences[0, len(prompt) :].tolist(), gen.scores


def assert_equal_but_at_a_near_tie(ours: list[int], ref: list[int], scores, tie: float, what) -> None:
    """ours == ref, or they part where the reference's top two logits (`scores`) are within `tie`."""
    i = first_difference(ours, ref)
    if i is not None:
        top2 = scores[i][0].topk(2).values
        assert float(top2[0] - top2[1]) < tie, (what, i, ours, ref)


def assert_greedy_equals_transformers(model, srv, prompts: list[list[int]], n: int, tie: float, what) -> None:
    """Our greedy tokens equal `model`'s (transformers, float32), except at a near tie (< `tie`)."""
    for prompt in prompts:
        ref, scores = transformers_greedy(model, prompt, n)
        assert_equal_but_at_a_near_tie(complete(srv, prompt, n)["tokens"], ref, scores, tie, (what, prompt))


def router_tie(model, tokens: list[int]) -> float:
    """The smallest gap between the k-th and (k+1)-th router logit over all positions and layers."""
    with torch.inference_mode():
        out = model(torch.tensor([tokens]), output_router_logits=True)
    k = model.config.num_experts_per_tok
    ranked = [r.float().sort(-1, descending=True).values for r in out.router_logits]
    return min(float((g[:, k - 1] - g[:, k]).min()) for g in ranked)


def agree_with_llama_server(
    ours_srv, ref_srv, prompts: list[list[int]], n: int, margin: float, what, router=None
) -> int:
    """How many prompts gave equal tokens; where they part, llama-server's token is within `margin` nats
    of ours under our log-probabilities (both are the best the ASCII grammar allows; n_probs lists the
    unconstrained distribution, so our own token is the yardstick, not the list's top). `router`: the
    reference model of a MoE file; a wider parting is then allowed after a router near-tie (ROUTER_TIE) on
    our tokens."""
    agreed = 0
    for prompt in prompts:
        ours = complete(ours_srv, prompt, n, grammar=ASCII, n_probs=64)
        theirs = complete(ref_srv, prompt, n, grammar=ASCII)
        i = first_difference(ours["tokens"], theirs["tokens"])
        if i is None:
            agreed += 1
            continue
        top = {t["id"]: t["logprob"] for t in ours["completion_probabilities"][i]["top_logprobs"]}
        mine, chosen = ours["tokens"][i], theirs["tokens"][i]
        assert mine in top and chosen in top, (what, prompt, i, mine, chosen, top)
        gap = top[mine] - top[chosen]
        if gap >= margin and router is not None:
            tie = router_tie(router, prompt + ours["tokens"][:i])
            assert tie < ROUTER_TIE, (what, prompt, i, mine, chosen, gap, tie)
            continue
        assert gap < margin, (what, prompt, i, mine, chosen, top[mine], top[chosen])
    return agreed
