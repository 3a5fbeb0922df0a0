"""The patch tests' tools: a missing one is a skip on a developer machine and a failure under CI."""

from __future__ import annotations

import pytest

MISSING = "oar-no-such-tool"


def test_a_missing_tool_fails_under_ci(tool, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} is not installed; under CI"):
        tool(MISSING)


def test_a_missing_tool_skips_elsewhere(tool, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed"):
        tool(MISSING)
