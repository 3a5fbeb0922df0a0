"""Real clients against our runner: the official `openai` Python client and the opencode CLI."""

from __future__ import annotations

import json

import pytest
from ollama_airllm.devtools.tinytokenizer import WEATHER_TOOLS

from tests.clients import opencode_turn

TOOLS = WEATHER_TOOLS
# the random test model cannot decide to call a tool, so a grammar makes it (see the README's differences)
FORCE_CALL = {
    "grammar": "root ::= "
    + json.dumps('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
}


@pytest.fixture(scope="module")
def client(runner):
    from openai import OpenAI

    return OpenAI(base_url=runner.url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_openai_models_and_plain_chat(client, chat_model):
    models = client.models.list()
    assert models.data[0].id == str(chat_model)
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 8
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_openai_tools(client):
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    r = client.chat.completions.create(
        model="tiny", messages=msgs, tools=TOOLS, max_tokens=100, extra_body=FORCE_CALL
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    stream = client.chat.completions.create(
        model="tiny", messages=msgs, tools=TOOLS, max_tokens=100, extra_body=FORCE_CALL, stream=True
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or []:
            c = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            c["name"] += tc.function.name or ""
            c["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and calls[0]["name"] == "get_weather"
    # the tool result goes back in the next turn, as agents do
    msgs += [
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    r2 = client.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS, max_tokens=4)
    assert r2.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.opencode
@pytest.mark.slow
def test_opencode_completes_a_turn(tiny_gguf, start_runner, srvtools, tmp_path):
    """opencode's system prompt and tool list are ~19k tokens with the test tokenizer: 32k context."""
    srv = start_runner(tiny_gguf("llama", "F32", ctx=32768), "-c", "32768", "-t", "1", "--alias", "tiny")
    events = opencode_turn(srvtools.opencode_bin(), srv.url + "/v1", "tiny", 32768, tmp_path)
    finishes = [e["part"]["reason"] for e in events if e.get("type") == "step_finish"]
    assert finishes and finishes[-1] in ("stop", "length", "tool-calls")
    assert "Traceback" not in srv.log()
