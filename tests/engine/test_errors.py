"""Bad model files give one clear line naming the file and the problem, without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ollama_airllm.engine import Engine, EngineConfig, ModelFileError


def _cases(tmp_path, good: bytes) -> dict[str, tuple[bytes, str]]:
    return {
        "truncated-data": (good[: len(good) * 2 // 3], "file is truncated: the tensor data ends at byte"),
        "truncated-header": (good[:600], "file is truncated inside the header"),
        "bad-version": (good[:4] + b"\x63" + good[5:], "GGUF version 99 is not supported"),
        "not-gguf": (b"PK\x03\x04 this is a zip", "not a GGUF file"),
        "empty": (b"", "not a GGUF file"),
    }


def test_bad_files_raise_model_file_error(tmp_path, tiny_gguf):
    good = tiny_gguf("llama", "Q8_0").read_bytes()
    for name, (data, problem) in _cases(tmp_path, good).items():
        p = tmp_path / f"sha256-{name}"
        p.write_bytes(data)
        with pytest.raises(ModelFileError) as e:
            Engine.load(p, EngineConfig(device="cpu"))
        assert str(p) in str(e.value) and problem in str(e.value), str(e.value)
    with pytest.raises(ModelFileError, match="cannot read the file"):
        Engine.load(tmp_path / "missing", EngineConfig(device="cpu"))


def test_cli_prints_one_line_and_exits_1(tmp_path, tiny_gguf):
    p = tmp_path / "sha256-truncated"
    p.write_bytes(tiny_gguf("llama", "Q8_0").read_bytes()[:50000])
    r = subprocess.run(
        [sys.executable, "-m", "ollama_airllm.engine", "info", "--device", "cpu", str(p)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith(f"Error: {p}: ") and "truncated" in r.stderr
