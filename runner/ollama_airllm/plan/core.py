"""The plan: every way to run a model on a machine, estimated with the cost model Ollama's decision uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .. import fit
from ..calibrate import record
from ..profile import Profile
from .model import ModelInfo

PROMPT_16K = 16384
"""The prompt every path's time to first token is shown for."""


@dataclass(frozen=True)
class Machine:
    """The machine the plan is for: the profile's GPUs (all free), its RAM, and the calibrated rates."""

    profile: str
    gpus: tuple[fit.GPU, ...]
    gpu_names: tuple[str, ...]
    ram_free_bytes: int
    rates: fit.Rates
    calibration: str
    """Where the rates came from, or why the documented defaults are used."""


def machine(profile: Profile, calibration_path: Path, weight_type: str, ram_bytes: int,
            threads: int) -> Machine:
    """The profile's situation: its visible GPUs with all their VRAM free, `ram_bytes` of free RAM, and
    llama-server computing with `threads` CPU threads."""
    gpus = profile.visible_gpus
    calibration = record.load(calibration_path)
    if calibration is None:
        rates = fit.rates_from_calibration({}, weight_type, threads)
        note = f"no calibration at {calibration_path}: documented defaults"
    else:
        values = {name: r.value for name, r in calibration.rates.items()}
        rates = fit.rates_from_calibration(values, weight_type, threads)
        note = f"calibration {calibration_path} ({calibration.measured_at:%Y-%m-%d})"
    note += f"; llama-server on {threads} CPU thread{'s' * (threads != 1)}"
    return Machine(
        profile.name,
        tuple(fit.GPU(g.vram_total_bytes) for g in gpus),
        tuple(g.name for g in gpus),
        ram_bytes,
        rates,
        note,
    )


def profile_env(profile: Profile) -> dict[str, str]:
    """The environment the profile renders for Ollama (ollama.env) that the decision reads."""
    a = profile.airllm
    return {
        fit.ENV_ENABLE: "1" if a.enabled else "0",
        fit.ENV_FORCE: "1" if a.force else "0",
        fit.ENV_TAKEOVER: a.takeover,
        fit.ENV_PROMPT_TOKENS: str(a.workload_prompt_tokens),
        fit.ENV_OUTPUT_TOKENS: str(a.workload_output_tokens),
    }


def chosen_path(decision: fit.Decision, model_bytes: int, usable: int) -> str:
    """The path the decision leads to."""
    if decision.airllm:
        return "runner"
    if decision.n_cpu_moe > 0:
        return "cpu-moe"
    return "all-gpu" if model_bytes <= usable else "fit"


def paths(info: ModelInfo, m: Machine, usable: int, n_prompt: int) -> list[fit.Estimate]:
    """Every path for the model, estimated for an `n_prompt`-token prompt."""
    f, r, size, ram = info.facts, m.rates, info.model_bytes, m.ram_free_bytes
    found = [fit.estimate_all_gpu(f, r, size, usable, n_prompt)]
    found.append(fit.estimate_fit(f, r, usable, ram, n_prompt))
    moe = fit.estimate_cpu_moe(f, r, size, usable, ram, n_prompt)
    if moe is not None:
        found.append(moe)
    found.append(fit.estimate_runner(f, r, usable, ram, n_prompt))
    return found


def plan(info: ModelInfo, m: Machine, profile: Profile) -> dict:
    """The plan as a JSON-ready dict: the model, the machine, each path, and Ollama's decision."""
    env = profile_env(profile)
    usable = fit.usable_vram(fit.available_vram(m.gpus, 0))
    inp = fit.FitInput(info.model_bytes, m.gpus, -1, m.ram_free_bytes, info.facts, m.rates)
    decision = fit.decide(inp, env)
    workload = profile.airllm.workload_prompt_tokens, profile.airllm.workload_output_tokens
    at_16k = paths(info, m, usable, PROMPT_16K)
    at_workload = {e.path: e for e in paths(info, m, usable, workload[0])}
    return {
        "model": {
            "name": info.name,
            "path": str(info.path),
            "architecture": info.architecture,
            "file_bytes": info.file_bytes,
            "n_ctx": info.n_ctx,
            "model_bytes": info.model_bytes,
            "facts": asdict(info.facts),
        },
        "machine": {
            "profile": m.profile,
            "gpus": [
                {"name": n, "free_bytes": g.free_bytes} for n, g in zip(m.gpu_names, m.gpus, strict=True)
            ],
            "usable_vram_bytes": usable,
            "ram_free_bytes": m.ram_free_bytes,
            "calibration": m.calibration,
            "rates": asdict(m.rates),
        },
        "workload": {"takeover": profile.airllm.takeover, "prompt_tokens": workload[0],
                     "output_tokens": workload[1]},
        "paths": [
            {
                **asdict(e),
                "ttft_16k_s": e.ttft_s,
                "workload_s": fit.workload_seconds(at_workload[e.path], workload[1]),
            }
            for e in at_16k
        ],
        "decision": {
            "path": chosen_path(decision, info.model_bytes, usable),
            "airllm": decision.airllm,
            "n_cpu_moe": decision.n_cpu_moe,
            "reason": decision.reason,
            "warnings": list(decision.warnings),
        },
    }
