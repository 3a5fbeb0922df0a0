"""Split generated chat text into reasoning, content and tool calls.

Formats (picked from the chat template's text, as llama.cpp's chat-format detection does):
  hermes  Qwen/Hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (any number)
  llama3  Llama 3.x JSON: the whole reply is `{"name": ..., "parameters"|"arguments": {...}}`,
          optionally after `<|python_tag|>`
  mistral `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (also `[TOOL_CALLS]name[ARGS]{...}`)
Reasoning is the text inside `<think>...</think>` at the start of the reply (or up to `</think>` when
the prompt already opened `<think>`), as llama-server's default reasoning format does.

`parse(text, partial=True)` only returns what is safe to show while more text may come: a trailing
prefix of a marker is held back, and an unfinished tool call is not content.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field

from ..engine.textstream import held_back

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_TAG, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
PYTHON_TAG = "<|python_tag|>"
_ID_CHARS = string.ascii_letters + string.digits


def new_call_id() -> str:
    """llama-server style tool-call id: 32 random alphanumerics."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(32))


def detect_format(template: str | None) -> str:
    t = template or ""
    if TOOL_OPEN in t:
        return "hermes"
    if MISTRAL_TAG in t:
        return "mistral"
    if PYTHON_TAG in t or "ipython" in t or '"parameters"' in t:
        return "llama3"
    return "hermes"


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON string, as OpenAI sends it
    id: str = field(default_factory=new_call_id)


@dataclass
class Parsed:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


def _call_from_obj(obj) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            json.loads(args)
        except json.JSONDecodeError:
            return None
        return ToolCall(obj["name"], args)
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def split_reasoning(text: str, partial: bool, think_open: bool) -> tuple[str, str]:
    """(reasoning, rest). think_open: the prompt ended inside <think> (template opened it)."""
    body = text
    if not think_open:
        stripped = text.lstrip()
        if stripped.startswith(THINK_OPEN):
            body = stripped[len(THINK_OPEN) :]
        elif partial and THINK_OPEN.startswith(stripped) and stripped:
            return "", ""  # maybe the start of <think>
        else:
            return "", text
    end = body.find(THINK_CLOSE)
    if end < 0:
        if not partial and not think_open:
            return "", text  # never closed: it was not reasoning after all
        keep = len(body) - (held_back(body, (THINK_CLOSE,)) if partial else 0)
        return body[:keep], ""
    return body[:end], body[end + len(THINK_CLOSE) :].lstrip("\n")


def _parse_hermes(text: str, partial: bool) -> tuple[str, list[ToolCall]]:
    content, calls, pos = [], [], 0
    while True:
        start = text.find(TOOL_OPEN, pos)
        if start < 0:
            tail = text[pos:]
            if partial:
                tail = tail[: len(tail) - held_back(tail, (TOOL_OPEN,))]
            content.append(tail)
            break
        content.append(text[pos:start])
        end = text.find(TOOL_CLOSE, start)
        if end < 0:
            if not partial:
                body = text[start + len(TOOL_OPEN) :]
                call = _try_json_call(body)
                if call is None:
                    content.append(text[start:])
                else:
                    calls.append(call)
            break
        call = _try_json_call(text[start + len(TOOL_OPEN) : end])
        if call is None:
            content.append(text[start : end + len(TOOL_CLOSE)])
        else:
            calls.append(call)
        pos = end + len(TOOL_CLOSE)
    return "".join(content), calls


def _try_json_call(body: str) -> ToolCall | None:
    try:
        return _call_from_obj(json.loads(body.strip()))
    except json.JSONDecodeError:
        return None


def _parse_llama3(text: str, partial: bool) -> tuple[str, list[ToolCall]]:
    s = text.strip()
    if s.startswith(PYTHON_TAG):
        s = s[len(PYTHON_TAG) :].strip()
    elif partial and s and PYTHON_TAG.startswith(s):
        return "", []
    if not s.startswith("{"):
        return text, []
    if partial:
        return "", []  # may become a tool call: show it only once complete
    calls = []
    for chunk in s.split(";"):  # llama 3.1 allows several calls separated by ';'
        call = _try_json_call(chunk)
        if call is None:
            return text, []
        calls.append(call)
    return "", calls


def _parse_mistral(text: str, partial: bool) -> tuple[str, list[ToolCall]]:
    at = text.find(MISTRAL_TAG)
    if at < 0:
        if partial:
            return text[: len(text) - held_back(text, (MISTRAL_TAG,))], []
        return text, []
    before, after = text[:at], text[at + len(MISTRAL_TAG) :]
    if partial:
        return before, []
    calls = []
    if MISTRAL_ARGS in after:  # newer format: name[ARGS]{json}[TOOL_CALLS]name[ARGS]{json}
        for part in after.split(MISTRAL_TAG):
            name, _, args = part.partition(MISTRAL_ARGS)
            call = _call_from_obj({"name": name.strip(), "arguments": _loads_or_none(args)})
            if call is None:
                return text, []
            calls.append(call)
        return before, calls
    data = _loads_or_none(after.strip())
    items = data if isinstance(data, list) else [data]
    for obj in items:
        call = _call_from_obj(obj)
        if call is None:
            return text, []
        calls.append(call)
    return before, calls


def _loads_or_none(s: str):
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        return None


_PARSERS = {"hermes": _parse_hermes, "llama3": _parse_llama3, "mistral": _parse_mistral}


def parse(text: str, fmt: str, tools: bool, partial: bool, think_open: bool = False) -> Parsed:
    """The message so far. Tool calls are only looked for when the request had tools."""
    reasoning, rest = split_reasoning(text, partial, think_open)
    if not tools:
        return Parsed(reasoning, rest)
    content, calls = _PARSERS[fmt](rest, partial)
    return Parsed(reasoning, content, calls)


class StreamParser:
    """Incremental parse: feed text pieces, get OpenAI `delta` dicts for what became safe to show."""

    def __init__(self, fmt: str, tools: bool, think_open: bool) -> None:
        self.fmt, self.tools, self.think_open = fmt, tools, think_open
        self.text = ""
        self.sent = Parsed()

    def _diff(self, now: Parsed) -> list[dict]:
        out = []
        if len(now.reasoning) > len(self.sent.reasoning) and now.reasoning.startswith(self.sent.reasoning):
            out.append({"reasoning_content": now.reasoning[len(self.sent.reasoning) :]})
            self.sent.reasoning = now.reasoning
        if len(now.content) > len(self.sent.content) and now.content.startswith(self.sent.content):
            out.append({"content": now.content[len(self.sent.content) :]})
            self.sent.content = now.content
        for i in range(len(self.sent.tool_calls), len(now.tool_calls)):
            tc = now.tool_calls[i]
            out.append(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": tc.id,
                            "type": "function",
                            "function": {"name": tc.name, "arguments": tc.arguments},
                        }
                    ]
                }
            )
            self.sent.tool_calls.append(tc)
        return out

    def feed(self, piece: str) -> list[dict]:
        self.text += piece
        return self._diff(parse(self.text, self.fmt, self.tools, True, self.think_open))

    def finish(self) -> tuple[list[dict], Parsed]:
        final = parse(self.text, self.fmt, self.tools, False, self.think_open)
        final.tool_calls = self.sent.tool_calls + final.tool_calls[len(self.sent.tool_calls) :]
        return self._diff(final), final
