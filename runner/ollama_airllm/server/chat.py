"""OpenAI chat requests -> prompt, through the GGUF's jinja chat template (transformers' renderer).

Mirrors llama-server's oaicompat_chat_params_parse for the text-only case: message checks, `stop`,
`response_format`, `chat_template_kwargs` / `reasoning_effort`, tools. Tool-call arguments sent as
JSON strings are handed to the template as objects, as llama.cpp does.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

from .errors import ApiError, json_type
from .params import parse_stop

CHATML = (
    "{%- for message in messages -%}{{- '<|im_start|>' + message.role + '\\n' + message.content"
    " + '<|im_end|>\\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML}


@dataclass
class ChatPrompt:
    prompt: str
    stop: list[str]
    json_schema: object | None
    grammar: str | None
    schema_field: str = "json_schema"
    tools: list = field(default_factory=list)
    parse_tools: bool = False


def _content_text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def _normalize_messages(messages) -> list[dict]:
    if not isinstance(messages, list):
        raise ApiError("Expected 'messages' to be an array")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ApiError(f"Expected each message to be an object, got {json_type(msg)}")
        role = msg.get("role")
        if not isinstance(role, str):
            raise ApiError("Missing or invalid 'role' in message: it must be a string")
        if role != "assistant" and "content" not in msg:
            raise ApiError("All non-assistant messages must contain 'content'")
        if role == "assistant" and "content" not in msg and "tool_calls" not in msg:
            raise ApiError("Assistant message must contain either 'content' or 'tool_calls'!")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ApiError("Expected 'content' to be a string or an array")
        if isinstance(content, list):
            _check_parts(i, content)
        m = {k: v for k, v in msg.items() if k != "content"}
        m["content"] = _content_text(content)
        if isinstance(msg.get("tool_calls"), list):
            m["tool_calls"] = [_tool_call_for_template(tc) for tc in msg["tool_calls"]]
        out.append(m)
    return out


def _check_parts(i: int, content: list) -> None:
    """messages[i].content as an array: text parts only (the runner is text-only)."""
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("image_url", "input_audio", "input_video"):
            raise ApiError(
                f"{kind.split('_')[-1].replace('url', 'image')} input is not supported - "
                "the layer-streaming runner is text-only"
            )
        if kind != "text":
            raise ApiError("unsupported content[].type")
        if "text" in p and not isinstance(p["text"], str):
            raise ApiError(
                f"Field 'messages[{i}].content[{j}].text': type must be string, but is {json_type(p['text'])}"
            )


def _tool_call_for_template(tc):
    if not isinstance(tc, dict) or not isinstance(tc.get("function"), dict):
        raise ApiError("Expected 'tool_calls' entries to be objects with a 'function' object")
    fn = dict(tc["function"])
    args = fn.get("arguments")
    if isinstance(args, str):
        with contextlib.suppress(json.JSONDecodeError):
            fn["arguments"] = json.loads(args) if args.strip() else {}
    return {**tc, "function": fn}


def render(
    template: str,
    messages: list[dict],
    tools: list | None,
    add_generation_prompt: bool,
    bos_token: str,
    eos_token: str,
    kwargs: dict,
) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            tools=tools or None,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **kwargs,
        )
    except ApiError:
        raise
    except Exception as e:  # template errors (raise_exception, undefined, syntax) are the request's problem
        raise ApiError(f"the chat template failed on this request: {type(e).__name__}: {e}") from None
    return rendered[0] if isinstance(rendered, list) else rendered


def parse_chat_request(
    body: dict, template: str, use_jinja: bool, bos_token: str, eos_token: str
) -> ChatPrompt:
    """The prompt and the generation options a chat request asks for."""
    tools, tool_choice = _tools(body, use_jinja)
    stop = parse_stop(body["stop"]) if body.get("stop") is not None else []
    json_schema, grammar, schema_field = _constraint(body)
    if "messages" not in body:
        raise ApiError("'messages' is required")
    messages = _normalize_messages(body["messages"])
    add_gen = _add_generation_prompt(body, messages)
    kwargs = _template_kwargs(body)
    # llama-server refuses `grammar` together with tools; the runner allows it (its tool calls are not
    # grammar-constrained, so a grammar is how a client forces a call).
    prompt = render(template, messages, tools or None, add_gen, bos_token, eos_token, kwargs)
    if not isinstance(grammar, str | None):
        raise ApiError(f"Field 'grammar': type must be string, but is {json_type(grammar)}")
    return ChatPrompt(
        prompt=prompt,
        stop=stop,
        json_schema=json_schema,
        grammar=grammar or None,
        schema_field=schema_field,
        tools=tools,
        parse_tools=bool(tools) and tool_choice != "none",
    )


def _tools(body: dict, use_jinja: bool) -> tuple[list, object]:
    """The request's tools (empty when none) and its tool_choice."""
    tools = body.get("tools")
    has_tools = isinstance(tools, list) and len(tools) > 0
    tool_choice = body.get("tool_choice", "auto")
    if not use_jinja:
        if has_tools:
            raise ApiError("tools param requires --jinja flag")
        if tool_choice not in ("auto", None):
            raise ApiError("tool_choice param requires --jinja flag")
    if tools is not None and not isinstance(tools, list):
        raise ApiError(f"Expected 'tools' to be an array, got {json_type(tools)}")
    return (tools if has_tools else []), tool_choice


def _constraint(body: dict) -> tuple[object | None, object, str]:
    """(json_schema, grammar, the field the schema came from): `response_format` overrides json_schema."""
    json_schema = body.get("json_schema")
    grammar = body.get("grammar")
    if json_schema is not None and grammar:
        raise ApiError("Cannot use both json_schema and grammar")
    rf = body.get("response_format")
    if rf is None:
        return json_schema, grammar, "json_schema"
    if not isinstance(rf, dict):
        raise ApiError(f"Expected 'response_format' to be an object, got {json_type(rf)}")
    kind = rf.get("type", "")
    if kind == "json_object":
        if "schema" in rf or json_schema is None:
            return rf.get("schema", {}), grammar, "response_format"
    elif kind == "json_schema":
        wrapper = rf.get("json_schema") if isinstance(rf.get("json_schema"), dict) else {}
        return wrapper.get("schema", {}), grammar, "response_format"
    elif kind not in ("", "text"):
        raise ApiError(f'response_format type must be one of "text" or "json_object", but got: {kind}')
    return json_schema, grammar, "json_schema"


def _add_generation_prompt(body: dict, messages: list[dict]) -> bool:
    """add_generation_prompt, off when the last message is the assistant's (llama-server's prefill)."""
    add_gen = body.get("add_generation_prompt", True)
    if not isinstance(add_gen, bool):
        raise ApiError(f"Field 'add_generation_prompt': type must be boolean, but is {json_type(add_gen)}")
    if messages and messages[-1]["role"] == "assistant" and "continue_final_message" not in body:
        if len(messages) >= 2 and messages[-2]["role"] == "assistant":
            raise ApiError("Cannot have 2 or more assistant messages at the end of the list.")
        return False  # continue the last message
    return add_gen


def _template_kwargs(body: dict) -> dict:
    """chat_template_kwargs, with reasoning_effort folded in."""
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ApiError(f"Expected 'chat_template_kwargs' to be an object, got {json_type(kwargs)}")
    kwargs = dict(kwargs)
    if "enable_thinking" in kwargs and not isinstance(kwargs["enable_thinking"], bool):
        raise ApiError(
            'invalid type for "enable_thinking" (expected boolean, got '
            f"{json_type(kwargs['enable_thinking'])})"
        )
    effort = body.get("reasoning_effort")
    if effort == "none":
        kwargs["enable_thinking"] = False
    elif isinstance(effort, str) and effort:
        kwargs["reasoning_effort"] = effort
    return kwargs
