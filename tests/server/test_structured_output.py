"""Structured output that is always valid: bounded JSON-schema grammars; random schemas on random models."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ollama_airllm.server.schema_grammar import MAX_WHITESPACE, json_schema_ebnf

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer"},
        "rain": {"type": "number"},
    },
    "required": ["city", "days", "rain"],
}


def _accepts(schema: dict, text: str) -> bool:
    import xgrammar as xg
    from xgrammar.testing import _is_grammar_accept_string

    return _is_grammar_accept_string(xg.Grammar.from_ebnf(json_schema_ebnf(json.dumps(schema))), text)


def _doc(city='"Paris"', days="3", rain="1.5", gap=" ") -> str:
    return f'{{"city":{gap}{city}, "days": {days}, "rain": {rain}}}'


def test_a_valid_document_is_accepted():
    assert _accepts(SCHEMA, _doc())
    assert _accepts(SCHEMA, '{\n  "city": "Paris",\n  "days": -30,\n  "rain": 0.25e-3\n}')


@pytest.mark.parametrize(
    "doc, why",
    [
        (_doc(city='"Pa\x1bris"'), "a raw control character inside a maxLength string"),
        (_doc(city='"Pa\x00"'), "a NUL inside a maxLength string"),
        (_doc(days="1" * 17), "17 integer digits"),
        (_doc(rain="1." + "5" * 17), "17 fraction digits"),
        (_doc(rain="1e" + "5" * 17), "17 exponent digits"),
        (_doc(gap=" " * (MAX_WHITESPACE + 1)), "more whitespace than the bound"),
        (_doc()[:-1] + ', "extra": 1}', "a property the schema does not name"),
    ],
)
def test_the_grammar_refuses_what_could_never_end_or_is_not_json(doc, why):
    assert not _accepts(SCHEMA, doc), why


def test_the_bounds_are_at_their_limits():
    assert _accepts(SCHEMA, _doc(days="1" * 16, rain="1." + "5" * 16, gap=" " * MAX_WHITESPACE))


# Random schemas whose every instance is bounded: strings and arrays carry maxLength / maxItems, as a
# model can otherwise keep a string open forever (the bounds above keep everything else finite).
_ENUM_VALUES = st.lists(st.sampled_from(["a", "b c", 1, 2.5, None]), min_size=1, max_size=4, unique=True)
_scalar = st.one_of(
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 8)),
    st.just({"type": "integer"}),
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(0, 100),
    ),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(lambda vals: {"enum": vals}, _ENUM_VALUES),
)


def _extend(children):
    names = st.sampled_from(["a", "b", "city", "n", "x_y"])
    obj = st.dictionaries(names, children, min_size=1, max_size=3).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda req: {"type": "object", "properties": props, "required": req}
        )
    )
    arr = st.builds(
        lambda item, n: {"type": "array", "items": item, "maxItems": n}, children, st.integers(0, 3)
    )
    return st.one_of(obj, arr)


SCHEMAS = st.recursive(_scalar, _extend, max_leaves=6)


@pytest.fixture(scope="module")
def models(tiny_gguf, start_runner_module):
    """Two random models (different weights), each behind our runner."""
    return [start_runner_module(tiny_gguf("llama", "F32", seed=seed), "-c", "8192") for seed in (0, 7)]


@pytest.fixture(scope="module")
def start_runner_module(srvtools, module_servers):
    def start(model, *flags):
        srv = srvtools.launch([*srvtools.runner_cmd(), "--model", str(model), *flags, "-t", "1"])
        module_servers.append(srv)
        return srv

    return start


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    schema=SCHEMAS,
    which=st.integers(0, 1),
    seed=st.integers(0, 2**31 - 1),
    temp=st.sampled_from([0.0, 1.0, 2.0]),
)
def test_random_schemas_on_random_models_always_give_valid_json(models, schema, which, seed, temp):
    body = {"prompt": "data:", "json_schema": schema, "n_predict": 4000, "seed": seed, "temperature": temp}
    r = httpx.post(models[which].url + "/completion", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["stop_type"] == "eos", (schema, out["content"][-200:])  # the grammar completed
    jsonschema.validate(json.loads(out["content"]), schema)
