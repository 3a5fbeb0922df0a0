"""The Python fit decision (ollama_airllm.fit) against the vectors shared with the Go package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ollama_airllm import fit

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "fit_decision.json"
CASES = json.loads(VECTORS.read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(case):
    inp = case["input"]
    gpus = tuple(fit.GPU(**g) for g in inp["gpus"])
    decision = fit.decide(fit.FitInput(inp["model_bytes"], gpus, inp["num_gpu"]), case["env"])
    decision = decision.with_runner_check(case.get("runner_error"))
    want = case["want"]
    got = (decision.airllm, decision.forced, decision.runner)
    assert got == (want["airllm"], want["forced"], want["runner"])
    assert decision.reason == want["reason"]
    assert list(decision.warnings) == want["warnings"]


def test_case_names_are_unique():
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))


def test_environment_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv(fit.ENV_FORCE, "1")
    monkeypatch.setenv(fit.ENV_RUNNER, "/opt/runner")
    decision = fit.decide(fit.FitInput(model_bytes=1))
    assert decision.airllm and decision.forced and decision.runner == "/opt/runner"


def test_default_reserve_is_ollamas_minimum():
    assert fit.GPU(free_bytes=1).minimum_bytes == 457 * 2**20
