"""The fit decision: llama-server or the AirLLM runner, with a one-line reason.

A mirror of the Go package runner/airllmrunner that airllm.patch calls inside Ollama. Both are tested
with the same vectors (tests/vectors/fit_decision.json), so the doctor explains exactly what Ollama did.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ENV_FORCE = "AIRLLM_FORCE"
ENV_ENABLE = "OLLAMA_AIRLLM"
ENV_RUNNER = "OLLAMA_AIRLLM_RUNNER"
ENV_GPU_OVERHEAD = "OLLAMA_GPU_OVERHEAD"

DEFAULT_RUNNER = "/usr/lib/ollama/airllm-runner"
FIT_PERCENT = 80
"""Share of free VRAM (after reserves) a model may fill and stay on llama-server, as Ollama's scheduler."""

MINIMUM_BYTES = 457 * 1024 * 1024
"""Ollama's per-GPU reserve (ml.DeviceInfo.MinimumMemory) on ROCm, CUDA and Vulkan."""

MAX_UINT64 = 2**64 - 1

# Go's strings.TrimSpace removes Unicode white space (unicode.IsSpace), a narrower set than str.strip().
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
    "\u2028\u2029\u202f\u205f\u3000"
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class GPU:
    """One GPU selected for the model."""

    free_bytes: int
    minimum_bytes: int = MINIMUM_BYTES


@dataclass(frozen=True)
class FitInput:
    """What Ollama knows when it starts a runner."""

    model_bytes: int
    """Ollama's estimate for the model and its context (llm.PredictServerVRAM)."""
    gpus: Sequence[GPU] = ()
    num_gpu: int = -1
    """-1 automatic, 0 CPU only, >0 layers asked for."""


@dataclass(frozen=True)
class Decision:
    """Which runner serves the model, and why."""

    airllm: bool
    forced: bool
    runner: str
    reason: str
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def with_runner_check(self, error: str | None) -> Decision:
        """Apply the result of checking the runner can start: a fitted choice falls back to llama-server."""
        if error is None or not self.airllm or self.forced:
            return self
        wanted = self.reason.removeprefix("airllm: ")
        reason = f"llama-server: AirLLM runner unavailable ({error}); wanted it because {wanted}"
        return Decision(False, self.forced, self.runner, reason, self.warnings)


@dataclass
class _Settings:
    force: bool = False
    force_value: str = ""
    off: bool = False
    off_value: str = ""
    runner: str = DEFAULT_RUNNER
    overhead: int = 0
    warnings: list[str] = field(default_factory=list)


def decide(inp: FitInput, env: Mapping[str, str] | None = None) -> Decision:
    """Pick llama-server or the AirLLM runner; ``env`` defaults to ``os.environ``.

    OLLAMA_AIRLLM=0 turns the runner off; AIRLLM_FORCE=1 starts it; without a GPU or with num_gpu set,
    llama-server serves the model; otherwise the runner is used when the estimate exceeds 80 % of the free
    VRAM left after each GPU's reserve and OLLAMA_GPU_OVERHEAD (exactly at the limit stays on llama-server).
    """
    s = _read_settings(os.environ if env is None else env)
    warnings = tuple(s.warnings)
    if s.off:
        reason = f"llama-server: AirLLM runner turned off by {ENV_ENABLE}={s.off_value}"
        return Decision(False, False, s.runner, reason, warnings)
    if s.force:
        return Decision(True, True, s.runner, f"airllm: forced by {ENV_FORCE}={s.force_value}", warnings)
    if not inp.gpus:
        reason = f"llama-server: no GPU selected; the AirLLM runner needs one ({ENV_FORCE}=1 overrides)"
    elif inp.num_gpu == 0:
        reason = "llama-server: num_gpu=0 asks for CPU only"
    elif inp.num_gpu > 0:
        reason = f"llama-server: num_gpu={inp.num_gpu} set explicitly"
    else:
        available = available_vram(inp.gpus, s.overhead)
        usable = available * FIT_PERCENT // 100
        gpus = f"{len(inp.gpus)} GPU{'s' * (len(inp.gpus) != 1)}"
        detail = f"({FIT_PERCENT}% of {gib(available)} free after reserves on {gpus})"
        if inp.model_bytes > usable:
            reason = f"airllm: model {gib(inp.model_bytes)} > usable VRAM {gib(usable)} {detail}"
            return Decision(True, False, s.runner, reason, warnings)
        reason = f"llama-server: model {gib(inp.model_bytes)} <= usable VRAM {gib(usable)} {detail}"
    return Decision(False, False, s.runner, reason, warnings)


def available_vram(gpus: Sequence[GPU], overhead: int) -> int:
    """Free VRAM left after each GPU's reserve (minimum + overhead), never below zero per GPU."""
    total = 0
    for g in gpus:
        reserve = min(g.minimum_bytes + overhead, MAX_UINT64)
        if g.free_bytes > reserve:
            total = min(total + g.free_bytes - reserve, MAX_UINT64)
    return total


def gib(n: int) -> str:
    """Bytes as GiB with one decimal, e.g. ``41.2 GiB``."""
    return f"{n / 2**30:.1f} GiB"


def _env_value(env: Mapping[str, str], key: str) -> str:
    """Read a variable like Ollama's envconfig.Var: trim white space, then quotes."""
    return env.get(key, "").strip(_GO_SPACE).strip("\"'")


def _bad(key: str, value: str, allowed: str, used: str) -> str:
    return f"ignoring {key}={_go_quote(value)}: want {allowed}; using {used}"


def _go_quote(value: str) -> str:
    """Go's %q for the printable strings found in environment values."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append({"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t",
                        "\v": r"\v"}.get(ch, f"\\x{ord(ch):02x}"))
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _read_settings(env: Mapping[str, str]) -> _Settings:
    s = _Settings()
    if value := _env_value(env, ENV_FORCE):
        if value in _GO_TRUE | _GO_FALSE:
            s.force, s.force_value = value in _GO_TRUE, value
        else:
            s.warnings.append(_bad(ENV_FORCE, value, "1 or 0 (true/false)", "not forced"))
    if value := _env_value(env, ENV_ENABLE):
        if value in _GO_TRUE | _GO_FALSE:
            s.off, s.off_value = value in _GO_FALSE, value
        else:
            s.warnings.append(_bad(ENV_ENABLE, value, "1 or 0 (true/false)", "on"))
    if value := _env_value(env, ENV_RUNNER):
        if value.startswith("/"):
            s.runner = posixpath.normpath(value)
            if s.runner.startswith("//"):  # Go's filepath.Clean keeps one leading slash
                s.runner = "/" + s.runner.lstrip("/")
        else:
            s.warnings.append(_bad(ENV_RUNNER, value, "an absolute path", DEFAULT_RUNNER))
    if value := _env_value(env, ENV_GPU_OVERHEAD):
        if _DIGITS.fullmatch(value) and int(value) <= MAX_UINT64:
            s.overhead = int(value)
        else:
            s.warnings.append(_bad(ENV_GPU_OVERHEAD, value, "a number of bytes", "0"))
    return s
