"""Conformance: the real llama-server (b11076, CPU) and our runner on the same tiny F32 GGUF.

Both are started with the command line Ollama uses; the same requests go to both. Compared: status codes,
JSON keys and value types (recursively), the SSE event sequence, /tokenize tokens and greedy /completion
tokens (identical), /apply-template text (identical), and every value both servers know alike in /props,
/v1/models and greedy /completion and chat answers (n_ctx, n_vocab, model, token counts, settings...).
Every difference we know of and accept is listed in KNOWN with the reason; anything else fails. The
README's runner section carries the same list.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
from ollama_airllm.devtools.tinytokenizer import WEATHER_TOOLS

pytestmark = [pytest.mark.llamaserver, pytest.mark.slow]

# case -> {difference: why}. Differences are "missing PATH" (llama-server has it, we do not),
# "extra PATH" (we add it), "type PATH ours!=theirs", "status ours!=theirs".
# "value PATH" (PATH with [i] for list items) is a value that differs where both know it.
KNOWN: dict[str, dict[str, str]] = {
    "props": {
        "extra engine": "residency and device of the layer-streaming engine",
        "value endpoint_slots": "/slots is not served",
        "value model_ftype": "the engine names the file type ALL_F32, llama.cpp 'all F32'",
    },
    "models": {
        "value data[0].meta.size": "the engine reports the file's size, llama.cpp the tensors' bytes",
        "value data[0].meta.ftype": "the engine names the file type ALL_F32, llama.cpp 'all F32'",
    },
    "err_json": {
        "status 400!=500": "llama-server answers malformed JSON with 500 server_error; we answer 400",
    },
}
# keys whose value type may legitimately differ between two runs (e.g. empty vs filled lists)
VOLATILE = {"completion_probabilities", "tool_calls"}
# keys whose values are measured, random or name the program, so never equal between two servers
UNEQUAL = {
    "prompt_ms",
    "prompt_per_token_ms",
    "prompt_per_second",
    "predicted_ms",
    "predicted_per_token_ms",
    "predicted_per_second",
    "created",  # a clock reading
    "id",  # chatcmpl-<random>
    "media_marker",  # random per start
    "build_info",
    "system_fingerprint",  # the build
    # which slot is taken, and so how much of the prompt is cached, depends on each server's history
    "id_slot",
    "cache_n",
    "prompt_n",
}


def shape(v):
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(v[0])] if v else []
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    return "null" if v is None else "str"


def differences(ours, theirs, path: str = "") -> list[str]:
    out = []
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for k in theirs:
            p = f"{path}.{k}" if path else k
            if k not in ours:
                out.append(f"missing {p}")
            elif k not in VOLATILE:
                out += differences(ours[k], theirs[k], p)
        out += [f"extra {path + '.' if path else ''}{k}" for k in ours if k not in theirs]
    elif isinstance(ours, list) and isinstance(theirs, list):
        if ours and theirs:
            out += differences(ours[0], theirs[0], path + "[]")
    elif shape(ours) != shape(theirs) and not (ours == [] or theirs == []):
        out.append(f"type {path} {json.dumps(shape(ours))}!={json.dumps(shape(theirs))}")
    return out


def value_differences(ours, theirs, path: str = "") -> list[str]:
    """'value PATH' for each leaf that both have and that differs (floats: llama-server's are float32)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [
            d
            for k in theirs.keys() & ours.keys() - UNEQUAL
            for d in value_differences(ours[k], theirs[k], f"{path}.{k}" if path else k)
        ]
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        pairs = enumerate(zip(ours, theirs, strict=True))
        return [d for i, (a, b) in pairs for d in value_differences(a, b, f"{path}[{i}]")]
    same = ours == theirs
    if isinstance(ours, float | int) and isinstance(theirs, float | int) and not isinstance(ours, bool):
        same = math.isclose(ours, theirs, rel_tol=1e-6)
    return [] if same else [f"value {path}"]


def call(url: str, method: str, path: str, body) -> tuple[int, object]:
    if isinstance(body, bytes):
        r = httpx.request(
            method, url + path, content=body, headers={"content-type": "application/json"}, timeout=120
        )
    else:
        r = httpx.request(method, url + path, json=body, timeout=120)
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [
            json.loads(line[6:])
            for line in r.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
        return r.status_code, {"events": events, "done": "data: [DONE]" in r.text}
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


@pytest.fixture(scope="module")
def ref(chat_model, srvtools, module_servers):
    """The real llama-server with the runner fixture's command line."""
    srv = srvtools.launch(
        [
            srvtools.llama_server_bin(),
            "--model",
            str(chat_model),
            "-c",
            "4096",
            "-np",
            "2",
            "-t",
            "1",
            *srvtools.OLLAMA_FLAGS,
        ]
    )
    module_servers.append(srv)
    return srv


def compare(name: str, ours_url: str, ref_url: str, method: str, path: str, body=None, values=False):
    """Call both servers; fail on any difference not in KNOWN[name]. values: compare values too."""
    s1, b1 = call(ours_url, method, path, body)
    s2, b2 = call(ref_url, method, path, body)
    diffs = [] if s1 == s2 else [f"status {s1}!={s2}"]

    def diff(ours, theirs) -> list[str]:
        return differences(ours, theirs) + (value_differences(ours, theirs) if values else [])

    if isinstance(b1, dict) and isinstance(b2, dict) and "events" in b1 and "events" in b2:
        assert len(b1["events"]) == len(b2["events"]), (name, b1["events"][-2:], b2["events"][-2:])
        assert b1["done"] == b2["done"]
        for i, (e1, e2) in enumerate(zip(b1["events"], b2["events"], strict=True)):
            diffs += [f"event{i if i < len(b1['events']) - 1 else '-last'} {d}" for d in diff(e1, e2)]
    else:
        diffs += diff(b1, b2)
    unknown = sorted(set(diffs) - set(KNOWN.get(name, {})))
    assert not unknown, (
        f"{name}: unexpected differences {unknown}\nours: {str(b1)[:1500]}\nllama-server: {str(b2)[:1500]}"
    )
    return b1, b2


def test_status_endpoints(runner, ref):
    for name, path in (("health", "/health"), ("props", "/props"), ("models", "/v1/models")):
        compare(name, runner.url, ref.url, "GET", path, values=True)
    compare("unknown_route", runner.url, ref.url, "GET", "/no/such/route")


@pytest.mark.parametrize(
    "body",
    [
        {"content": "Hello world, how are you? 12345 !!"},
        {"content": "héllo wörld ✓ 日本", "with_pieces": True},
        {"content": "<|im_start|>user\nhi<|im_end|>", "add_special": True},
        {"content": "<|im_start|>user\nhi<|im_end|>", "parse_special": False},
        {"content": "<think>a</think><tool_call>{}</tool_call>"},
        {"content": ["hello", 5, " world"]},
    ],
)
def test_tokenize_identical(runner, ref, body):
    ours, theirs = compare("tokenize", runner.url, ref.url, "POST", "/tokenize", body)
    assert ours == theirs


def test_detokenize_identical(runner, ref):
    toks = call(ref.url, "POST", "/tokenize", {"content": "Hello <|im_end|> wörld"})[1]["tokens"]
    ours, theirs = compare("detokenize", runner.url, ref.url, "POST", "/detokenize", {"tokens": toks})
    assert ours == theirs


# A random model emits byte tokens that are not valid UTF-8, and llama-server then fails the whole request
# ("The model produced output that does not match the expected Content-only format", 500). Both servers
# get this grammar (printable ASCII and newlines; any point may end), so greedy decoding is still the
# argmax over the same allowed tokens and the outputs are text llama-server can return.
ASCII = "root ::= [ -~\\n]*"
GREEDY = {"n_predict": 16, "temperature": 0, "return_tokens": True, "cache_prompt": True, "grammar": ASCII}


@pytest.mark.parametrize(
    "name, body",
    [
        ("completion", {"prompt": "hello world", **GREEDY}),
        ("completion", {"prompt": "The capital of France is", **GREEDY, "n_predict": 24}),
        ("completion", {"prompt": [1, 263, 80, 335], **GREEDY}),
        ("completion", {"prompt": ["hello", 225, "world"], **GREEDY}),
        ("completion", {"prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", **GREEDY}),
        ("completion", {"prompt": "hello world", **GREEDY, "ignore_eos": True, "n_predict": 32}),
    ],
)
def test_greedy_completion_tokens_identical(runner, ref, name, body):
    ours, theirs = compare(name, runner.url, ref.url, "POST", "/completion", body, values=True)
    assert ours["tokens"] == theirs["tokens"]


@pytest.mark.parametrize(
    "name, body",
    [
        ("completion_stream", {"prompt": "hello world", **GREEDY, "stream": True}),
        ("completion_stream", {"prompt": "hello world", **GREEDY, "stream": True, "ignore_eos": True}),
        ("completion_probs", {"prompt": "hello", **GREEDY, "n_probs": 3, "ignore_eos": True, "n_predict": 4}),
        (
            "completion_probs",
            {"prompt": "hello", **GREEDY, "n_probs": 3, "ignore_eos": True, "n_predict": 4, "stream": True},
        ),
        (
            "completion_grammar",
            {
                "prompt": "hello",
                "n_predict": 20,
                "temperature": 0,
                "grammar": 'root ::= ("yes" | "no") " " [a-z]+ "."',
            },
        ),
        (
            "completion_schema",
            {
                "prompt": "{",
                "n_predict": 400,
                "temperature": 0,
                "json_schema": {
                    "type": "object",
                    "properties": {"a": {"type": "boolean"}},
                    "required": ["a"],
                    "additionalProperties": False,
                },
            },
        ),
    ],
)
def test_completion_shapes(runner, ref, name, body):
    values = name == "completion_stream"  # greedy and unconstrained but for printable ASCII: all alike
    ours, theirs = compare(name, runner.url, ref.url, "POST", "/completion", body, values=values)
    if "events" in ours:
        assert [e.get("tokens") for e in ours["events"]] == [e.get("tokens") for e in theirs["events"]]
    elif name == "completion_schema":  # xgrammar and llama.cpp allow different whitespace inside JSON
        for r in (ours, theirs):  # both grammars are bounded, so both finish well within n_predict
            assert r["stop_type"] == "eos", r
            assert isinstance(json.loads(r["content"])["a"], bool)
    else:
        assert ours["content"] == theirs["content"]


def test_stop_word(runner, ref):
    base = call(ref.url, "POST", "/completion", {"prompt": "hello world", **GREEDY, "ignore_eos": True})[1]
    word = base["content"][5:8]
    body = {"prompt": "hello world", **GREEDY, "ignore_eos": True, "stop": [word]}
    ours, theirs = compare("completion_stop", runner.url, ref.url, "POST", "/completion", body, values=True)
    assert (ours["content"], ours["stop_type"], ours["stopping_word"]) == (
        theirs["content"],
        theirs["stop_type"],
        theirs["stopping_word"],
    )


MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}]
TOOLS = WEATHER_TOOLS


@pytest.mark.parametrize(
    "body",
    [
        {"messages": MESSAGES},
        {"messages": MESSAGES, "tools": TOOLS},
        {
            "messages": [
                *MESSAGES,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "21 C"},
            ],
            "tools": TOOLS,
        },
    ],
)
def test_apply_template_identical(runner, ref, body):
    ours, theirs = compare("apply_template", runner.url, ref.url, "POST", "/apply-template", body)
    assert ours["prompt"] == theirs["prompt"]


@pytest.mark.parametrize(
    "name, body",
    [
        ("chat", {"messages": MESSAGES, "max_tokens": 12, "temperature": 0, "grammar": ASCII}),
        (
            "chat_stream",
            {"messages": MESSAGES, "max_tokens": 12, "temperature": 0, "stream": True, "grammar": ASCII},
        ),
        (
            "chat_stream",
            {
                "messages": MESSAGES,
                "max_tokens": 12,
                "temperature": 0,
                "stream": True,
                "grammar": ASCII,
                "stream_options": {"include_usage": True},
            },
        ),
    ],
)
def test_chat_shapes(runner, ref, name, body):
    ours, theirs = compare(name, runner.url, ref.url, "POST", "/v1/chat/completions", body, values=True)
    if "events" not in ours:
        assert ours["choices"][0]["message"].get("content") == theirs["choices"][0]["message"].get("content")


def test_chat_with_tools(runner, ref):
    """With tools, llama-server parses the reply as Hermes tool calls and fails (500) on the random model's
    text, and it refuses a grammar next to tools. We answer with the text as content (KNOWN)."""
    body = {"messages": MESSAGES, "tools": TOOLS, "max_tokens": 12, "temperature": 0}
    s1, ours = call(runner.url, "POST", "/v1/chat/completions", body)
    s2, theirs = call(ref.url, "POST", "/v1/chat/completions", body)
    assert s1 == 200 and ours["choices"][0]["message"]["role"] == "assistant"
    if s2 == 500:
        assert "does not match the expected" in theirs["error"]["message"]
    else:
        assert not differences(ours, theirs)


@pytest.mark.parametrize(
    "name, body",
    [
        ("err_n_predict", {"prompt": "x", "n_predict": -5}),
        ("err_type", {"prompt": "x", "n_predict": "ten"}),
        ("err_bool", {"prompt": "x", "stream": 3}),
        ("err_prompt_shape", {"prompt": {"a": 1}}),
        ("err_no_prompt", {"n_predict": 3}),
        ("err_bad_token", {"prompt": [1, 99999]}),
        ("err_ctx", {"prompt": "hello world " * 1500, "n_predict": 1}),
        ("err_json", b"{not json"),
    ],
)
def test_errors(runner, ref, name, body):
    ours, theirs = compare(name, runner.url, ref.url, "POST", "/completion", body)
    assert ours["error"]["type"] == theirs["error"]["type"] or name in KNOWN
    if name in ("err_n_predict", "err_ctx", "err_bad_token"):
        assert ours["error"]["message"] == theirs["error"]["message"]


@pytest.mark.parametrize(
    "name, body",
    [
        ("chat_err_messages", {"messages": "hi"}),
        ("chat_err_content", {"messages": [{"role": "user"}]}),
        ("chat_err_missing", {}),
    ],
)
def test_chat_errors(runner, ref, name, body):
    ours, theirs = compare(name, runner.url, ref.url, "POST", "/v1/chat/completions", body)
    assert ours["error"]["message"] == theirs["error"]["message"]


def test_embeddings(chat_model, srvtools, module_servers, start_runner):
    """Mean pooling over the last hidden state, euclidean-normalized: same vector up to float noise."""
    flags = ["-c", "1024", "-t", "1", "--embedding", "--pooling", "mean"]
    ref_e = srvtools.launch([srvtools.llama_server_bin(), "--model", str(chat_model), *flags])
    module_servers.append(ref_e)
    ours_e = start_runner(chat_model, *flags)
    body = {"input": "hello world, this is a test"}
    ours, theirs = compare("embeddings", ours_e.url, ref_e.url, "POST", "/v1/embeddings", body)
    a, b = ours["data"][0]["embedding"], theirs["data"][0]["embedding"]
    assert len(a) == len(b)
    cos = sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )
    assert cos > 0.9999
    assert ours["usage"] == theirs["usage"]
