"""airllm.takeover and the workload in the profile, rendered into ollama.env where Ollama's decision reads
them; the calibration defaults the planner falls back on are the ones calibrate documents."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ollama_airllm import fit
from ollama_airllm.calibrate import measure
from ollama_airllm.errors import UserError
from ollama_airllm.pkggen import render as pkgrender
from ollama_airllm.profile import default_profile_path, load_profile, profile_from_yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "packaging" / "profiles").glob("*.yaml"))


def _env(profile) -> dict[str, str]:
    text = pkgrender.render_package(profile)["ollama.env"].text
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_each_reference_profile_renders_the_policy(path):
    profile = load_profile(path)
    env = _env(profile)
    assert profile.airllm.takeover == "auto"
    assert env[fit.ENV_TAKEOVER] == "auto"
    assert env[fit.ENV_PROMPT_TOKENS] == str(fit.DEFAULT_PROMPT_TOKENS)
    assert env[fit.ENV_OUTPUT_TOKENS] == str(fit.DEFAULT_OUTPUT_TOKENS)
    assert env["OLLAMA_AIRLLM_CALIBRATION"] == "/var/lib/ollama/airllm/calibration.json"


def _with(**airllm) -> str:
    data = yaml.safe_load(default_profile_path().read_text())
    data["airllm"].update(airllm)
    return yaml.safe_dump(data)


@pytest.mark.parametrize("policy", fit.TAKEOVER_POLICIES)
def test_each_policy_reaches_the_environment(policy):
    profile = profile_from_yaml(
        _with(takeover=policy, workload_prompt_tokens=16384, workload_output_tokens=64)
    )
    env = _env(profile)
    assert (env[fit.ENV_TAKEOVER], env[fit.ENV_PROMPT_TOKENS], env[fit.ENV_OUTPUT_TOKENS]) == (
        policy,
        "16384",
        "64",
    )
    assert fit.decide(fit.FitInput(1, (fit.GPU(2**40),)), env).warnings == ()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("takeover", "always", "airllm.takeover"),
        ("takeover", True, "airllm.takeover"),
        ("workload_prompt_tokens", 0, "airllm.workload_prompt_tokens"),
        ("workload_output_tokens", 2**24 + 1, "airllm.workload_output_tokens"),
    ],
)
def test_bad_values_are_refused_naming_the_field(field, value, message):
    with pytest.raises(UserError) as err:
        profile_from_yaml(_with(**{field: value}))
    assert message in str(err.value.message) and str(value) in str(err.value.message)


def test_the_token_bounds_are_the_deciders():
    """The profile accepts exactly what the decision accepts (1 .. 2^24), so a rendered value never warns."""
    for tokens in (1, fit.MAX_WORKLOAD_TOKENS):
        env = {fit.ENV_PROMPT_TOKENS: str(tokens), fit.ENV_OUTPUT_TOKENS: str(tokens)}
        assert fit.decide(fit.FitInput(1, (fit.GPU(2**40),)), env).warnings == ()
        profile_from_yaml(_with(workload_prompt_tokens=tokens, workload_output_tokens=tokens))


def test_planner_defaults_are_calibrates_documented_defaults():
    """When calibration.json lacks a rate, the planner (Python and Go: see plan_decision.json's "empty"
    case) uses the number `ollama-airllm calibrate` documents for it."""
    d = measure.DEFAULTS
    assert fit.Rates(
        host_to_device=d["host_to_device"].value,
        host_memory_read=d["host_memory_read"].value,
        models_dir_read=d["models_dir_read"].value,
        gpu_memory_read=d["memory_read"].value,
        gpu_f16_gemm=d["f16_gemm"].value,
        engine_gemv=d["q4_k_gemv"].value,
        engine_gemm=d["q4_k_gemm"].value,
        cpu_weight_read=d["cpu.llama_weight_read"].value,
        cpu_gemm=d["cpu.llama_gemm"].value,
    ) == fit.DEFAULT_RATES
