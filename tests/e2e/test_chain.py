"""The serving chain end to end: client → patched Ollama → fit decision → our runner (or llama-server)."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import psutil
import pytest
from ollama_airllm.devtools.tinytokenizer import WEATHER_TOOLS

from .conftest import MODEL

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "hello there"}]
FAST = {"temperature": 0, "num_predict": 8}


def _runner_cmdline(srv) -> list[str]:
    procs = srv.runners()
    assert len(procs) == 1, [p.cmdline() for p in procs]
    return procs[0].cmdline()


def _stream(srv, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", srv.url + path, json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line) for line in r.iter_lines() if line]


def test_create_lists_the_model(forced):
    out = forced.cli("list")
    assert out.returncode == 0 and f"{MODEL}:latest" in out.stdout, out.stdout + out.stderr


def test_generate_goes_to_the_runner(forced):
    r = forced.post("/api/generate", {"model": MODEL, "prompt": "hello", "stream": False, "options": FAST})
    assert r["done"] and r["done_reason"] in ("stop", "length") and r["eval_count"] <= 8
    cmd = _runner_cmdline(forced)
    assert cmd[1].endswith("ollama-airllm-runner") or cmd[0].endswith("ollama-airllm-runner"), cmd
    assert 'msg="airllm fit decision" airllm=true reason="airllm: forced by AIRLLM_FORCE=1"' in forced.log()
    chunks = _stream(forced, "/api/generate", {"model": MODEL, "prompt": "hello", "options": FAST})
    assert chunks[-1]["done"] and not any(c["done"] for c in chunks[:-1])
    assert "".join(c["response"] for c in chunks) == r["response"]


def test_chat_streaming_and_not(forced):
    r = forced.post("/api/chat", {"model": MODEL, "messages": CHAT, "stream": False, "options": FAST})
    assert r["done"] and r["message"]["role"] == "assistant"
    chunks = _stream(forced, "/api/chat", {"model": MODEL, "messages": CHAT, "options": FAST})
    assert chunks[-1]["done"] and chunks[-1]["done_reason"] in ("stop", "length")
    assert "".join(c["message"]["content"] for c in chunks) == r["message"]["content"]


def test_openai_chat_completions(forced):
    from openai import OpenAI

    client = OpenAI(base_url=forced.url + "/v1", api_key="ollama", max_retries=0, timeout=120)
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length")
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    )
    assert text == r.choices[0].message.content


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer"},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "days", "sunny"],
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_format_json_schema_gives_valid_json(forced, seed):
    r = forced.post(
        "/api/chat",
        {
            "model": MODEL,
            "messages": CHAT,
            "stream": False,
            "format": SCHEMA,
            "options": {"temperature": 1.0, "seed": seed, "num_predict": 400},
        },
    )
    assert r["done_reason"] == "stop", r
    jsonschema.validate(json.loads(r["message"]["content"]), SCHEMA)


def test_a_request_with_tools(forced):
    show = forced.post("/api/show", {"model": MODEL})
    assert "tools" in show["capabilities"], show["capabilities"]
    r = forced.post(
        "/api/chat",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "weather in Paris?"}],
            "tools": WEATHER_TOOLS,
            "stream": False,
            "options": FAST,
        },
    )
    assert r["done"] and r["message"]["role"] == "assistant"
    for call in r["message"].get("tool_calls", []):
        assert isinstance(call["function"]["arguments"], dict)


def test_ps_shows_the_runner_memory(forced):
    forced.post("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False, "options": FAST})
    (loaded,) = _ps(forced)
    assert loaded["name"] == f"{MODEL}:latest" and loaded["size"] > 0
    out = forced.cli("ps")
    assert out.returncode == 0 and f"{MODEL}:latest" in out.stdout and "CPU" in out.stdout, out.stdout


def _ps(srv) -> list[dict]:
    r = httpx.get(srv.url + "/api/ps", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["models"]


def _wait(cond, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_keep_alive_0_unloads_the_runner(forced):
    forced.post("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False, "options": FAST})
    (proc,) = forced.runners()
    forced.post("/api/generate", {"model": MODEL, "keep_alive": 0})
    _wait(lambda: not _ps(forced), "the model to leave /api/ps")
    _wait(lambda: not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE, "the runner to exit")


def test_a_client_that_disconnects_cancels_generation(forced):
    body = {"model": MODEL, "prompt": "tell me a story", "options": {"temperature": 0, "num_predict": 200}}
    full = forced.post("/api/generate", {**body, "stream": False})
    assert full["done_reason"] == "length", "this prompt must run to num_predict, or the test means nothing"
    before = forced.log().count("generation cancelled")
    body["options"]["num_predict"] = 100000
    with httpx.stream("POST", forced.url + "/api/generate", json=body, timeout=120) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n == 3:
                break
    _wait(lambda: forced.log().count("generation cancelled") > before, "the runner to log the cancellation")
    again = forced.post("/api/generate", {**body, "stream": False, "options": FAST})
    assert again["done"]


def test_after_kill_9_of_the_runner_the_next_request_succeeds(forced):
    forced.post("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False, "options": FAST})
    (proc,) = forced.runners()
    proc.kill()
    proc.wait(30)
    r = forced.post("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False, "options": FAST})
    assert r["done"]
    (new,) = forced.runners()
    assert new.pid != proc.pid


def test_without_force_llama_server_serves(plain):
    r = plain.post("/api/generate", {"model": MODEL, "prompt": "hello", "stream": False, "options": FAST})
    assert r["done"]
    cmd = _runner_cmdline(plain)
    assert cmd[0].endswith("/lib/ollama/llama-server"), cmd
    assert 'msg="airllm fit decision" airllm=false reason="llama-server: no GPU selected' in plain.log()


def test_the_patched_ollama_is_the_pinned_release(forced):
    out = forced.cli("--version")
    assert out.returncode == 0 and "ollama version is 0.34.4" in out.stdout, out.stdout + out.stderr
