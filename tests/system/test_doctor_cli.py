"""`ollama-airllm doctor` on this machine, in a private mount namespace made to look like a host without the
package, and its EnvironmentFile reader.

The full suite against a real install runs in the container stage (test_container_stage.py).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from ollama_airllm.cli import main
from ollama_airllm.doctor.envfile import parse_env_file, parse_environ
from ollama_airllm.doctor.probe import OLLAMA_BIN

PROFILE = Path(__file__).resolve().parents[2] / "packaging" / "profiles" / "rx7900xtx.yaml"

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


def _unavailable(reason: str) -> None:
    """Skip with the reason on a developer machine; under CI (CI set) it fails the run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; under CI every doctor test must run")
    pytest.skip(reason)


# What the doctor reads that a test replaces: an empty directory hides what the host has there.
HIDDEN_DIRS = ("/etc/default", "/etc/ollama-airllm", "/var/lib/pacman", "/var/lib/ollama", "/usr/lib/ollama",
               "/run/systemd", "/sys/class")  # fmt: skip
ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")


def run_doctor_in(tmp_path: Path, env_file: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """The doctor on this machine in a private mount namespace that looks like a host without the package:
    HIDDEN_DIRS empty (no systemd, no AMD GPU, no pacman record), no ollama account, and /etc/default/ollama
    holding `env_file` (or absent)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        _unavailable("building the doctor's situations needs root and unshare (a private mount namespace)")
    setup = ["set -e"]
    for path in HIDDEN_DIRS:
        if Path(path).is_dir():
            setup.append(f"mount -t tmpfs -o mode=0755 oar-hidden {path}")
    for path in ACCOUNT_FILES:
        if Path(path).is_file():
            copy = tmp_path / Path(path).name
            lines = Path(path).read_text().splitlines(keepends=True)
            copy.write_text("".join(line for line in lines if not line.startswith("ollama:")))
            setup.append(f"mount --bind {copy} {path}")
    if env_file is not None:
        (tmp_path / "ollama.env").write_text(env_file)
        setup.append(f"cp {tmp_path / 'ollama.env'} /etc/default/ollama")
    doctor = " ".join(shlex.quote(a) for a in [*DOCTOR, "--profile", str(PROFILE), *args])
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join([*setup, f"exec {doctor}"])],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _statuses(report: str) -> list[tuple[str, str]]:
    """(status, title) of each check in a report."""
    return [
        (line.split()[0], line[8:])
        for line in report.splitlines()
        if line.startswith("  ") and not line.startswith("    ")
    ]


def test_doctor_on_a_host_without_the_package(tmp_path):
    """Each check gives the outcome this situation calls for: the install is missing, systemd and the GPU are
    not there, so the checks that need them say so."""
    result = run_doctor_in(tmp_path, None, "--hosts", "local://", "-k", "not calibration")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "Traceback" not in out + result.stderr
    got = dict((title, status) for status, title in _statuses(out))
    failed = {
        "the package is installed and owns its files": "pacman does not know the package ollama-airllm-rocm",
        "the ollama group exists": "there is no ollama group",
        "the ollama user is a locked system account": "there is no ollama user",
        "the models directory exists": "/var/lib/ollama does not exist",
        "/etc/default/ollama has only KEY=value lines": "/etc/default/ollama is missing",
        "/etc/default/ollama points Ollama at": "/etc/default/ollama is missing",
        "the runner executable answers --version": "/usr/lib/ollama/airllm-runner is missing",
    }
    not_applicable = {
        "the ollama service gets the render and video groups": "systemd is not running",
        "ollama.service and the runner unit read /etc/default/ollama": "systemd is not running",
        "the ollama user can write the models directory": "no ollama user",
        "an AMD GPU is present": "no AMD GPU on this host",
        "Ollama listens on the profile's address": f"no Ollama binary at {OLLAMA_BIN}",
        "ollama.service and the runner unit, each in its own sandbox, can open": "no AMD GPU on this host",
        "torch imports in the runner's Python": "/usr/lib/ollama/airllm-runner is missing",
    }
    for expected, status in ((failed, "FAIL"), (not_applicable, "n/a")):
        for start, why in expected.items():
            title = next((t for t in got if t.startswith(start)), None)
            assert title is not None and got[title] == status, f"{start}: {got.get(title)}\n{out}"
            block = re.split(r"\n  (?=\S)", out[out.index(title) :], maxsplit=1)[0]
            assert why in block, f"{start}: {block}"
            assert ("fix: " in block) == (status == "FAIL"), block
    assert [t for t, status in got.items() if status == "ok"] == [
        "a hardware profile to check against is found (the installed one, else the reference profile)"
    ]
    assert "the check itself failed" not in out
    counts = Counter(got.values())
    summary = f"{counts['ok']} ok, {counts['FAIL']} failed, {counts['n/a']} not applicable"
    assert out.splitlines()[-1] == summary
    assert counts["FAIL"] == len(failed)


def test_doctor_selects_one_check_and_passes_a_clean_env_file(tmp_path):
    result = run_doctor_in(tmp_path, "OLLAMA_HOST=127.0.0.1:11434\nHSA_OVERRIDE_GFX_VERSION=10.3.0\n", "-k",
                           "test_env_file_syntax")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    title = "/etc/default/ollama has only KEY=value lines (no `export`, no inline comments)"
    assert _statuses(result.stdout) == [("ok", title)]
    assert result.stdout.splitlines()[-1] == "1 ok, 0 failed, 0 not applicable"


def test_doctor_selects_one_check_and_fails_an_export_line(tmp_path):
    result = run_doctor_in(tmp_path, "OLLAMA_HOST=127.0.0.1:11434\nexport HSA_OVERRIDE_GFX_VERSION=10.3.0\n",
                           "-k", "test_env_file_syntax")  # fmt: skip
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert [status for status, _ in _statuses(out)] == ["FAIL"]
    assert "line 2 `export HSA_OVERRIDE_GFX_VERSION=10.3.0`: starts with `export`" in out, out
    assert "fix: write plain KEY=value lines" in out, out
    assert out.splitlines()[-1] == "0 ok, 1 failed, 0 not applicable"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200))
def test_env_file_reader_never_crashes(text):
    env = parse_env_file(text)
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) for key in env.values)
    assert all(p.startswith("line ") for p in env.problems)


def test_doctor_unreachable_host_is_one_clear_error():
    if shutil.which("ssh") is None:
        _unavailable("no ssh client (tests/setup.d/10-apt.sh installs openssh-client)")
    result = subprocess.run(
        [*DOCTOR, "--hosts", "ssh://nobody@127.0.0.1:1"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "cannot run commands on ssh://nobody@127.0.0.1:1: ssh: connect to host" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_an_unbuildable_situation_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no unshare; under CI every doctor test must run"):
        _unavailable("no unshare")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no unshare"):
        _unavailable("no unshare")
