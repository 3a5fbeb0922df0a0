"""Tool-call and reasoning parsing of generated chat text (all three formats, whole and streamed)."""

from __future__ import annotations

import json

import pytest
from ollama_airllm.devtools.tinytokenizer import CHAT_TEMPLATE
from ollama_airllm.server.toolcalls import StreamParser, detect_format, parse

HERMES = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
LLAMA3 = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
MISTRAL = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'
MISTRAL_V11 = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'


def test_detect_format():
    assert detect_format(CHAT_TEMPLATE) == "hermes"
    assert detect_format("{{ '[TOOL_CALLS]' }}") == "mistral"
    assert detect_format("<|python_tag|>{{ x }}") == "llama3"


@pytest.mark.parametrize(
    "fmt, text, content",
    [
        ("hermes", HERMES, "Let me check.\n"),
        ("llama3", LLAMA3, ""),
        ("llama3", "<|python_tag|>" + LLAMA3, ""),
        ("mistral", MISTRAL, ""),
        ("mistral", MISTRAL_V11, ""),
    ],
)
def test_tool_call_formats(fmt, text, content):
    msg = parse(text, fmt, tools=True, partial=False)
    assert msg.content == content
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert len(msg.tool_calls[0].id) == 32


def test_no_tools_means_no_parsing_and_bad_json_stays_content():
    assert parse(HERMES, "hermes", tools=False, partial=False).content == HERMES
    bad = "<tool_call>{not json}</tool_call>"
    msg = parse(bad, "hermes", tools=True, partial=False)
    assert (msg.content, msg.tool_calls) == (bad, [])
    assert parse('{"a": 1}', "llama3", tools=True, partial=False).content == '{"a": 1}'


def test_reasoning_split():
    msg = parse("<think>plan it</think>\nThe answer.", "hermes", tools=False, partial=False)
    assert (msg.reasoning, msg.content) == ("plan it", "The answer.")
    msg = parse("plan it</think>The answer.", "hermes", tools=False, partial=False, think_open=True)
    assert (msg.reasoning, msg.content) == ("plan it", "The answer.")
    assert parse("<think>never closed", "hermes", False, False).content == "<think>never closed"


def _stream(fmt: str, text: str, tools: bool = True, step: int = 3):
    p = StreamParser(fmt, tools, think_open=False)
    deltas = []
    for i in range(0, len(text), step):
        deltas += p.feed(text[i : i + step])
    tail, final = p.finish()
    return deltas + tail, final


@pytest.mark.parametrize(
    "fmt, text",
    [("hermes", "<think>hm</think>" + HERMES), ("llama3", LLAMA3), ("mistral", "Sure. " + MISTRAL)],
)
def test_stream_deltas_add_up(fmt, text):
    deltas, final = _stream(fmt, text)
    content = "".join(d.get("content", "") for d in deltas)
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert content == final.content and reasoning == final.reasoning
    assert [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        (0, "get_weather", {"city": "Paris"})
    ]
    assert "<tool_call" not in content and "[TOOL" not in content and "<think" not in content


def test_stream_holds_back_marker_prefixes():
    p = StreamParser("hermes", tools=True, think_open=False)
    assert p.feed("Hi <tool") == [{"content": "Hi "}]
    assert p.feed("box>") == [{"content": "<toolbox>"}]
