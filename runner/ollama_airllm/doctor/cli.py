"""`ollama-airllm doctor`: run the shipped testinfra checks against this machine (or others over ssh)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from ..errors import UsageError, UserError
from .report import Reporter

CHECKS_DIR = Path(__file__).resolve().parent / "checks"
_HOST_RE = re.compile(r"^(local://|(ssh|paramiko|safe-ssh)://[A-Za-z0-9._@:\[\]-]+)$")


def _check_hosts(value: str) -> str:
    for item in value.split(","):
        if not _HOST_RE.match(item.strip()):
            raise UsageError(
                f"--hosts: bad host {item!r}; allowed: local:// or ssh://[user@]host[:port], comma separated"
            )
    return ",".join(item.strip() for item in value.split(","))


def _check_reachable(hosts: str, sudo: bool) -> None:
    """One command on each host first, so an unreachable host is one clear error, not a failure per check."""
    import testinfra

    for spec in hosts.split(","):
        try:
            result = testinfra.get_host(spec, sudo=sudo).run("true")
        except Exception as exc:  # the backends raise their own errors; ssh wraps its CommandResult
            result = exc.args[0] if exc.args and hasattr(exc.args[0], "rc") else None
            if result is None:
                raise UserError(f"cannot run commands on {spec}: {exc}") from None
        error = (result.stderr or result.stdout).strip() or f"exit status {result.rc}"
        if result.rc != 0:
            raise UserError(f"cannot run commands on {spec}: {error}")


def run_checks(
    hosts: str,
    profile: str | None,
    sudo: bool,
    select: str | None,
    reporter: Reporter,
    calibration: str | None = None,
) -> int:
    """Run the check suite with pytest + testinfra; returns pytest's exit code."""
    import pytest

    args = [
        str(CHECKS_DIR),
        "--hosts",
        hosts,
        "-c",
        os.devnull,
        "--rootdir",
        str(CHECKS_DIR),
        "--import-mode=importlib",
        "--assert=plain",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:terminal",
        "-p",
        "testinfra.plugin",
    ]
    if profile:
        args += ["--oar-profile", profile]
    if calibration:
        args += ["--oar-calibration", calibration]
    if sudo:
        args.append("--sudo")
    if select:
        args += ["-k", select]
    # Only our plugins: third-party pytest plugins installed on the machine have no say in the report,
    # and nothing is written next to the installed checks (no cache, no rewritten bytecode).
    saved_env = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    saved_bytecode = sys.dont_write_bytecode
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    sys.dont_write_bytecode = True
    try:
        return int(pytest.main(args, plugins=[reporter]))
    finally:
        sys.dont_write_bytecode = saved_bytecode
        if saved_env is None:
            os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
        else:
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = saved_env


@click.command()
@click.option(
    "--hosts",
    default="local://",
    show_default=True,
    help="Where to check: local:// or ssh://[user@]host, comma separated.",
)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Profile YAML on this machine. Default: /etc/ollama-airllm/profile.yaml on each checked host, "
    "else the reference profile.",
)
@click.option(
    "--calibration",
    "calibration_path",
    default=None,
    help="Calibration file on each checked host (default: /var/lib/ollama/airllm/calibration.json).",
)
@click.option("--sudo", is_flag=True, help="Run the host commands through sudo (for a non-root ssh user).")
@click.option(
    "-k", "select", metavar="EXPR", default=None, help="Run only the checks matching EXPR (pytest -k)."
)
def doctor(
    hosts: str, profile_path: str | None, calibration_path: str | None, sudo: bool, select: str | None
) -> None:
    """Check an installed ollama-airllm-rocm: files, user, service, env, network, GPU, runner, calibration.

    Each problem is printed with its fix. Checks that cannot apply on a host (no GPU, no Ollama binary)
    are listed as "not applicable" with the reason. Exit status: 0 all fine, 1 problems found, 2 bad usage.
    """
    hosts = _check_hosts(hosts)
    _check_reachable(hosts, sudo)
    if profile_path is not None:
        from ..profile import load_profile

        load_profile(profile_path)  # a bad profile is a usage error, before any check runs
    reporter = Reporter()
    code = run_checks(hosts, profile_path, sudo, select, reporter, calibration_path)
    reporter.print_report()
    if code not in (0, 1) and not reporter.failed:
        raise UsageError(f"the checks did not run (pytest exit status {code}); see the messages above")
    if reporter.failed or code != 0:
        sys.exit(1)
