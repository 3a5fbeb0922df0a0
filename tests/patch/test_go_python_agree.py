"""The Go decision package and its Python mirror agree on many generated inputs, not only the vectors."""

from __future__ import annotations

import json
import os
import random
import subprocess
from dataclasses import asdict
from pathlib import Path

from ollama_airllm import fit

GO_PACKAGE = Path(__file__).resolve().parents[2] / "runner" / "airllmrunner"
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "fit_decision.json"
PLAN_VECTORS = VECTORS.with_name("plan_decision.json")
GiB, MiB = 2**30, 2**20

BOOLS = ["1", "0", "t", "f", "TRUE", "false", "True", "yes", "no", "on", "off", "2", "-1", "tRUE", ""]
NUMBERS = [
    "0",
    "1",
    str(2 * GiB),
    "18446744073709551615",
    "18446744073709551616",
    "-5",
    "+5",
    "1e9",
    "0x10",
    "1_000",
    "١٢",
    "1GiB",
    " 7 ",
    "",
]
PATHS = ["/usr/lib/ollama/airllm-runner", "/opt//x/../runner/", "//double", "/", "runner", "./r", "~/r", ""]
TAKEOVERS = ["auto", "over-vram", "never", "Auto", "over_vram", "", "never "]
TOKENS = ["1", "512", "4096", "16777216", "16777217", "0", "-1", "1e3", "x", ""]
WRAPS = ["{}", " {} ", '"{}"', "'{}'", "\t{}\n", "\u3000{}\u00a0", "\"' {} '\"", "\u200b{}"]


def _env(rng: random.Random) -> dict[str, str]:
    pools = {
        fit.ENV_FORCE: BOOLS,
        fit.ENV_ENABLE: BOOLS,
        fit.ENV_GPU_OVERHEAD: NUMBERS,
        fit.ENV_RUNNER: PATHS,
        fit.ENV_TAKEOVER: TAKEOVERS,
        fit.ENV_PROMPT_TOKENS: TOKENS,
        fit.ENV_OUTPUT_TOKENS: TOKENS,
    }
    return {
        key: rng.choice(WRAPS).format(rng.choice(pool)) for key, pool in pools.items() if rng.random() < 0.5
    }


def _size(rng: random.Random) -> int:
    return rng.choice([0, 1, 457 * MiB, rng.randrange(64 * GiB), rng.randrange(2**64), 2**64 - 1])


def _facts(rng: random.Random) -> dict:
    """Model facts: none, or a dense or MoE model of random size."""
    if rng.random() < 0.2:
        return {}
    n_layer = rng.choice([1, 2, 32, 48, 80, 126])
    layer = rng.randrange(1, 400 * GiB)
    n_expert = rng.choice([0, 0, 8, 128])
    return {
        "weight_bytes": layer + rng.randrange(4 * GiB),
        "layer_bytes": layer,
        "expert_bytes": layer * rng.randrange(50, 98) // 100 if n_expert else 0,
        "n_layer": n_layer,
        "n_expert": n_expert,
        "n_expert_used": rng.choice([1, 2, 8]) if n_expert else 0,
        "params": rng.randrange(1, 2**40),
        "expert_params": rng.randrange(2**39) if n_expert else 0,
        "kv_bytes": rng.choice([0, rng.randrange(64 * GiB)]),
        "weight_type": rng.choice(["q4_k", "q8_0", "f16"]),
    }


def _rates(rng: random.Random) -> dict:
    return {k: rng.choice([v, round(rng.uniform(0.1, 2 * v), 3)]) for k, v in asdict(fit.Rates()).items()}


def _fit_input(inp: dict) -> fit.FitInput:
    gpus = tuple(fit.GPU(**g) for g in inp["gpus"])
    facts = fit.ModelFacts(**inp.get("facts", {}))
    rates = fit.Rates(**inp["rates"]) if "rates" in inp else fit.Rates()
    return fit.FitInput(inp["model_bytes"], gpus, inp["num_gpu"], inp.get("ram_free_bytes", 0), facts, rates)


def _cases(n: int, seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        gpus = [
            {"free_bytes": _size(rng), "minimum_bytes": rng.choice([0, 457 * MiB, 512 * MiB, _size(rng)])}
            for _ in range(rng.choice([0, 1, 1, 2, 3]))
        ]
        case = {
            "input": {
                "model_bytes": _size(rng),
                "gpus": gpus,
                "num_gpu": rng.choice([-1, -1, -1, 0, 7]),
                "ram_free_bytes": rng.choice([0, rng.randrange(512 * GiB), 2**64 - 1]),
                "facts": _facts(rng),
                "rates": _rates(rng),
            },
            "env": _env(rng),
        }
        if rng.random() < 0.2:
            case["runner_error"] = "stat x: no such file or directory"
        cases.append(case)
    return cases


def go_decisions(go: str, tmp_path: Path, cases: list[dict]) -> list[dict]:
    """The Go package's decisions on `cases`, through its TestDecideFile hook."""
    (tmp_path / "in.json").write_text(json.dumps(cases))
    env = {
        **os.environ,
        "AIRLLM_DECIDE_IN": str(tmp_path / "in.json"),
        "AIRLLM_DECIDE_OUT": str(tmp_path / "out.json"),
    }
    result = subprocess.run(
        [go, "test", "-count=1", "-run", "^TestDecideFile$", "."],
        cwd=GO_PACKAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    decisions = json.loads((tmp_path / "out.json").read_text())
    assert len(decisions) == len(cases)
    return [{**d, "warnings": d["warnings"] or []} for d in decisions]


def python_decision(case: dict) -> dict:
    """The Python mirror's decision on one case, in the vectors' `want` form."""
    py = fit.decide(_fit_input(case["input"]), case["env"]).with_runner_check(case.get("runner_error"))
    return {
        "airllm": py.airllm,
        "forced": py.forced,
        "runner": py.runner,
        "reason": py.reason,
        "warnings": list(py.warnings),
        "n_cpu_moe": py.n_cpu_moe,
    }


def test_go_and_python_agree(tmp_path, tool):
    cases = _cases(600)
    for case, go in zip(cases, go_decisions(tool("go"), tmp_path, cases), strict=True):
        assert python_decision(case) == go, case


def test_go_and_python_both_give_each_vectors_answer(tmp_path, tool):
    """On every shared vector, Go and Python each give the answer written in the file."""
    vectors = json.loads(VECTORS.read_text())["cases"] + json.loads(PLAN_VECTORS.read_text())["decisions"]
    cases = [{k: v for k, v in c.items() if k != "want"} for c in vectors]
    for vector, go in zip(vectors, go_decisions(tool("go"), tmp_path, cases), strict=True):
        assert go == vector["want"], vector["name"]
        assert python_decision(vector) == vector["want"], vector["name"]
