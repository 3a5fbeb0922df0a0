"""The status endpoints: GET /health, /props and /v1/models."""

from __future__ import annotations

from fastapi import FastAPI

from ..errors import ApiError
from ..openapi import STATUS
from ..params import CompletionOptions, generation_settings

# generation_settings keys that /props' default_generation_settings.params leaves out, as llama-server
_NOT_IN_PROPS = (
    "stop",
    "logit_bias",
    "grammar",
    "grammar_lazy",
    "grammar_triggers",
    "preserved_tokens",
    "dry_sequence_breakers",
)


def register(app: FastAPI, runner) -> None:
    @app.get("/health", openapi_extra=STATUS)
    @app.get("/v1/health", include_in_schema=False)
    async def health():
        return {"status": "ok"}

    @app.get("/props", openapi_extra=STATUS)
    async def props():
        return props_json(runner)

    @app.post("/props", include_in_schema=False)
    async def post_props():
        raise ApiError(
            "This server does not support changing global properties. Start it with `--props`", 501
        )

    @app.get("/v1/models", openapi_extra=STATUS)
    @app.get("/models", include_in_schema=False)
    async def models():
        return models_json(runner)


def props_json(runner) -> dict:
    """GET /props (llama-server's keys, plus the engine's residency)."""
    info = runner.info
    return {
        "default_generation_settings": {"params": _default_params(runner), "n_ctx": info.n_ctx},
        "total_slots": info.n_slots,
        "model_alias": runner.model_name,
        "model_ftype": info.file_type,
        "model_path": runner.config.model,
        "modalities": {"vision": False, "video": False, "audio": False},
        "media_marker": "<__media__>",
        "endpoint_slots": False,
        "endpoint_props": False,
        "endpoint_metrics": False,
        "ui": False,
        "ui_settings": {},
        "chat_template": runner.template,
        "chat_template_caps": _template_caps(runner.template),
        "bos_token": runner.token_text(info.bos_id),
        "eos_token": runner.token_text(info.eos_id),
        "build_info": runner.build_info,
        "is_sleeping": False,
        "cors_proxy_enabled": False,
        "engine": _engine(info),
    }


def _engine(info) -> dict:
    """The layer-streaming engine's residency; for a MoE model also its experts' traffic and cache; on a GPU
    the decode graphs' runs and counters."""
    out = {
        "resident_layers": info.n_resident_layers,
        "streamed_layers": info.n_streamed_layers,
        "device": info.device_name,
    }
    if info.experts is not None:
        out["experts"] = info.experts.as_json()
    if info.graphs is not None:
        out["graphs"] = info.graphs.as_json()
    return out


def _template_caps(template: str) -> dict:
    """chat_template_caps, guessed from the template's text."""
    return {
        "supports_tools": "tools" in template,
        "supports_tool_calls": "tool_call" in template,
        "supports_system_role": True,
        "supports_parallel_tool_calls": True,
        "supports_object_arguments": "arguments | tojson" in template,
        "supports_preserve_reasoning": "reasoning_content" in template,
        "supports_reasoning_effort": "reasoning_effort" in template,
        "supports_string_content": True,
        "supports_typed_content": False,
    }


def _default_params(runner) -> dict:
    s = generation_settings(CompletionOptions(sampling=runner.defaults))
    for k in _NOT_IN_PROPS:
        s.pop(k, None)
    s["reasoning_format"] = "none"  # llama-server's server-wide default; a request's settings say deepseek
    return s


def models_json(runner) -> dict:
    """GET /v1/models: Ollama's `models` list and OpenAI's `data` list, as llama-server answers."""
    info = runner.info
    name = runner.model_name
    return {
        "models": [
            {
                "name": name,
                "model": name,
                "modified_at": "",
                "size": "",
                "digest": "",
                "type": "model",
                "description": "",
                "tags": [""],
                "capabilities": ["completion"],
                "parameters": "",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "",
                    "families": [""],
                    "parameter_size": "",
                    "quantization_level": "",
                },
            }
        ],
        "object": "list",
        "data": [
            {
                "id": name,
                "aliases": [name],
                "tags": [],
                "object": "model",
                "created": runner.started,
                "owned_by": "llamacpp",
                "meta": {
                    "vocab_type": info.vocab_type,
                    "n_vocab": info.n_vocab,
                    "n_ctx": info.n_ctx,
                    "n_ctx_train": info.n_ctx_train,
                    "n_embd": info.n_embd,
                    "n_params": info.n_params,
                    "size": info.file_size,
                    "ftype": info.file_type,
                },
            }
        ],
    }
