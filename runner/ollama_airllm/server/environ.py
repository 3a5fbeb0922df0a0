"""Remove the library paths Ollama sets up for llama-server before torch is loaded.

Ollama starts llama-server with LD_LIBRARY_PATH=<lib/ollama>:<lib/ollama/rocm_v7_2>:... and
GGML_BACKEND_PATH=<libggml-hip.so>. Those directories hold Ollama's own ROCm/HIP libraries, which
can clash with the ROCm runtime that torch ships. The dynamic loader reads LD_LIBRARY_PATH only at
process start, so when such entries are present the runner re-executes itself without them.
ROCR_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES are left alone: torch's ROCm runtime honours them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCRUBBED_MARK = "OLLAMA_AIRLLM_ENV_SCRUBBED"
_GGML_LIB_PREFIXES = ("libggml", "libllama", "libmtmd")


def _holds_ggml(directory: str) -> bool:
    try:
        return any(e.name.startswith(_GGML_LIB_PREFIXES) for e in os.scandir(directory))
    except OSError:
        return False


def clean_environment(env: dict[str, str]) -> dict[str, str] | None:
    """The environment without Ollama's llama.cpp library paths, or None if there is nothing to remove."""
    backend = env.get("GGML_BACKEND_PATH")
    backend_dir = str(Path(backend).parent) if backend else None
    entries = [e for e in env.get("LD_LIBRARY_PATH", "").split(":") if e]
    keep = [e for e in entries if e != backend_dir and not _holds_ggml(e)]
    if backend is None and keep == entries:
        return None
    out = {k: v for k, v in env.items() if k != "GGML_BACKEND_PATH"}
    if keep:
        out["LD_LIBRARY_PATH"] = ":".join(keep)
    else:
        out.pop("LD_LIBRARY_PATH", None)
    return out


def reexec_clean(argv: list[str]) -> None:
    """Re-execute this runner with a clean environment when needed (never returns in that case)."""
    if os.environ.get(SCRUBBED_MARK):
        return
    env = clean_environment(dict(os.environ))
    if env is None:
        return
    env[SCRUBBED_MARK] = "1"
    removed = sorted(
        set(os.environ.get("LD_LIBRARY_PATH", "").split(":"))
        - set(env.get("LD_LIBRARY_PATH", "").split(":"))
        - {""}
    )
    print(
        f"main: removed Ollama's llama.cpp libraries from the environment (GGML_BACKEND_PATH, "
        f"LD_LIBRARY_PATH entries {removed}); restarting",
        flush=True,
    )
    os.execve(sys.executable, [sys.executable, "-m", "ollama_airllm.server.main", *argv], env)
