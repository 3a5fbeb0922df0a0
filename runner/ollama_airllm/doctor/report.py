"""A pytest plugin turning the check results into the doctor's report: ok, problem + fix, not applicable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import click
import pytest

from .outcome import NOT_APPLICABLE, CheckFailed

OK, FAILED, NOT_APPLIES = "ok", "FAIL", "n/a"


@dataclass
class Result:
    host: str
    title: str
    status: str
    problem: str = ""
    fix: str = ""


class Reporter:
    """Collects one Result per check and prints them grouped by host, failures with their fix."""

    def __init__(self, echo: Callable[[str], None] = click.echo) -> None:
        self.results: list[Result] = []
        self.profiles: dict[str, str] = {}  # host -> where its profile came from
        self.echo = echo

    @staticmethod
    def _host_id(item: pytest.Item) -> str:
        callspec = getattr(item, "callspec", None)
        host = callspec.params.get("_testinfra_host") if callspec else None
        return host.backend.get_pytest_id() if host is not None else "local"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        loaded = getattr(item, "funcargs", {}).get("loaded_profile")
        if loaded is not None:
            self.profiles.setdefault(self._host_id(item), loaded.source)
        if report.when == "call" or (report.when == "setup" and not report.passed):
            title = (getattr(item, "function", None).__doc__ or item.name).strip().splitlines()[0]
            result = Result(self._host_id(item), title, OK)
            if report.skipped:
                reason = call.excinfo.value.msg if call.excinfo else str(report.longrepr)
                result.status, result.problem = NOT_APPLIES, str(reason).removeprefix(NOT_APPLICABLE)
                if not str(reason).startswith(NOT_APPLICABLE):
                    result.problem = f"skipped: {reason}"
            elif report.failed:
                result.status = FAILED
                exc = call.excinfo.value if call.excinfo else None
                if isinstance(exc, CheckFailed):
                    result.problem, result.fix = exc.problem, exc.fix
                else:
                    result.problem = f"the check itself failed ({report.when}): " + (
                        call.excinfo.exconly().strip() if call.excinfo else str(report.longrepr)
                    )
                    result.fix = "report this as a bug of ollama-airllm doctor, with this output"
            self.results.append(result)
        return report

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.results.append(
                Result(
                    "local",
                    f"loading the checks ({report.nodeid or 'suite'})",
                    FAILED,
                    str(report.longrepr).strip().splitlines()[-1],
                    "check the --hosts value and the profile; otherwise report this as a bug",
                )
            )

    def print_report(self) -> None:
        styles = {OK: "green", FAILED: "red", NOT_APPLIES: "yellow"}
        for host in dict.fromkeys(r.host for r in self.results):
            profile = self.profiles.get(host)
            self.echo(click.style(f"host {host}", bold=True) + (f"  (profile: {profile})" if profile else ""))
            for r in (r for r in self.results if r.host == host):
                self.echo(f"  {click.style(f'{r.status:<4}', fg=styles[r.status], bold=True)}  {r.title}")
                if r.status == NOT_APPLIES:
                    self.echo(f"        not applicable: {r.problem}")
                elif r.status == FAILED:
                    for line in r.problem.splitlines():
                        self.echo(f"        {line}")
                    self.echo(click.style(f"        fix: {r.fix}", bold=True))
        counts = {s: sum(r.status == s for r in self.results) for s in (OK, FAILED, NOT_APPLIES)}
        self.echo(f"{counts[OK]} ok, {counts[FAILED]} failed, {counts[NOT_APPLIES]} not applicable")

    @property
    def failed(self) -> int:
        return sum(r.status == FAILED for r in self.results)
