"""Response bodies in llama-server's shapes: /completion events and OpenAI chat completion chunks."""

from __future__ import annotations

import time

from .params import CompletionOptions, generation_settings
from .toolcalls import Parsed, StreamParser


def timings(result) -> dict:
    """llama-server's `timings` object (server_slot_stats::to_json)."""
    n_gen, n_proc = result.n_decoded, result.n_prompt
    p_ms, g_ms = result.prompt_ms, result.predicted_ms
    return {
        "cache_n": result.n_cached,
        "prompt_n": n_proc,
        "prompt_ms": p_ms,
        "prompt_per_token_ms": p_ms / n_proc if n_proc else 0.0,
        "prompt_per_second": 1e3 * n_proc / p_ms if p_ms > 0 else 0.0,
        "predicted_n": n_gen,
        "predicted_ms": g_ms,
        "predicted_per_token_ms": g_ms / n_gen if n_gen else 0.0,
        "predicted_per_second": 1e3 * n_gen / g_ms if g_ms > 0 else 0.0,
    }


def stop_type(reason: str) -> str:
    return {"eos": "eos", "word": "word", "limit": "limit", "context": "limit"}.get(reason, "none")


def probs_json(tokenizer, probs, post_sampling: bool) -> dict:
    """One entry of `completion_probabilities`."""
    import math

    def piece(tok: int) -> tuple[str, list[int]]:
        raw = tokenizer.token_to_piece(tok) if tok >= 0 else b""
        return raw.decode("utf-8", errors="ignore"), list(raw)

    def val(p: float) -> float:
        return p if post_sampling else (math.log(p) if p > 0 else -3.4028234663852886e38)

    key, top_key = ("prob", "top_probs") if post_sampling else ("logprob", "top_logprobs")
    text, raw = piece(probs.token)
    top = []
    for tok, p in probs.top:
        t, b = piece(tok)
        top.append({"id": tok, "token": t, "bytes": b, key: val(p)})
    return {"id": probs.token, "token": text, "bytes": raw, key: val(probs.prob), top_key: top}


class CompletionFormat:
    """/completion: partial events per token, then the final object."""

    done_marker = False

    def __init__(self, runner, opts: CompletionOptions, prompt: list[int], slot: int) -> None:
        self.runner, self.opts, self.prompt, self.slot = runner, opts, prompt, slot
        self.n_decoded = 0
        self.probs: list = []

    def partial(self, token: int, piece: str, probs) -> list[dict]:
        if token >= 0:
            self.n_decoded += 1
        if probs is not None:
            self.probs.append(probs)
        if not self.opts.stream:
            return []
        ev = {
            "index": 0,
            "content": piece,
            "tokens": [token] if token >= 0 else [],
            "stop": False,
            "id_slot": -1,  # llama-server leaves it unset in partial results
            "tokens_predicted": self.n_decoded,
            "tokens_evaluated": len(self.prompt),
        }
        if probs is not None:
            ev["completion_probabilities"] = [
                probs_json(self.runner.tokenizer, probs, self.opts.post_sampling_probs)
            ]
        return [ev]

    def final(self, result) -> list[dict]:
        r = self.runner
        res = {
            "index": 0,
            "content": "" if self.opts.stream else result.text,
            "tokens": [] if self.opts.stream or not self.opts.return_tokens else list(result.tokens),
            "id_slot": self.slot,
            "stop": True,
            "model": r.model_name,
            "tokens_predicted": result.n_decoded,
            "tokens_evaluated": len(self.prompt),
            "generation_settings": generation_settings(self.opts, r.tokenizer.eog_ids),
            "prompt": r.tokenizer.decode(self.prompt, special=True),
            "has_new_line": "\n" in result.text,
            "truncated": result.stop_reason == "context",
            "stop_type": stop_type(result.stop_reason),
            "stopping_word": result.stopping_word,
            "tokens_cached": len(self.prompt) + result.n_decoded - _not_evaluated(result),
            "timings": timings(result),
        }
        if not self.opts.stream and self.probs:
            res["completion_probabilities"] = [
                probs_json(r.tokenizer, p, self.opts.post_sampling_probs) for p in self.probs
            ]
        if self.opts.response_fields:
            res = _pick_fields(res, self.opts.response_fields)
        return [res]


def _not_evaluated(result) -> int:
    """1 when the last generated token never went through the model (the run stopped right after
    sampling it, not at an end-of-generation token), so its K/V is not in the cache."""
    return int(result.n_decoded > 0 and result.stop_reason in ("limit", "word", "context"))


def _pick_fields(res: dict, fields: list[str]) -> dict:
    """llama-server's json_get_nested_values: keep listed fields; 'a/b' is unnested to 'b'."""
    out = {}
    for f in fields:
        cur, ok = res, True
        for part in f.split("/"):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                ok = False
                break
        if ok:
            out[f.split("/")[-1]] = cur
    return out


class ChatFormat:
    """/v1/chat/completions: OpenAI chat.completion(.chunk) objects, with tool calls and reasoning split."""

    done_marker = True

    def __init__(
        self,
        runner,
        opts: CompletionOptions,
        prompt: list[int],
        slot: int,
        fmt: str,
        tools: bool,
        think_open: bool,
        model: str,
    ) -> None:
        self.runner, self.opts, self.prompt, self.slot = runner, opts, prompt, slot
        self.id = "chatcmpl-" + _rand32()
        self.created = int(time.time())
        self.model = model
        self.parser = StreamParser(fmt, tools, think_open)
        self.n_decoded = 0
        self.probs: list = []

    def _chunk(self, delta: dict, finish=None) -> dict:
        return {
            "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
            "created": self.created,
            "id": self.id,
            "model": self.model,
            "system_fingerprint": self.runner.build_info,
            "object": "chat.completion.chunk",
        }

    def partial(self, token: int, piece: str, probs) -> list[dict]:
        if token >= 0:
            self.n_decoded += 1
        if probs is not None:
            self.probs.append(probs)
        deltas = self.parser.feed(piece)
        if not self.opts.stream:
            return []
        out = []
        if self.n_decoded == 1 and token >= 0:
            out.append(self._chunk({"role": "assistant", "content": None}))
        out += [self._chunk(d) for d in deltas]
        return out

    def _usage(self, result) -> dict:
        return {
            "completion_tokens": result.n_decoded,
            "prompt_tokens": len(self.prompt),
            "total_tokens": result.n_decoded + len(self.prompt),
            "prompt_tokens_details": {"cached_tokens": result.n_cached},
        }

    def final(self, result) -> list[dict]:
        deltas, msg = self.parser.finish()
        finish = "length"
        if result.stop_reason in ("eos", "word"):
            finish = "tool_calls" if msg.tool_calls else "stop"
        if not self.opts.stream:
            choice = {"finish_reason": finish, "index": 0, "message": message_json(msg)}
            if self.probs:
                choice["logprobs"] = {
                    "content": [
                        probs_json(self.runner.tokenizer, p, self.opts.post_sampling_probs)
                        for p in self.probs
                    ]
                }
            return [
                {
                    "choices": [choice],
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": self.runner.build_info,
                    "object": "chat.completion",
                    "usage": self._usage(result),
                    "id": self.id,
                    "timings": timings(result),
                }
            ]
        out = [self._chunk(d) for d in deltas]
        out.append(self._chunk({}, finish))
        if self.opts.include_usage:
            usage = self._chunk({})
            usage["choices"] = []
            usage["usage"] = self._usage(result)
            out.append(usage)
        out[-1]["timings"] = timings(result)
        return out


def message_json(msg: Parsed) -> dict:
    """common_chat_msg::to_json_oaicompat for an assistant reply."""
    out: dict = {"role": "assistant", "content": msg.content if msg.content or not msg.tool_calls else None}
    if msg.reasoning:
        out["reasoning_content"] = msg.reasoning
    if msg.tool_calls:
        out["tool_calls"] = [
            {"type": "function", "function": {"name": tc.name, "arguments": tc.arguments}, "id": tc.id}
            for tc in msg.tool_calls
        ]
    return out


def _rand32() -> str:
    from .toolcalls import new_call_id

    return new_call_id()
