"""Fuzz run: schemathesis against the runner's published OpenAPI, positive and negative bodies, zero 5xx.

Bounded: a small context (every generation ends within 128 tokens) and a fixed number of examples per
operation and mode, so the run takes a minute or two on a busy 2-core machine.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

EXAMPLES = 25


@pytest.fixture(scope="module")
def fuzz_server(chat_model, srvtools, module_servers):
    srv = srvtools.launch(
        [
            *srvtools.runner_cmd(),
            "--model",
            str(chat_model),
            "-c",
            "128",
            "-np",
            "2",
            "-t",
            "1",
            "--embedding",
        ]
    )
    module_servers.append(srv)
    return srv


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors(fuzz_server, mode):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/completion",
        "/v1/chat/completions",
        "/tokenize",
        "/detokenize",
        "/apply-template",
        "/v1/embeddings",
    }
    seen: list[tuple[str, int]] = []
    for op in operations:
        if mode is GenerationMode.NEGATIVE and op.method.upper() == "GET":
            continue  # nothing to get wrong in a GET without parameters

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(base_url=fuzz_server.url, timeout=120)
            seen.append((case.path, response.status_code))
            assert response.status_code < 500, (
                f"{case.method} {case.path} {case.body!r} -> {response.status_code}: {response.text[:500]}"
            )
            if response.status_code >= 400:
                err = response.json()["error"]
                assert {"code", "message", "type"} <= set(err) and err["code"] == response.status_code

        check()
    assert len({path for path, _status in seen}) >= 6
    assert "Traceback" not in fuzz_server.log()
