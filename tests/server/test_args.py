"""The runner's command line: every flag Ollama v0.34.4 passes to llama-server is accepted."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ollama_airllm.server.args import parse_args
from ollama_airllm.server.environ import clean_environment
from ollama_airllm.server.main import engine_config

# startLlamaServer (llm/llama_server.go:348-442): the fixed part and every conditional flag
OLLAMA_ARGV = [
    "--model",
    "/var/lib/ollama/blobs/sha256-abc",
    "--port",
    "40123",
    "--host",
    "127.0.0.1",
    "--no-webui",
    "--offline",
    "-c",
    "8192",
    "-np",
    "2",
    "--log-verbosity",
    "4",
    "--no-log-prefix",
    "--no-log-timestamps",
    "--no-jinja",
    "--chat-template",
    "chatml",
    "--mmproj",
    "/p.gguf",
    "--no-mmproj-offload",
    "--spec-type",
    "draft-mtp",
    "--spec-draft-n-max",
    "4",
    "--spec-draft-backend-sampling",
    "--spec-draft-model",
    "/d.gguf",
    "--image-min-tokens",
    "1024",
    "--lora",
    "/a.gguf",
    "--lora",
    "/b.gguf",
    "--load-mode",
    "dio",
    "--cache-type-k",
    "q8_0",
    "--cache-type-v",
    "q8_0",
    "--flash-attn",
    "auto",
    "--embedding",
    "-b",
    "1024",
    "-ub",
    "512",
    "-ngl",
    "12",
    "-t",
    "8",
    "--split-mode",
    "none",
    "--main-gpu",
    "0",
    "--context-shift",
    "--keep",
    "4",
]


def test_every_ollama_flag_is_accepted():
    cfg = parse_args(OLLAMA_ARGV)
    assert (cfg.port, cfg.ctx_size, cfg.parallel, cfg.batch_size) == (40123, 8192, 2, 1024)
    assert cfg.jinja is False and cfg.chat_template == "chatml" and cfg.embedding
    assert (cfg.n_gpu_layers, cfg.main_gpu, cfg.threads, cfg.log_prefix) == (12, 0, 8, False)
    ignored = "\n".join(cfg.ignored)
    for flag in (
        "--lora /a.gguf",
        "--lora /b.gguf",
        "--mmproj",
        "--cache-type-k q8_0",
        "--spec-type",
        "--context-shift",
        "--keep 4",
        "--load-mode dio",
        "--flash-attn auto",
        "--no-webui",
        "--offline",
        "--ubatch-size 512",
    ):
        assert flag in ignored


def test_context_is_split_over_slots():
    ec = engine_config(parse_args(["-m", "x", "-c", "8192", "-np", "4", "-ngl", "0"]))
    assert (ec.n_ctx, ec.n_slots, ec.device) == (2048, 4, "cpu")
    ec = engine_config(parse_args(["-m", "x", "-ngl", "auto", "--main-gpu", "1"]))
    assert (ec.n_ctx, ec.resident_layers, ec.device) == (None, None, "cuda:1")
    assert engine_config(parse_args(["-m", "x", "-ngl", "7"])).resident_layers == 7


def test_package_environment_reaches_the_engine():
    env = {
        "OLLAMA_AIRLLM_COMPRESSION": "4bit",
        "OLLAMA_AIRLLM_CACHE_DIR": "/var/lib/ollama/airllm",
        "OLLAMA_AIRLLM_VRAM_RESERVE_MIB": "1024",
    }
    ec = engine_config(parse_args(["-m", "x"]), env)
    assert (ec.compression, ec.hf_split_dir, ec.reserve) == ("4bit", "/var/lib/ollama/airllm", 1 << 30)
    assert engine_config(parse_args(["-m", "x"]), {"OLLAMA_AIRLLM_COMPRESSION": "none"}).compression is None
    from ollama_airllm.errors import UsageError

    with pytest.raises(UsageError, match="OLLAMA_AIRLLM_VRAM_RESERVE_MIB='lots'"):
        engine_config(parse_args(["-m", "x"]), {"OLLAMA_AIRLLM_VRAM_RESERVE_MIB": "lots"})
    graphs = {v: engine_config(parse_args(["-m", "x"]), {"OLLAMA_AIRLLM_GRAPHS": v}).graphs for v in "01"}
    assert graphs == {"0": False, "1": True} and engine_config(parse_args(["-m", "x"]), {}).graphs is None
    with pytest.raises(UsageError, match="OLLAMA_AIRLLM_GRAPHS='yes' is not valid: use 0"):
        engine_config(parse_args(["-m", "x"]), {"OLLAMA_AIRLLM_GRAPHS": "yes"})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-m", "x", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["-m", "x", "-np", "0"], "--parallel"),
        (["-m", "x", "-c", "abc"], "invalid int value"),
        (["--port", "1"], "-m/--model"),
        (["-m", "x", "-fa", "maybe"], "allowed: on, off, auto"),
    ],
)
def test_bad_command_lines_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_executable_version_and_unknown_flag():
    exe = [sys.executable, "-m", "ollama_airllm.server.main"]
    out = subprocess.run([*exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("version: ")
    out = subprocess.run([*exe, "-m", "x", "--bogus"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unrecognized arguments: --bogus" in out.stderr
    assert "Traceback" not in out.stderr


def test_clean_environment_drops_ollama_libraries(tmp_path):
    ollama_lib = tmp_path / "lib" / "ollama"
    rocm = ollama_lib / "rocm_v7_2"
    rocm.mkdir(parents=True)
    (ollama_lib / "libggml-base.so").write_bytes(b"")
    (rocm / "libggml-hip.so").write_bytes(b"")
    keep = tmp_path / "opt-rocm-lib"
    keep.mkdir()
    env = {
        "LD_LIBRARY_PATH": f"{ollama_lib}:{rocm}:{keep}",
        "GGML_BACKEND_PATH": str(rocm / "libggml-hip.so"),
        "ROCR_VISIBLE_DEVICES": "1",
        "HIP_VISIBLE_DEVICES": "0",
    }
    out = clean_environment(env)
    assert out == {"LD_LIBRARY_PATH": str(keep), "ROCR_VISIBLE_DEVICES": "1", "HIP_VISIBLE_DEVICES": "0"}
    assert clean_environment({"LD_LIBRARY_PATH": str(keep), "PATH": "/bin"}) is None
    only = clean_environment({"LD_LIBRARY_PATH": f"{ollama_lib}", "PATH": "/bin"})
    assert only == {"PATH": "/bin"}
