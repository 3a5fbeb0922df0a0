"""Request-body and error schemas for the published OpenAPI document (used by the fuzz run).

The handlers read the raw JSON themselves, with llama-server's rules (see params.py), so that bad input
gets llama-server's error JSON. These schemas only describe the bodies for clients and fuzzers.
"""

from __future__ import annotations

_num = {"type": "number"}
_int = {"type": "integer"}
_bool = {"type": "boolean"}
_tokens = {"type": "array", "items": {"type": "integer"}}
_prompt = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}},
    ]
}
_stop = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}

_sampling = {
    "n_predict": _int,
    "max_tokens": _int,
    "n_keep": _int,
    "temperature": _num,
    "top_k": _int,
    "top_p": _num,
    "min_p": _num,
    "typical_p": _num,
    "repeat_penalty": _num,
    "repeat_last_n": _int,
    "frequency_penalty": _num,
    "presence_penalty": _num,
    "seed": _int,
    "n_probs": _int,
    "min_keep": _int,
    "stream": _bool,
    "cache_prompt": _bool,
    "return_tokens": _bool,
    "ignore_eos": _bool,
    "post_sampling_probs": _bool,
    "timings_per_token": _bool,
    "stop": _stop,
    "grammar": {"type": "string"},
    "json_schema": {"type": "object"},
    "id_slot": _int,
}

_message = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {"type": "null"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string", "enum": ["text"]},
                            "text": {"type": "string"},
                        },
                    },
                },
            ]
        },
        "tool_call_id": {"type": "string"},
        "tool_calls": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "type": {"type": "string"},
                    "function": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
                    },
                },
            },
        },
    },
}


_error = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "type"],
            "properties": {"code": _int, "message": {"type": "string"}, "type": {"type": "string"}},
        }
    },
}
_ERROR_TEXT = {
    400: "Invalid request: a bad field, bad JSON or a prompt longer than the context",
    413: "Request body too large",
    500: "Internal error",
    501: "Not supported by this server's configuration",
    503: "Loading model, or shutting down",
}


def errors(*codes: int) -> dict:
    """The `responses` entries for these error statuses, all in llama-server's error shape."""
    return {
        str(c): {"description": _ERROR_TEXT[c], "content": {"application/json": {"schema": _error}}}
        for c in codes
    }


STATUS = {"responses": errors(503)}  # for the GET endpoints


def _body(properties: dict, required: list[str] | None = None, extra_errors: tuple[int, ...] = ()) -> dict:
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": errors(400, 413, 500, 503, *extra_errors),
    }


BODIES = {
    "completion": _body({"prompt": _prompt, **_sampling}, ["prompt"]),
    "chat": _body(
        {
            "model": {"type": "string"},
            "messages": {"type": "array", "items": _message},
            "tools": {"type": "array", "items": {"type": "object"}},
            "tool_choice": {"type": "string"},
            "response_format": {"type": "object"},
            "stream_options": {"type": "object"},
            "chat_template_kwargs": {"type": "object"},
            "reasoning_effort": {"type": "string"},
            **{k: v for k, v in _sampling.items() if k not in ("grammar", "json_schema")},
        },
        ["messages"],
    ),
    "tokenize": _body(
        {"content": _prompt, "add_special": _bool, "parse_special": _bool, "with_pieces": _bool}, ["content"]
    ),
    "detokenize": _body({"tokens": _tokens}, ["tokens"]),
    "embeddings": _body(
        {
            "input": _prompt,
            "model": {"type": "string"},
            "encoding_format": {"type": "string"},
            "embd_normalize": _int,
        },
        ["input"],
        (501,),
    ),
}
