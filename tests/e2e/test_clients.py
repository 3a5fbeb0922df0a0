"""The coding agents through the patched Ollama, with every model forced onto our runner."""

from __future__ import annotations

import pytest

from tests.clients import openclaw_turn, opencode_turn
from tests.server.conftest import opencode_bin

from .conftest import CTX, MODEL, openclaw_bin

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.opencode
def test_opencode_completes_a_turn_at_v1(forced, tmp_path):
    events = opencode_turn(opencode_bin(), forced.url + "/v1", MODEL, CTX, tmp_path)
    finishes = [e["part"]["reason"] for e in events if e.get("type") == "step_finish"]
    assert finishes and finishes[-1] in ("stop", "length", "tool-calls"), events
    assert '"/v1/chat/completions"' in forced.log()
    assert "Traceback" not in forced.log()


@pytest.mark.openclaw
def test_openclaw_completes_a_turn_with_its_ollama_provider(forced, tmp_path):
    result = openclaw_turn(openclaw_bin(), forced.url, MODEL, CTX, tmp_path)
    meta = result["meta"]["agentMeta"]
    assert (meta["provider"], meta["model"], meta["contextTokens"]) == ("ollama", MODEL, CTX), meta
    assert meta["assistantTurns"] >= 1 and meta["usage"]["output"] > 0, meta
    assert result["payloads"] and "error" not in result, result
    assert '"/api/chat"' in forced.log()
    assert "Traceback" not in forced.log()
