"""Issue 13 (server side): signals, no 5xx for bad input, one request cannot freeze the server, small defects.

Each test names the defect it guards. The runner runs for real on tiny models (no mocks).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from ollama_airllm.engine.sampling import Sampler, SamplingParams
from ollama_airllm.server.params import parse_completion

HANG = 30  # seconds: only to detect a hang, never a speed assertion


@pytest.fixture(scope="module")
def small(chat_model, srvtools, module_servers):
    """A runner with a small context (128 tokens per slot), one slot, embeddings on."""
    srv = srvtools.launch_small_runner(chat_model, n_slots=1)
    module_servers.append(srv)
    return srv


@pytest.fixture(scope="module")
def slow_model(tiny_gguf):
    """A model big enough that loading it takes a moment (about 200 MB of Q8_0)."""
    return tiny_gguf("llama", "Q8_0", n_layers=16, hidden=1024, intermediate=2816, heads=8, kv_heads=4)


def _post(srv, path: str, body=None, raw: bytes | str | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body)
    return httpx.post(
        srv.url + path, content=content, headers={"content-type": "application/json"}, timeout=HANG
    )


def _assert_error(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, r.text[:500]
    err = r.json()["error"]
    assert {"code", "message", "type"} <= set(err) and err["code"] == status
    for w in words:
        assert w in err["message"], err["message"]
    return err["message"]


def _wait_for_line(srv, text: str) -> None:
    deadline = time.monotonic() + 120
    while text not in srv.log():
        assert srv.proc.poll() is None, srv.log()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in:\n{srv.log()[-3000:]}"
        time.sleep(0.01)


def _wait_until_it_catches_sigterm(pid: int) -> None:
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.005)
    raise AssertionError("the runner never installed a SIGTERM handler")


# --- 3. signals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_loading_exits_0(start_runner, slow_model, sig):
    """Was exit 134 ("terminate called without an active exception"): the process ended under the loader."""
    mid_load = 0
    for delay in (None, 0.0, 0.05, 0.2):
        srv = start_runner(slow_model, "-c", "256", "-t", "1", wait=False)
        if delay is None:  # still importing torch, before uvicorn's signal handlers
            _wait_until_it_catches_sigterm(srv.proc.pid)
        else:
            _wait_for_line(srv, "main: loading model")
            time.sleep(delay)
        assert srv.stop(sig, timeout=HANG) == 0, srv.log()[-3000:]
        log = srv.log()
        assert "terminate called" not in log and "Traceback" not in log, log[-3000:]
        mid_load += "main: loading model" in log and "main: model loaded" not in log
    assert mid_load, "no try stopped the runner while the model was loading"


def test_queued_request_never_starts_after_sigterm(start_runner, chat_model):
    """A request waiting for the only slot gets a 503 (or a closed connection) and never generates."""
    srv = start_runner(chat_model, "-c", "4096", "-np", "1", "-t", "1")
    results: dict[str, object] = {}
    first_token = threading.Event()

    def running() -> None:
        body = {"prompt": "hello", "n_predict": 4000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", srv.url + "/completion", json=body, timeout=HANG) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    first_token.set()

    def queued() -> None:
        try:
            results["queued"] = httpx.post(
                srv.url + "/completion", json={"prompt": "other", "n_predict": 4}, timeout=HANG
            )
        except httpx.TransportError as e:
            results["queued"] = e

    a = threading.Thread(target=running)
    a.start()
    assert first_token.wait(HANG)
    b = threading.Thread(target=queued)
    b.start()
    time.sleep(0.5)  # b is now waiting for the slot
    assert srv.stop(signal.SIGTERM, timeout=HANG) == 0
    a.join(HANG)
    b.join(HANG)
    r = results["queued"]
    if isinstance(r, httpx.Response):
        _assert_error(r, 503, "shutting down")
    log = srv.log()
    assert "Traceback" not in log and "ASGI" not in log, log[-3000:]
    assert log.count("slot 0: generation cancelled") + log.count("slot 0: done") == 1, log[-3000:]


# --- 4. no 5xx for bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": 1e308},
        {"temperature": 1e-45},
        {"temperature": 1e-300},
        {"repeat_penalty": 1e308},
        {"repeat_penalty": 1e-30},
        {"frequency_penalty": -3e38, "presence_penalty": -3e38},
        {"frequency_penalty": 3e38, "presence_penalty": 3e38},
        {"typical_p": 1e-45, "top_p": 1e-45, "min_p": 1e-45},
        {"seed": 2**64 - 1},
        {"seed": -5},
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_extreme_sampler_values_generate(small, extra):
    """Were 500 "probability tensor contains inf, nan or element < 0": clamped like llama-server's floats."""
    r = _post(small, "/completion", {"prompt": "hello hello hello", "n_predict": 2, **extra})
    assert r.status_code == 200, r.text[:500]
    assert r.json()["tokens_predicted"] == 2


@pytest.mark.parametrize("value", [0, -1, 1e-45, -3e38])
def test_repeat_penalty_not_above_zero_is_a_400(small, value):
    """Was a 500 (a division by 0 made NaN); llama-server refuses it with this message."""
    r = _post(small, "/completion", {"prompt": "hello hello", "n_predict": 1, "repeat_penalty": value})
    _assert_error(r, 400, "penalty_repeat must be finite and greater than 0", "'repeat_penalty'")


def test_seed_beyond_64_bits_is_a_clear_400(small):
    """Was "Overflow when unpacking long long"."""
    msg = _assert_error(_post(small, "/completion", {"prompt": "x", "seed": 2**64}), 400, "'seed'")
    assert "18446744073709551615" in msg


@pytest.mark.parametrize("depth", [300, 1000, 100_000])
@pytest.mark.parametrize("path", ["/completion", "/v1/chat/completions", "/tokenize"])
def test_deep_json_is_a_400(small, path, depth):
    """Was a RecursionError 500."""
    raw = '{"prompt": ' + "[" * depth + "]" * depth + "}"
    _assert_error(_post(small, path, raw=raw), 400, "nested deeper than 256")


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/completion", '{"prompt": "a\\ud800b", "n_predict": 1}', "'prompt'"),
        ("/completion", '{"prompt": "a", "stop": ["x\\udfff"], "n_predict": 1}', "'stop[0]'"),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": "\\ud800"}]}',
            "'messages[0].content'",
        ),
        ("/tokenize", '{"content": "\\udc00"}', "'content'"),
        (
            "/apply-template",
            '{"messages": [{"role": "user", "content": "x"}], "\\ud800": 1}',
            "the key '\\ud800'",
        ),
    ],
    ids=["prompt", "stop", "chat", "tokenize", "key"],
)
def test_lone_surrogate_is_a_400_naming_the_field(small, path, raw, field):
    """Were 500s; nlohmann's parser (llama-server) rejects them too."""
    _assert_error(_post(small, path, raw=raw), 400, "lone surrogate", field)


def test_valid_surrogate_pair_and_bad_utf8(small):
    ok = _post(small, "/tokenize", raw='{"content": "\\ud83d\\ude00"}')
    assert ok.status_code == 200 and ok.json()["tokens"]
    _assert_error(_post(small, "/tokenize", raw=b'{"content": "\xed\xa0\x80"}'), 400, "ill-formed UTF-8")


@pytest.mark.parametrize("text", [1, [1], None, {"a": 1}], ids=["int", "list", "null", "object"])
def test_chat_text_part_of_wrong_type_is_a_400(small, text):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}], "max_tokens": 1}
    _assert_error(_post(small, "/v1/chat/completions", body), 400, "'messages[0].content[0].text'")
    _assert_error(_post(small, "/apply-template", body), 400, "type must be string")


def test_embedding_longer_than_the_context_is_a_400(small):
    _assert_error(_post(small, "/embedding", {"content": "hello " * 400}), 400, "too large to process")
    _assert_error(_post(small, "/v1/embeddings", {"input": "hello " * 400}), 400, "too large to process")


# --- 5. one request must not freeze the server -----------------------------------------------------------


def _health_during(srv, request) -> httpx.Response:
    """Run request() in a thread; while it is in flight, /health must keep answering."""
    out: list = []
    th = threading.Thread(target=lambda: out.append(request()))
    th.start()
    answered = 0
    while th.is_alive():
        assert httpx.get(srv.url + "/health", timeout=HANG).status_code == 200
        answered += 1
        time.sleep(0.05)
    th.join()
    assert answered > 0
    return out[0]


def _slow_body(prefix: bytes, n_mib: int, suffix: bytes):
    yield prefix
    for _ in range(n_mib):
        yield b"a" * (1 << 20)
        time.sleep(0.05)  # keeps the request in flight while /health is asked
    yield suffix


def test_oversized_body_is_a_413_while_health_answers(small):
    def send():
        return httpx.post(
            small.url + "/completion", content=_slow_body(b'{"prompt": "', 20, b'"}'), timeout=HANG
        )

    _assert_error(_health_during(small, send), 413, "16 MiB")
    declared = _post(small, "/completion", raw=b"{" + b" " * (17 << 20) + b"}")
    _assert_error(declared, 413, "request body too large")


def test_huge_prompt_is_refused_without_tokenizing(small):
    """Was: a 10 MB prompt blocked /health and every stream for 19 s while it was tokenized."""

    def send():
        return _post(small, "/completion", {"prompt": "hello world " * 800_000, "n_predict": 1})

    r = _health_during(small, send)
    _assert_error(r, 400, "at least", "exceeds the available context size (128 tokens)")
    assert r.json()["error"]["type"] == "exceed_context_size_error"
    chat = {"messages": [{"role": "user", "content": "hello world " * 800_000}]}
    _assert_error(_post(small, "/v1/chat/completions", chat), 400, "at least")
    assert httpx.get(small.url + "/health", timeout=HANG).status_code == 200


def test_health_answers_while_a_long_text_is_tokenized(small):
    """/tokenize has no context bound: megabytes of text are tokenized in a worker (encode_batch, which
    releases the GIL) while /health keeps answering."""

    def send():
        return _post(small, "/tokenize", {"content": "hello world " * 300_000})

    r = _health_during(small, send)
    assert r.status_code == 200 and len(r.json()["tokens"]) > 300_000


# --- 7. smaller defects ----------------------------------------------------------------------------------


def test_listening_line_comes_after_the_bind(start_runner, chat_model):
    srv = start_runner(chat_model, "-c", "256", wait=False)
    _wait_for_line(srv, "main: HTTP server is listening")
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=HANG):
        pass  # connection refused before the fix: the line came before uvicorn had bound


def test_taken_port_is_one_clear_line(chat_model, srvtools):
    """Was exit 3 without a clear line; llama-server says it cannot bind and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [*srvtools.runner_cmd(), "--model", str(chat_model), "--host", "127.0.0.1", "--port", str(port)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 1, done
    assert f"error: --port {port}: address already in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "HTTP server is listening" not in done.stdout


@pytest.mark.parametrize("path, body", [
    ("/completion", {"prompt": "hi", "n_predict": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
])  # fmt: skip
def test_an_id_slot_that_does_not_exist_is_a_400(small, path, body):
    """Was: the request waited for ever for slot 7 of a one-slot server (found by the fuzz run)."""
    _assert_error(_post(small, path, {**body, "id_slot": 7}), 400, "'id_slot': 7 is not a slot", "0 to 0")


def test_grammar_errors_hide_xgrammar_internals(small):
    for body in (
        {"prompt": "x", "grammar": "root ::= foo", "n_predict": 1},
        {"prompt": "x", "json_schema": {"type": "foo"}, "n_predict": 1},
    ):
        msg = _assert_error(_post(small, "/completion", body), 400)
        assert "/project/" not in msg and ".cc:" not in msg and not msg.split("'")[0].startswith("["), msg
    chat = {
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_object", "schema": {"type": 5}},
    }
    _assert_error(_post(small, "/v1/chat/completions", chat), 400, "Field 'response_format'")


def test_openapi_declares_the_error_answers(small):
    paths = httpx.get(small.url + "/openapi.json", timeout=HANG).json()["paths"]
    for path in (
        "/completion",
        "/v1/chat/completions",
        "/tokenize",
        "/detokenize",
        "/apply-template",
        "/v1/embeddings",
    ):
        responses = paths[path]["post"]["responses"]
        assert {"400", "413", "500", "503"} <= set(responses), path
        schema = responses["400"]["content"]["application/json"]["schema"]
        assert schema["properties"]["error"]["required"] == ["code", "message", "type"]
    assert "503" in paths["/health"]["get"]["responses"]


# --- the sampler and the parameter parser, directly ------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 1e-45},
        {"temperature": 1e-300},
        {"temperature": 3.4e38},
        {"temperature": 1e308},
        {"repeat_penalty": 0.0},
        {"repeat_penalty": -3.4e38},
        {"frequency_penalty": -3.4e38, "presence_penalty": -3.4e38},
        {"frequency_penalty": 3.4e38, "presence_penalty": 3.4e38},
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_sampler_never_builds_nan(params):
    x = torch.linspace(-5, 5, 50)
    x[7] = float("-inf")  # masked by a grammar: must stay masked
    history = [3, 3, 7, 40, 49, 49]
    p = SamplingParams(top_k=0, top_p=1.0, min_p=0.0, seed=1, **params)
    s = Sampler(p, 512, history)
    y = s.filter(x)
    assert not torch.isnan(y).any() and not torch.isposinf(y).any()
    assert y[7] == float("-inf")
    for _ in range(20):
        assert s.sample(x) != 7


def test_parser_clamps_floats_into_float32():
    from ollama_airllm.engine import SamplingParams as Defaults

    opts = parse_completion(
        {"temperature": 1e308, "frequency_penalty": -1e308, "seed": 2**40 + 5}, Defaults(), 1
    )
    assert opts.sampling.temperature == pytest.approx(3.4028234663852886e38)
    assert opts.sampling.frequency_penalty == pytest.approx(-3.4028234663852886e38)
    assert opts.sampling.seed == 5  # llama-server's uint32 seed
