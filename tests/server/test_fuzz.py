"""Fuzz runs, zero 5xx: schemathesis against the runner's published OpenAPI (positive and negative bodies),
and hypothesis putting random JSON values (deep nesting, lone surrogates, extreme numbers) in the fields of
/completion, /v1/chat/completions, /tokenize, /apply-template and /embedding.

Bounded: a small context (every generation ends within 128 tokens) and a fixed number of examples per
operation and mode, so the run takes a minute or two on a busy 2-core machine.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

EXAMPLES = 25


@pytest.fixture(scope="module")
def fuzz_server(chat_model, srvtools, module_servers):
    srv = srvtools.launch_small_runner(chat_model, n_slots=2)
    module_servers.append(srv)
    return srv


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors(fuzz_server, mode):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/completion",
        "/v1/chat/completions",
        "/tokenize",
        "/detokenize",
        "/apply-template",
        "/v1/embeddings",
    }
    seen: list[tuple[str, int]] = []
    for op in operations:
        if mode is GenerationMode.NEGATIVE and op.method.upper() == "GET":
            continue  # nothing to get wrong in a GET without parameters

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(base_url=fuzz_server.url, timeout=120)
            seen.append((case.path, response.status_code))
            assert response.status_code < 500, (
                f"{case.method} {case.path} {case.body!r} -> {response.status_code}: {response.text[:500]}"
            )
            if response.status_code >= 400:
                err = response.json()["error"]
                assert {"code", "message", "type"} <= set(err) and err["code"] == response.status_code

        check()
    assert len({path for path, _status in seen}) >= 6
    assert "Traceback" not in fuzz_server.log()


# --- hypothesis: random JSON values in the fields of each endpoint ----------------------------------------

_TEXT_OK = st.text(max_size=16) | st.sampled_from(["", "<|im_start|>", "é\u2581", "hello world"])
_SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
_NUMBER = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, -1, 1e308, -1e308, 1e-45, 3.4e38, -3.4e38, 2**64, 2**32])
)
_JSON = st.recursive(
    st.none() | st.booleans() | _NUMBER | _TEXT_OK,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(_TEXT_OK, c, max_size=4),
    max_leaves=10,
)
_DEEP = st.integers(250, 400).map(lambda n: json.loads("[" * n + "]" * n))
_ODD = _JSON | _DEEP | _SURROGATES  # wrong types, too deep, lone surrogates


def _field(good, odds: int = 3):
    """Mostly a value of the right kind, one time in odds + 1 anything at all."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda ok: good if ok else _ODD)


_TEXT = _field(_TEXT_OK)
_SHORT = _field(st.integers(0, 2), 5)  # null: until the 128-token context is full
_PROMPT = _field(_TEXT_OK | st.lists(st.integers(-2, 300) | _TEXT_OK, max_size=4))
_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "text", "image_url", "other"]), "text": _field(_TEXT_OK, 9)}
)
_MESSAGE = st.fixed_dictionaries(
    {
        "role": _field(st.sampled_from(["system", "user", "assistant", "tool"]), 9),
        "content": _field(_TEXT_OK | st.lists(_PART, max_size=2), 9),
    },
    optional={"tool_calls": _JSON},
)
_MESSAGES = _field(st.lists(_MESSAGE, min_size=1, max_size=3))
_GRAMMAR = st.sampled_from(['root ::= "a" | "b"', "root ::= [0-9]+", "root ::= foo", "x ::= "]) | _TEXT_OK
_SCHEMA = st.sampled_from([{"type": "integer"}, {"type": "foo"}, {"$ref": "#/x"}, {"enum": []}, True]) | _JSON
_SAMPLING = {
    **{n: _field(_NUMBER) for n in (
        "temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
        "frequency_penalty", "presence_penalty", "seed", "n_probs", "min_keep", "id_slot", "n_keep",
    )},
    **{n: _field(st.booleans()) for n in ("stream", "cache_prompt", "ignore_eos", "post_sampling_probs")},
    "stop": _field(_TEXT_OK | st.lists(_TEXT_OK, max_size=3)),
    "response_fields": _field(st.lists(_TEXT_OK, max_size=2)),
}  # fmt: skip


def _some(fields: dict, most: int = 3):
    """Up to `most` of `fields`, each with its own value strategy."""
    names = st.lists(st.sampled_from(sorted(fields)), max_size=most, unique=True)
    return names.flatmap(lambda ks: st.fixed_dictionaries({k: fields[k] for k in ks}))


def _body(required: dict, optional: dict):
    return st.tuples(st.fixed_dictionaries(required), _some(optional)).map(lambda t: {**t[0], **t[1]})


_BODIES = {
    "/completion": _body(
        {"n_predict": _SHORT, "prompt": _PROMPT},
        {"grammar": _field(_GRAMMAR), "json_schema": _field(_SCHEMA), **_SAMPLING},
    ),
    "/v1/chat/completions": _body(
        {"max_tokens": _SHORT, "messages": _MESSAGES},
        {
            "response_format": _field(
                st.fixed_dictionaries({"type": st.sampled_from(["json_object", "text"]), "schema": _SCHEMA})
            ),
            "tools": _field(st.lists(_JSON, max_size=2)),
            "chat_template_kwargs": _field(st.dictionaries(_TEXT_OK, _JSON, max_size=2)),
            **_SAMPLING,
        },
    ),
    "/tokenize": _body(
        {"content": _PROMPT},
        {n: _field(st.booleans()) for n in ("add_special", "with_pieces", "parse_special")},
    ),
    "/apply-template": _body({"messages": _MESSAGES}, {"tools": _field(st.lists(_JSON, max_size=2))}),
    "/embedding": _body(
        {"content": _PROMPT},
        {"embd_normalize": _field(st.integers(-2, 4)), "input": _PROMPT},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", list(_BODIES))
def test_random_json_fields_never_5xx(fuzz_server, path):
    """Any JSON value in any field: a 2xx or a 4xx in llama-server's error shape, never a 5xx."""
    client = httpx.Client(base_url=fuzz_server.url, timeout=120)

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=_BODIES[path])
    def check(body):
        raw = json.dumps(body)  # ensure_ascii: lone surrogates travel as \ud800 escapes
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code < 500, f"{path} {raw[:300]} -> {r.status_code}: {r.text[:500]}"
        assert '"type":"server_error"' not in r.text, f"{path} {raw[:300]} -> {r.text[:500]}"
        if r.status_code >= 400:
            err = r.json()["error"]
            assert {"code", "message", "type"} <= set(err) and err["code"] == r.status_code

    with client:
        check()
    assert "Traceback" not in fuzz_server.log()
