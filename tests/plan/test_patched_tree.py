"""Ollama's own hook, in a patched v0.34.4 tree, decides like the Python planner and starts llama-server
with --n-cpu-moe N for a MoE model that does not fit VRAM (and with nothing extra otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ollama_airllm import fit
from ollama_airllm.plan.model import read_model

from tests.patch.conftest import required_tool

ROOT = Path(__file__).resolve().parents[2]
OLLAMA = "github.com/ollama/ollama@v0.34.4"
GiB = 2**30
NUM_CTX = 32768


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Ollama v0.34.4 from the Go module cache, with airllmrunner copied in and airllm.patch applied
    (which creates llm/airllm_plan_test.go, the Go side of these tests)."""
    go, patch = required_tool("go"), required_tool("patch")
    found = subprocess.run(
        [go, "mod", "download", "-json", OLLAMA], capture_output=True, text=True, timeout=600
    )
    if found.returncode != 0:
        pytest.fail(f"go mod download {OLLAMA}: {found.stderr}")
    src = Path(json.loads(found.stdout)["Dir"])
    tree = tmp_path_factory.mktemp("ollama") / "ollama"
    shutil.copytree(src, tree)
    subprocess.run(["chmod", "-R", "u+w", str(tree)], check=True)
    (tree / "airllmrunner").mkdir()
    for f in (ROOT / "runner" / "airllmrunner").glob("*.go"):
        if not f.name.endswith("_test.go"):
            shutil.copy(f, tree / "airllmrunner" / f.name)
    subprocess.run(
        [patch, "-d", str(tree), "-Np1", "-i", str(ROOT / "airllm.patch")], check=True, capture_output=True
    )
    return tree


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "AIRLLM_"))}


def _run_patch_tests(tree: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`go test` of the patch's TestAirLLM* in llm/, which must pass."""
    result = subprocess.run(
        [required_tool("go"), "test", "-count=1", "-run", "^TestAirLLM", "-v", "./llm/"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def _go_test(
    tree: Path, model: Path, free: int, ram: int, env: dict[str, str]
) -> subprocess.CompletedProcess:
    info = read_model(model, model.name, NUM_CTX, 1)
    decision = fit.decide(fit.FitInput(info.model_bytes, (fit.GPU(free),), -1, ram, info.facts), env)
    test_env = {
        **_clean_env(),
        **env,
        "OLLAMA_AIRLLM_CALIBRATION": str(tree / "no-calibration.json"),
        "OLLAMA_AIRLLM_RUNNER": "/bin/sh",
        "AIRLLM_TEST_MODEL": str(model),
        "AIRLLM_TEST_NUM_CTX": str(NUM_CTX),
        "AIRLLM_TEST_FREE_BYTES": str(free),
        "AIRLLM_TEST_RAM_BYTES": str(ram),
        "AIRLLM_TEST_WANT_N": str(decision.n_cpu_moe),
        "AIRLLM_TEST_WANT_RUNNER": "/bin/sh" if decision.airllm else "",
    }
    result = _run_patch_tests(tree, test_env)
    assert "--- PASS: TestAirLLMDecisionMatchesThePlanner" in result.stdout, result.stdout[-2000:]
    return decision


@pytest.mark.slow
def test_moe_beyond_vram_starts_llama_server_with_n_cpu_moe(tree, tmp_path, ggufs):
    model = ggufs.write(tmp_path / "moe.gguf", ggufs.QWEN3_30B_A3B)
    for free, env in ((24 * GiB, {}), (12 * GiB, {"OLLAMA_AIRLLM_TAKEOVER": "never"})):
        decision = _go_test(tree, model, free, 64 * GiB, env)
        assert decision.n_cpu_moe > 0 and not decision.airllm, decision


@pytest.mark.slow
def test_models_that_fit_or_go_to_the_runner_get_no_n_cpu_moe(tree, tmp_path, ggufs):
    moe = ggufs.write(tmp_path / "moe.gguf", ggufs.QWEN3_30B_A3B)
    dense = ggufs.write(tmp_path / "dense.gguf", ggufs.LLAMA_70B)
    assert _go_test(tree, moe, 80 * GiB, 64 * GiB, {}).n_cpu_moe == 0  # fits
    assert _go_test(tree, moe, 12 * GiB, 64 * GiB, {"OLLAMA_AIRLLM_TAKEOVER": "over-vram"}).airllm
    assert _go_test(tree, dense, 24 * GiB, 16 * GiB, {}).airllm  # beyond RAM + VRAM
    assert _go_test(tree, moe, 12 * GiB, 64 * GiB, {"OLLAMA_AIRLLM": "0"}).n_cpu_moe == 0


@pytest.mark.slow
def test_the_patch_tests_skip_without_a_model(tree):
    """A plain `go test ./llm/` (a PKGBUILD check()) passes: without AIRLLM_TEST_MODEL both tests skip."""
    result = _run_patch_tests(tree, _clean_env())
    for name in ("TestAirLLMDecisionMatchesThePlanner", "TestAirLLMStartsLlamaServerWithTheArguments"):
        assert f"--- SKIP: {name}" in result.stdout, result.stdout[-2000:]
