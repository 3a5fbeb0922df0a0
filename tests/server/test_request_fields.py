"""Issue 14 (server side): no pretend values. Fields are checked, applied, or logged as ignored; the
reported values are the model's and the engine's own."""

from __future__ import annotations

import dataclasses
import logging

import httpx
import pytest
from gguf import GGUFReader
from ollama_airllm.engine import SamplingParams
from ollama_airllm.engine.textstream import TextStream, held_back
from ollama_airllm.server import params
from ollama_airllm.server.args import RunnerConfig, parse_args
from ollama_airllm.server.chat import CHATML, parse_chat_request
from ollama_airllm.server.errors import ApiError
from ollama_airllm.server.params import parse_completion


def parse(body: dict):
    return parse_completion(body, SamplingParams(), 1)


@pytest.mark.parametrize(
    "bias",
    [
        [[15, 2.5], [16, False], ["hello", -1]],
        {"15": 1.0, "hello": False},
        [],
        {},
        None,
    ],
)
def test_logit_bias_in_llama_servers_shapes_is_accepted(bias):
    parse({"logit_bias": bias})


@pytest.mark.parametrize(
    "bias, message",
    [
        ("x", "Field 'logit_bias': must be an array or an object, but is string"),
        (5, "Field 'logit_bias': must be an array or an object, but is number"),
        ([15], "Field 'logit_bias[0]': must be a [token, bias] pair"),
        ([[15]], "Field 'logit_bias[0]': must be a [token, bias] pair"),
        ([[15, 1], [16, "x"]], "Field 'logit_bias[1]': must be a [token, bias] pair"),
        ([[15, True]], "Field 'logit_bias[0]': must be a [token, bias] pair"),
        ([[None, 1.0]], "Field 'logit_bias[0]': must be a [token, bias] pair"),
        ({"15": "big"}, "Field 'logit_bias.15': the bias must be a number or false, but is string"),
        ({"15": True}, "Field 'logit_bias.15': the bias must be a number or false, but is boolean"),
    ],
)
def test_logit_bias_of_a_wrong_shape_is_a_clear_400(bias, message):
    with pytest.raises(ApiError) as e:
        parse({"logit_bias": bias})
    assert e.value.code == 400 and e.value.message.startswith(message), e.value.message


@pytest.mark.parametrize("stop", [5, {"a": 1}, True])
def test_stop_of_a_wrong_type_is_a_400_in_both_endpoints(stop):
    """One stop parser for /completion and chat: before, /completion ignored a non-list `stop`."""
    expected = "Field 'stop': must be a string or an array of strings"
    with pytest.raises(ApiError, match=expected):
        parse({"stop": stop})
    with pytest.raises(ApiError, match=expected):
        parse_chat_request({"messages": [], "stop": stop}, CHATML, True, "", "")


def test_stop_words_parse_alike_in_both_endpoints():
    for stop, words in (("x", ["x"]), (["a", "", "b"], ["a", "b"]), ([""], [])):
        assert parse({"stop": stop}).sampling.stop == words
        assert parse_chat_request({"messages": [], "stop": stop}, CHATML, True, "", "").stop == words
    with pytest.raises(ApiError, match="Field 'stop': type must be string, but is number"):
        parse({"stop": ["a", 1]})


def test_ignored_request_fields_are_logged_once(caplog, monkeypatch):
    """n_keep, timings_per_token, post_sampling_probs and logit_bias change nothing: the log says so."""
    monkeypatch.setattr(params, "_logged", set())  # as in a freshly started runner
    body = {"n_keep": 4, "timings_per_token": True, "post_sampling_probs": True, "logit_bias": [[1, 2]]}
    with caplog.at_level(logging.INFO, logger="ollama_airllm.server"):
        parse(body)
        parse(body)
    lines = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert sorted(line.split(" (")[0] for line in lines) == sorted(f"request: ignoring {n}" for n in body)


def test_runner_logs_an_ignored_field(runner):
    body = {"prompt": "hi", "n_predict": 1, "n_keep": 3}
    assert httpx.post(runner.url + "/completion", json=body, timeout=120).status_code == 200
    assert "request: ignoring n_keep (no context shift" in runner.log()


def test_unset_fields_are_not_logged(caplog, monkeypatch):
    monkeypatch.setattr(params, "_logged", set())
    with caplog.at_level(logging.INFO, logger="ollama_airllm.server"):
        parse({"n_keep": 0, "timings_per_token": False, "post_sampling_probs": False, "logit_bias": []})
    assert not [r for r in caplog.records if "ignoring" in r.getMessage()]


@pytest.mark.parametrize("pooling, logged", [("cls", True), ("last", True), ("mean", False)])
def test_pooling_other_than_mean_is_logged_as_ignored(pooling, logged):
    cfg = parse_args(["-m", "x.gguf", "--embedding", "--pooling", pooling])
    assert (f"--pooling {pooling} (mean pooling only)" in cfg.ignored) is logged


def test_runner_config_has_no_unused_fields():
    """`device` was never set from the command line and `pooling` never read: both are gone."""
    names = {f.name for f in dataclasses.fields(RunnerConfig)}
    assert not names & {"device", "pooling"}


def test_held_back_is_one_check_for_stop_strings_and_markers():
    assert held_back("text <tool_", ("<tool_call>",)) == 6
    assert held_back("text <tool_call>", ("<tool_call>",)) == 0  # a whole marker is not a prefix
    assert held_back("abc", ("bcd", "cx")) == 2
    s = TextStream(["STOP"])
    assert s.push(b"go ST") == "go " and s.push(b"OP") == "" and s.stop_word == "STOP"


def test_models_report_the_models_parameters_and_vocabulary(runner, chat_model):
    meta = httpx.get(runner.url + "/v1/models", timeout=30).json()["data"][0]["meta"]
    n_params = sum(int(t.n_elements) for t in GGUFReader(chat_model).tensors)
    assert meta["n_params"] == n_params > 0
    assert meta["vocab_type"] == 2  # the tiny tokenizer is byte-level BPE (gpt2)


def test_tokens_cached_counts_what_the_cache_holds(runner):
    """The last token of a run stopped by n_predict is never fed back, so the cache holds one less."""
    body = {"prompt": "hello world", "n_predict": 5, "temperature": 0, "ignore_eos": True}
    r = httpx.post(runner.url + "/completion", json=body, timeout=120).json()
    assert r["stop_type"] == "limit"
    assert r["tokens_cached"] == r["tokens_evaluated"] + r["tokens_predicted"] - 1


def test_ignore_eos_shows_as_llama_servers_logit_bias(runner):
    body = {"prompt": "hello", "n_predict": 2, "ignore_eos": True}
    r = httpx.post(runner.url + "/completion", json=body, timeout=120).json()
    bias = r["generation_settings"]["logit_bias"]
    assert bias and all(b["bias"] is None for b in bias)  # -inf, which JSON writes as null
    body["ignore_eos"] = False
    r = httpx.post(runner.url + "/completion", json=body, timeout=120).json()
    assert r["generation_settings"]["logit_bias"] == []


def test_models_report_an_spm_vocabulary(start_runner, tiny_gguf):
    srv = start_runner(tiny_gguf("llama", "F32", tokenizer="spm"), "-c", "256", "-t", "1")
    meta = httpx.get(srv.url + "/v1/models", timeout=30).json()["data"][0]["meta"]
    assert meta["vocab_type"] == 1  # llama.cpp's LLAMA_VOCAB_TYPE_SPM
