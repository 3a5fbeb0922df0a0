"""`ollama-airllm doctor` on this machine (no package installed) and its EnvironmentFile reader.

The full suite against a real install runs in the container stage (test_container_stage.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from ollama_airllm.cli import main
from ollama_airllm.doctor.envfile import parse_env_file, parse_environ

DOCTOR = [sys.executable, "-c", "from ollama_airllm.cli import main; main()", "doctor"]
ENV_TEXT = """\
# comment
; also a comment
OLLAMA_HOST=127.0.0.1:11434
QUOTED="a b"
SINGLE='x # y'
export HSA_OVERRIDE_GFX_VERSION=10.3.0
OLLAMA_KEEP_ALIVE=5m # five minutes
1BAD=1
NOEQUALS
OPEN="never closed
"""


def test_env_file_problems_name_line_and_reason():
    env = parse_env_file(ENV_TEXT)
    assert env.values == {"OLLAMA_HOST": "127.0.0.1:11434", "QUOTED": "a b", "SINGLE": "x # y"}
    problems = "\n".join(env.problems)
    assert "line 6 `export HSA_OVERRIDE_GFX_VERSION=10.3.0`: starts with `export`" in problems
    assert "line 7" in problems and "inline comment" in problems
    assert "line 8" in problems and "'1BAD' is not a valid variable name" in problems
    assert "line 9" in problems and "not KEY=value" in problems
    assert "line 10" in problems and "never closed" in problems
    assert len(env.problems) == 5


def test_parse_environ():
    assert parse_environ(b"A=1\0B=x=y\0\0") == {"A": "1", "B": "x=y"}


def test_doctor_usage_errors_exit_2(tmp_path):
    runner = CliRunner()
    bad_host = runner.invoke(main, ["doctor", "--hosts", "ftp://x"])
    assert bad_host.exit_code == 2
    assert "--hosts: bad host 'ftp://x'" in bad_host.output
    missing = runner.invoke(main, ["doctor", "--profile", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert "nope.yaml: no such file" in missing.output
    assert "Traceback" not in missing.output + bad_host.output


def test_doctor_on_a_machine_without_the_package():
    """Every check reports: failures say what and how to fix, the rest say why they do not apply."""
    if Path("/etc/default/ollama").exists():
        pytest.skip("this machine has the package installed; the container stage covers that case")
    result = subprocess.run(
        [*DOCTOR, "--hosts", "local://"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "Traceback" not in out + result.stderr
    lines = out.splitlines()
    statuses = [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("    ")]
    assert statuses and set(statuses) <= {"ok", "FAIL", "n/a"}
    for i, line in enumerate(lines):
        if line.startswith("  FAIL"):
            block = "\n".join(lines[i + 1 : i + 8])
            assert "fix: " in block, line
        if line.startswith("  n/a"):
            assert lines[i + 1].strip().startswith("not applicable: "), line
    assert "the check itself failed" not in out
    summary = lines[-1]
    assert summary.endswith("not applicable") and f"{len(statuses)}" == str(
        sum(int(n) for n in summary.replace(",", "").split() if n.isdigit())
    )


@pytest.mark.parametrize("check", ["test_env_file_syntax"])
def test_doctor_selects_checks(check):
    result = subprocess.run(
        [*DOCTOR, "-k", check],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.count("\n  ") >= 1
    assert result.stdout.splitlines()[-1].startswith(("0 ok, 1 failed", "1 ok, 0 failed"))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200))
def test_env_file_reader_never_crashes(text):
    env = parse_env_file(text)
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) for key in env.values)
    assert all(p.startswith("line ") for p in env.problems)


def test_doctor_unreachable_host_is_one_clear_error():
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client")
    result = subprocess.run(
        [*DOCTOR, "--hosts", "ssh://nobody@127.0.0.1:1"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "cannot run commands on ssh://nobody@127.0.0.1:1: ssh: connect to host" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
