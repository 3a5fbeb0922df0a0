"""Fixtures of the patch tests: the tools they run (go, git), required under CI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest


def required_tool(name: str) -> str:
    """The path of `name`: skip without it on a developer machine; under CI (CI set) fail the run."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; under CI the patch tests must run (tests/setup.sh)")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """required_tool, for test modules (pytest's importlib mode cannot import this conftest)."""
    return required_tool
