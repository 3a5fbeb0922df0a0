"""How a check ends other than passing: a problem with its fix, or "not applicable on this host"."""

from __future__ import annotations

from typing import NoReturn

import pytest

NOT_APPLICABLE = "not applicable: "


class CheckFailed(AssertionError):
    """A check found something wrong; `fix` says what to do about it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}\nfix: {fix}")
        self.problem = problem
        self.fix = fix


def fail(problem: str, fix: str) -> NoReturn:
    """End the check as failed, saying what is wrong and how to fix it."""
    raise CheckFailed(problem, fix)


def not_applicable(why: str) -> NoReturn:
    """End the check as not applicable on this host (reported, never silent)."""
    pytest.skip(NOT_APPLICABLE + why)
