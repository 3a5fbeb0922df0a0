"""The /completion request fields, read with llama-server's rules (tools/server/server-schema.cpp).

A null value means "use the default". Numbers outside a *hard* range are rejected with
`Field 'NAME': Value must be between ...`; soft ranges are clamped. Sampler floats are clamped into
float32's finite range (llama-server keeps them as C floats), so that no value can make the sampler
produce inf or NaN. Wrong JSON types are rejected
with `Field 'NAME': type must be number, but is string` (nlohmann's wording), all as 400.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

from ..engine import SamplingParams
from .errors import ApiError, json_type

INT32_MAX = 2**31 - 1
FLT_MAX = 3.4028234663852886e38
FLT_MIN = 1.1754943508222875e-38  # the smallest normal float32: below it llama-server's sampler sees 0

log = logging.getLogger("ollama_airllm.server")


@dataclass
class CompletionOptions:
    """A request's sampling parameters plus the server-side options around them."""

    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False
    cache_prompt: bool = True
    return_tokens: bool = False
    timings_per_token: bool = False
    post_sampling_probs: bool = False
    n_keep: int = 0
    n_cmpl: int = 1
    id_slot: int = -1
    grammar: str | None = None
    json_schema: object | None = None
    schema_field: str = "json_schema"  # the request field json_schema came from, for error messages
    response_fields: list[str] = field(default_factory=list)


# name(s), kind, (low, high), hard, attribute on SamplingParams ("" = on CompletionOptions)
_NUM_FIELDS = [
    (("n_predict", "max_completion_tokens", "max_tokens"), int, (-1, INT32_MAX), True, "n_predict"),
    (("n_keep",), int, (-1, INT32_MAX), True, ":n_keep"),
    (("n_cmpl", "n"), int, (1, None), True, ":n_cmpl"),
    (("id_slot",), int, (-1, INT32_MAX), False, ":id_slot"),
    (("top_k",), int, (0, INT32_MAX), False, "top_k"),
    (("top_p",), float, (0.0, 1.0), False, "top_p"),
    (("min_p",), float, (0.0, 1.0), False, "min_p"),
    (("typical_p",), float, (-FLT_MAX, FLT_MAX), False, "typical_p"),
    (("temperature",), float, (0.0, FLT_MAX), False, "temperature"),
    (("repeat_last_n",), int, (0, INT32_MAX), True, "repeat_last_n"),
    (("repeat_penalty",), float, (-FLT_MAX, FLT_MAX), False, "repeat_penalty"),
    (("frequency_penalty",), float, (-FLT_MAX, FLT_MAX), False, "frequency_penalty"),
    (("presence_penalty",), float, (-FLT_MAX, FLT_MAX), False, "presence_penalty"),
    (("seed",), int, (-(2**63), 2**64 - 1), True, "seed"),  # what a JSON integer can hold
    (("n_probs", "logprobs"), int, (-(2**31), INT32_MAX), False, "n_probs"),
    (("min_keep",), int, (0, INT32_MAX), True, "min_keep"),
]
# accepted with llama-server's type rules, no effect here (DRY, XTC, mirostat, ...)
_NUM_ACCEPTED = [
    ("sse_ping_interval", int),
    ("n_indent", int),
    ("n_discard", int),
    ("n_cache_reuse", int),
    ("t_max_predict_ms", int),
    ("top_n_sigma", float),
    ("xtc_probability", float),
    ("xtc_threshold", float),
    ("dynatemp_range", float),
    ("dynatemp_exponent", float),
    ("dry_multiplier", float),
    ("dry_base", float),
    ("dry_allowed_length", int),
    ("dry_penalty_last_n", int),
    ("mirostat", int),
    ("mirostat_tau", float),
    ("mirostat_eta", float),
    ("adaptive_target", float),
    ("adaptive_decay", float),
    ("reasoning_budget_tokens", int),
]
_BOOL_FIELDS = [
    ("stream", ":stream"),
    ("cache_prompt", ":cache_prompt"),
    ("return_tokens", ":return_tokens"),
    ("timings_per_token", ":timings_per_token"),
    ("post_sampling_probs", ":post_sampling_probs"),
    ("ignore_eos", "ignore_eos"),
    ("verbose", ""),
    ("return_progress", ""),
    ("backend_sampling", ""),
    ("grammar_lazy", ""),
    ("parse_tool_calls", ""),
    ("echo", ""),
    ("reasoning_control", ""),
]


def _num(name: str, v, kind):
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(f"Field '{name}': type must be number, but is {json_type(v)}")
    if kind is int:
        if isinstance(v, float):
            if not math.isfinite(v):
                raise ApiError(f"Field '{name}': value must be a finite number, but got {v}")
            v = int(v)
        return v
    return float(v)


def _present(data: dict, names) -> tuple[str, object] | None:
    for n in names:
        if data.get(n) is not None:
            return n, data[n]
    return None


def parse_completion(data: dict, defaults: SamplingParams, n_parallel: int) -> CompletionOptions:
    """CompletionOptions from a /completion body (already known to be a JSON object)."""
    s = SamplingParams(**{k: getattr(defaults, k) for k in defaults.__dataclass_fields__})
    s.stop = list(defaults.stop)
    opts = CompletionOptions(sampling=s)
    _read_numbers(data, opts, n_parallel)
    _read_bools(data, opts)
    _read_stream_options(data, opts)
    if data.get("stop") is not None:
        s.stop = parse_stop(data["stop"]) or list(defaults.stop)
    _read_constraint(data, opts)
    rf = data.get("response_fields")
    if rf is not None:
        if not isinstance(rf, list) or not all(isinstance(x, str) for x in rf):
            raise ApiError("Field 'response_fields': must be an array of strings")
        opts.response_fields = rf
    check_logit_bias(data.get("logit_bias"))
    _note_ignored(data)
    if not s.repeat_penalty >= FLT_MIN:  # llama-server's sampler init refuses it (a division by it)
        raise ApiError(
            "Failed to initialize samplers: penalty_repeat must be finite and greater than 0 "
            f"(Field 'repeat_penalty', got {data.get('repeat_penalty')})"
        )
    if s.seed is not None:  # llama-server's seed is a uint32 (0xFFFFFFFF = -1 = random)
        s.seed %= 2**32
    return opts


def _read_numbers(data: dict, opts: CompletionOptions, n_parallel: int) -> None:
    """The numeric fields: type-checked, hard ranges refused, soft ranges clamped."""
    for names, kind, (low, high), hard, attr in _NUM_FIELDS:
        hit = _present(data, names)
        if hit is None:
            continue
        name, v = hit
        v = _num(name, v, kind)
        if names[0] == "n_cmpl":
            high = n_parallel
        if hard and (v < low or (high is not None and v > high)):
            raise ApiError(f"Field '{name}': Value must be between {low} <= value <= {high}, but got {v}")
        if not hard:
            v = max(low, v) if high is None else min(max(low, v), high)
        _set(opts, attr, v)
    for name, kind in _NUM_ACCEPTED:
        if data.get(name) is not None:
            _num(name, data[name], kind)


def _read_bools(data: dict, opts: CompletionOptions) -> None:
    for name, attr in _BOOL_FIELDS:
        v = data.get(name)
        if v is None:
            continue
        if not isinstance(v, bool):
            raise ApiError(f"Field '{name}': type must be boolean, but is {json_type(v)}")
        if attr:
            _set(opts, attr, v)


def _set(opts: CompletionOptions, attr: str, v) -> None:
    """Set `attr` on the options (":name") or on their SamplingParams ("name")."""
    setattr(opts if attr.startswith(":") else opts.sampling, attr.lstrip(":"), v)


def _read_stream_options(data: dict, opts: CompletionOptions) -> None:
    so = data.get("stream_options")
    if isinstance(so, dict) and so.get("include_usage") is not None:
        if not isinstance(so["include_usage"], bool):
            raise ApiError(
                f"Field 'include_usage': type must be boolean, but is {json_type(so['include_usage'])}"
            )
        opts.include_usage = so["include_usage"]


def _read_constraint(data: dict, opts: CompletionOptions) -> None:
    """`json_schema` (unless a `grammar` is given too) or `grammar`."""
    if data.get("json_schema") is not None and data.get("grammar") is None:
        schema = data["json_schema"]
        if not isinstance(schema, dict | bool):
            raise ApiError(
                f"Field 'json_schema': \"json_schema\": schema must be an object, but is {json_type(schema)}"
            )
        opts.json_schema = schema
    elif data.get("grammar") is not None:
        g = data["grammar"]
        if not isinstance(g, str):
            raise ApiError(f"Field 'grammar': type must be string, but is {json_type(g)}")
        opts.grammar = g or None


def parse_stop(stop) -> list[str]:
    """The stop strings of a `stop` field (a string or an array of strings), without empty ones."""
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list):
        raise ApiError(f"Field 'stop': must be a string or an array of strings, but is {json_type(stop)}")
    bad = next((w for w in stop if not isinstance(w, str)), None)
    if bad is not None:
        raise ApiError(f"Field 'stop': type must be string, but is {json_type(bad)}")
    return [w for w in stop if w]


_BIAS_PAIR = "a [token, bias] pair (token: an id or a string; bias: a number or false)"


def check_logit_bias(bias) -> None:
    """llama-server's `logit_bias` shapes: [[token, bias], ...] or {"token or text": bias, ...}."""
    if bias is None:
        return
    if isinstance(bias, dict):
        for key, v in bias.items():
            if not _is_bias(v):
                raise ApiError(
                    f"Field 'logit_bias.{key}': the bias must be a number or false, but is {json_type(v)}"
                )
        return
    if not isinstance(bias, list):
        raise ApiError(f"Field 'logit_bias': must be an array or an object, but is {json_type(bias)}")
    for i, pair in enumerate(bias):
        ok = isinstance(pair, list) and len(pair) == 2 and _is_bias(pair[1])
        if not ok or isinstance(pair[0], bool) or not isinstance(pair[0], int | str):
            shown = json.dumps(pair, ensure_ascii=False)
            raise ApiError(f"Field 'logit_bias[{i}]': must be {_BIAS_PAIR}, but got {shown[:80]}")


def _is_bias(v) -> bool:
    return v is False or (isinstance(v, int | float) and not isinstance(v, bool))


# request fields that are accepted but change nothing here, and why (logged once per field)
_IGNORED_FIELDS = {
    "logit_bias": "not in the engine's sampler",
    "n_keep": "no context shift: generation stops at the end of the context",
    "timings_per_token": "timings come with the final response only",
    "post_sampling_probs": "probabilities are reported before the sampler's filters, as prob/top_probs",
}
_logged: set[str] = set()


def _note_ignored(data: dict) -> None:
    """Log `ignoring FIELD (why)` the first time a request sets one of _IGNORED_FIELDS."""
    for name, why in _IGNORED_FIELDS.items():
        v = data.get(name)
        if v in (None, False, [], {}) or name in _logged:
            continue
        _logged.add(name)
        log.info("request: ignoring %s (%s)", name, why)


def generation_settings(opts: CompletionOptions, eog_ids=()) -> dict:
    """llama-server's `generation_settings` object (task_params::to_json), with this request's values.
    `ignore_eos` shows as llama-server shows it: a -inf bias on each end-of-generation token."""
    s = opts.sampling
    bias = [{"bias": -math.inf, "token": t} for t in sorted(eog_ids)] if s.ignore_eos else []
    return {
        "seed": s.seed if s.seed is not None and s.seed >= 0 else 0xFFFFFFFF,
        "temperature": s.temperature,
        "dynatemp_range": 0.0,
        "dynatemp_exponent": 1.0,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "top_n_sigma": -1.0,
        "xtc_probability": 0.0,
        "xtc_threshold": 0.1,
        "typical_p": s.typical_p,
        "repeat_last_n": s.repeat_last_n,
        "repeat_penalty": s.repeat_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "dry_multiplier": 0.0,
        "dry_base": 1.75,
        "dry_allowed_length": 2,
        "dry_penalty_last_n": 64,
        "dry_sequence_breakers": ["\n", ":", '"', "*"],
        "mirostat": 0,
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
        "adaptive_target": -1.0,
        "adaptive_decay": 0.9,
        "stop": list(s.stop),
        "max_tokens": s.n_predict,
        "n_predict": s.n_predict,
        "n_keep": opts.n_keep,
        "n_discard": 0,
        "ignore_eos": s.ignore_eos,
        "stream": opts.stream,
        "logit_bias": bias,
        "n_probs": s.n_probs,
        "min_keep": s.min_keep,
        "grammar": opts.grammar or "",
        "grammar_lazy": False,
        "grammar_triggers": [],
        "preserved_tokens": [],
        "chat_format": "Content-only",
        "reasoning_format": "deepseek",
        "reasoning_in_content": False,
        "generation_prompt": "",
        "samplers": [
            "penalties",
            "dry",
            "top_n_sigma",
            "top_k",
            "typ_p",
            "top_p",
            "min_p",
            "xtc",
            "temperature",
        ],
        "speculative.types": "none",
        "timings_per_token": opts.timings_per_token,
        "post_sampling_probs": opts.post_sampling_probs,
        "backend_sampling": False,
        "lora": [],
    }
