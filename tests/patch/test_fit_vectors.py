"""The Python fit decision (ollama_airllm.fit) against the vectors shared with the Go package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ollama_airllm import fit

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "fit_decision.json"
CASES = json.loads(VECTORS.read_text())["cases"]


COMPARED = [c for c in CASES if "usable_bytes" in c]


def _decide(case, model_bytes=None):
    inp = case["input"]
    gpus = tuple(fit.GPU(**g) for g in inp["gpus"])
    size = inp["model_bytes"] if model_bytes is None else model_bytes
    return fit.decide(fit.FitInput(size, gpus, inp["num_gpu"]), case["env"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(case):
    decision = _decide(case).with_runner_check(case.get("runner_error"))
    want = case["want"]
    got = (decision.airllm, decision.forced, decision.runner)
    assert got == (want["airllm"], want["forced"], want["runner"])
    assert decision.reason == want["reason"]
    assert list(decision.warnings) == want["warnings"]
    assert decision.n_cpu_moe == want["n_cpu_moe"]


@pytest.mark.parametrize("case", COMPARED, ids=[c["name"] for c in COMPARED])
def test_the_limit_is_the_hand_computed_usable_vram(case):
    """A model of exactly `usable_bytes` (worked out by hand in the vectors) stays on llama-server; one byte
    more goes to the runner."""
    usable = case["usable_bytes"]
    assert not _decide(case, usable).airllm, _decide(case, usable).reason
    assert _decide(case, usable + 1).airllm, _decide(case, usable + 1).reason


@pytest.mark.parametrize("case", COMPARED, ids=[c["name"] for c in COMPARED])
def test_each_wanted_choice_follows_from_the_hand_computed_limit(case):
    """The file's own answers agree with its hand-worked limit (a runner error only cancels the runner)."""
    over = case["input"]["model_bytes"] > case["usable_bytes"]
    assert case["want"]["airllm"] == (over and "runner_error" not in case)
    assert case["want"]["reason"].startswith("airllm: " if case["want"]["airllm"] else "llama-server: ")


def test_case_names_are_unique():
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))


def test_environment_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv(fit.ENV_FORCE, "1")
    monkeypatch.setenv(fit.ENV_RUNNER, "/opt/runner")
    decision = fit.decide(fit.FitInput(model_bytes=1))
    assert decision.airllm and decision.forced and decision.runner == "/opt/runner"


def test_sizes_under_a_gib_stay_readable():
    """A reason shows sizes in MiB: a 300 MiB model is never "0.3 GiB" or "0.0 GiB"."""
    gpus = (fit.GPU(free_bytes=fit.MINIMUM_BYTES + 200 * 2**20),)
    reason = fit.decide(fit.FitInput(300 * 2**20, gpus), {fit.ENV_TAKEOVER: "over-vram"}).reason
    want = "airllm: model 300 MiB > usable VRAM 160 MiB (80% of 200 MiB free after reserves on 1 GPU)"
    assert reason == want


def test_default_reserve_is_ollamas_minimum():
    """Ollama's MinimumMemory() on ROCm is 457 MiB: 479199232 bytes, the reserve the vectors use."""
    assert fit.GPU(free_bytes=1).minimum_bytes == 479_199_232
