"""Our runner over HTTP on a tiny model: endpoints, errors, slots, cancellation, SIGTERM, logs, standalone."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

# Ollama v0.34.4's parsers of llama-server output (llm/llama_server.go, memoryParsingWriter)
BUFFER_RE = re.compile(
    r"(?m)(?:^|\n)[^\n:]*?([A-Za-z_][A-Za-z0-9_]*):\s+(\S+)\s+(model|KV|compute|output|RS)"
    r"\s+buffer size\s*=\s*([\d.]+)\s*MiB"
)
OFFLOADED_RE = re.compile(r"offloaded\s+(\d+)/(\d+)\s+layers to GPU")


def sse_events(text: str) -> list[dict]:
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def post(srv, path, body, **kw):
    return httpx.post(srv.url + path, json=body, timeout=120, **kw)


def test_health_is_503_while_loading():
    from ollama_airllm.server.app import Runner, create_app
    from ollama_airllm.server.args import RunnerConfig

    app = create_app(Runner(RunnerConfig(model="x")))

    async def call():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get("/health"), await c.post("/completion", json={"prompt": "x"})

    import asyncio

    health, comp = asyncio.run(call())
    assert health.status_code == 503 and comp.status_code == 503
    assert health.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def test_log_lines_parse_like_ollama(runner):
    log = runner.log()
    m = OFFLOADED_RE.search(log)
    assert m and int(m.group(2)) == 3  # 2 layers + the output layer, as llama.cpp counts
    buffers = {(c, b, k) for c, b, k, _ in BUFFER_RE.findall(log)}
    assert {("load_tensors", "CPU_Mapped", "model"), ("llama_kv_cache", "CPU", "KV")} <= buffers
    assert "Traceback" not in log


def test_completion_non_stream_and_stream_agree(runner):
    body = {"prompt": "hello world", "n_predict": 8, "temperature": 0, "return_tokens": True}
    one = post(runner, "/completion", body).json()
    assert one["stop"] is True and one["stop_type"] == "limit" and len(one["tokens"]) == 8
    assert (
        one["timings"]["predicted_n"] == 8
        and one["tokens_evaluated"] == one["timings"]["prompt_n"] + one["timings"]["cache_n"]
    )
    r = post(runner, "/completion", {**body, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert [e["stop"] for e in events] == [False] * 8 + [True]
    assert [t for e in events[:-1] for t in e["tokens"]] == one["tokens"]
    assert "".join(e["content"] for e in events) == one["content"]
    # the same prompt as token ids (and mixed) gives the same tokens
    ids = post(runner, "/tokenize", {"content": "hello world"}).json()["tokens"]
    for prompt in (ids, [*ids[:2], post(runner, "/detokenize", {"tokens": ids[2:]}).json()["content"]]):
        assert post(runner, "/completion", {**body, "prompt": prompt}).json()["tokens"] == one["tokens"]


def test_stop_words_probs_and_grammar(runner):
    body = {"prompt": "hello", "n_predict": 12, "temperature": 0, "ignore_eos": True}
    base = post(runner, "/completion", body).json()["content"]
    word = base[4:7]
    r = post(runner, "/completion", {**body, "stop": [word]}).json()
    assert (
        r["stop_type"] == "word" and r["stopping_word"] == word and r["content"] == base[: base.index(word)]
    )
    r = post(
        runner,
        "/completion",
        {"prompt": "the", "n_predict": 3, "n_probs": 2, "temperature": 0, "ignore_eos": True},
    ).json()
    assert len(r["completion_probabilities"]) == 3
    assert len(r["completion_probabilities"][0]["top_logprobs"]) == 2
    r = post(
        runner, "/completion", {"prompt": "the", "n_predict": 40, "grammar": 'root ::= "yes" | "no"'}
    ).json()
    assert r["content"] in ("yes", "no") and r["stop_type"] == "eos"
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    # the schema's grammar is bounded (schema_grammar.py), so even a random model finishes within 400
    r = post(runner, "/completion", {"prompt": "{", "n_predict": 400, "json_schema": schema}).json()
    assert r["stop_type"] == "eos", r
    assert isinstance(json.loads(r["content"])["n"], int)


@pytest.mark.parametrize(
    "path, content, message",
    [
        ("/completion", b"{bad json", "parse error"),
        ("/completion", b"[1, 2]", "must be a JSON object"),
        ("/completion", b'{"prompt": "x", "n_predict": -5}', "Value must be between -1 <= value"),
        ("/completion", b'{"prompt": "x", "n_predict": "ten"}', "type must be number, but is string"),
        ("/completion", b'{"prompt": "x", "stream": "yes"}', "type must be boolean"),
        ("/completion", b'{"prompt": {"a": 1}}', '"prompt" elements must be'),
        ("/completion", b'{"prompt": [1, 99999]}', "Prompt contains invalid tokens"),
        ("/completion", b'{"n_predict": 1}', "key 'prompt' not found"),
        ("/completion", b'{"prompt": "x", "grammar": "root ::= ("}', "grammar"),
        ("/v1/chat/completions", b'{"messages": "hi"}', "Expected 'messages' to be an array"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}', "must contain 'content'"),
        ("/v1/chat/completions", b"{}", "'messages' is required"),
        ("/tokenize", b'{"content": 5}', "must be a string or an array"),
        ("/detokenize", b'{"tokens": ["a"]}', "array of token ids"),
        ("/v1/embeddings", b'{"input": "x"}', "does not support embeddings"),
    ],
)
def test_bad_input_gets_llama_server_error_json(runner, path, content, message):
    r = httpx.post(
        runner.url + path, content=content, headers={"content-type": "application/json"}, timeout=60
    )
    assert 400 <= r.status_code < 600 and r.status_code != 500, r.text
    err = r.json()["error"]
    assert set(err) >= {"code", "message", "type"} and err["code"] == r.status_code
    assert message in err["message"]
    assert "Traceback" not in r.text


def test_prompt_longer_than_context(runner):
    r = post(runner, "/completion", {"prompt": "hello world " * 1500, "n_predict": 1})
    assert r.status_code == 400
    err = r.json()["error"]
    assert (
        err["type"] == "exceed_context_size_error" and err["n_ctx"] == 2048 and err["n_prompt_tokens"] > 2048
    )


def test_unknown_route_and_metadata(runner):
    r = httpx.get(runner.url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    models = httpx.get(runner.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["meta"]["n_ctx"] == 2048
    props = httpx.get(runner.url + "/props").json()
    assert props["total_slots"] == 2 and "<tool_call>" in props["chat_template"]
    prompt = post(runner, "/apply-template", {"messages": [{"role": "user", "content": "hi"}]}).json()[
        "prompt"
    ]
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    pieces = post(runner, "/tokenize", {"content": "hi <|im_end|>", "with_pieces": True}).json()["tokens"]
    assert {"id": 4, "piece": "<|im_end|>"} not in pieces and any(p["id"] == 4 for p in pieces)


FORCED_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_chat_tool_calls_and_reasoning(runner):
    grammar = "root ::= " + json.dumps("<think>ok</think>" + FORCED_CALL)
    body = {
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": TOOLS,
        "grammar": grammar,
        "max_tokens": 200,
    }
    r = post(runner, "/v1/chat/completions", body).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["reasoning_content"] == "ok" and msg["content"] is None
    call = msg["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {
        "city": "Paris"
    }
    chunks = sse_events(post(runner, "/v1/chat/completions", {**body, "stream": True}).text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and "timings" in chunks[-1]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "ok"
    assert [tc["function"]["name"] for d in deltas for tc in d.get("tool_calls", [])] == ["get_weather"]


def _stream_first_event(url: str, body: dict) -> None:
    with httpx.stream("POST", url + "/completion", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                return  # closing the connection here is the client going away


def test_slots_queue_and_disconnect_cancels(start_runner, chat_model):
    srv = start_runner(chat_model, "-c", "2048", "-np", "1", "-t", "1")
    body = {"prompt": "hello", "n_predict": 6, "temperature": 0}
    results: list[int] = []

    def one():
        results.append(post(srv, "/completion", body).json()["tokens_predicted"])

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [6, 6, 6]  # one slot: the others waited their turn
    _stream_first_event(srv.url, {"prompt": "hello", "n_predict": 1500, "temperature": 0})
    for _ in range(600):
        if "generation cancelled after" in srv.log():
            break
        time.sleep(0.1)
    m = re.search(r"slot 0: generation cancelled after (\d+) tokens", srv.log())
    assert m and int(m.group(1)) < 1500
    assert post(srv, "/completion", body).json()["tokens_predicted"] == 6


def test_sigterm_and_ollama_library_paths(start_runner, chat_model, tmp_path):
    libdir = tmp_path / "lib" / "ollama"
    libdir.mkdir(parents=True)
    (libdir / "libggml-base.so").write_bytes(b"")
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        "GGML_BACKEND_PATH": str(libdir / "libggml-hip.so"),
        "ROCR_VISIBLE_DEVICES": "0",
    }
    srv = start_runner(chat_model, "-c", "2048", env=env)
    assert "removed Ollama's llama.cpp libraries" in srv.log()
    proc_env = Path(f"/proc/{srv.proc.pid}/environ").read_bytes().split(b"\0")
    assert not any(e.startswith(b"GGML_BACKEND_PATH=") for e in proc_env)
    assert not any(str(libdir).encode() in e for e in proc_env if e.startswith(b"LD_LIBRARY_PATH="))
    assert b"ROCR_VISIBLE_DEVICES=0" in proc_env
    done = threading.Event()

    def long_stream():
        with contextlib.suppress(httpx.HTTPError):
            post(srv, "/completion", {"prompt": "hi", "n_predict": 1500, "stream": True})
        done.set()

    threading.Thread(target=long_stream, daemon=True).start()
    time.sleep(1.0)
    assert srv.stop(signal.SIGTERM) == 0
    assert "cleaning up before exit" in srv.log()
    assert done.wait(30)


def test_standalone_serve_with_embeddings(chat_model, srvtools, module_servers):
    import shutil

    exe = shutil.which("ollama-airllm")
    cmd = [exe] if exe else ["python", "-m", "ollama_airllm.cli"]
    srv = srvtools.launch([*cmd, "serve", "--model", str(chat_model), "--embedding", "-c", "1024"])
    module_servers.append(srv)
    models = httpx.get(srv.url + "/v1/models").json()
    assert models["data"][0]["id"] == chat_model.name
    r = post(srv, "/v1/embeddings", {"input": "hello world"}).json()
    vec = r["data"][0]["embedding"]
    assert r["usage"]["prompt_tokens"] > 0 and len(vec) == 64
    assert abs(sum(x * x for x in vec) - 1.0) < 1e-4  # euclidean-normalized, llama-server's default


def test_ollama_completion_request(runner):
    """The body Ollama v0.34.4 sends (llamaServerCompletionRequest), read as Ollama reads the stream."""
    body = {
        "prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "stream": True,
        "cache_prompt": True,
        "n_predict": 8,
        "n_keep": 4,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.0,
        "stop": ["<|im_end|>"],
        "repeat_penalty": 1.1,
        "repeat_last_n": 64,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "typical_p": 1.0,
        "seed": 42,
        "grammar": "",
        "json_schema": None,
        "n_probs": 0,
        "preserved_tokens": ["<tool_call>"],
    }
    r = post(runner, "/completion", body)
    assert r.status_code == 200
    events = sse_events(r.text)
    final = events[-1]
    assert final["stop"] is True and final["stop_type"] in ("eos", "word", "limit")
    t = final["timings"]
    assert {"cache_n", "prompt_n", "prompt_ms", "predicted_n", "predicted_ms"} <= set(t)
    assert t["cache_n"] + t["prompt_n"] == final["tokens_evaluated"]
    again = sse_events(post(runner, "/completion", body).text)  # same seed: same text, prompt now cached
    assert "".join(e["content"] for e in again) == "".join(e["content"] for e in events)
    assert again[-1]["timings"]["cache_n"] > 0
