"""Schemathesis over the chat door, the batch and the model list: no input produces a server error, and every
error leaves in the envelope. Unlike tests/test_api_fuzz.py, workers run here, so the jobs that fuzzed chat
requests do create end (the stand-in REPL judges everything `error`), and `oprover` chats are answered; a
generated request naming another model is relayed to the stand-in generator (standins/)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from api.app import create_app
from services.settings import Settings
from tests.harness import ServiceHarness

pytestmark = pytest.mark.slow

SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())
PATHS = {"/v1/chat/completions", "/v1/prove/batch", "/v1/models"}
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations() if result.ok().path in PATHS]


@pytest.fixture(scope="module")
def gateway_url(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service = ServiceHarness(redis_url=f"{redis_server}/13", workdir=tmp_path_factory.mktemp("chat-fuzz"))
    service.redis.flushdb()
    try:
        service.env["OPROVER_PROVE_ROUNDS"] = "1"
        url = service.start_gateway(OPROVER_PROVE_MAX_BATCH="20", OPROVER_PROVE_MAX_ATTEMPTS="4")
        service.start_worker("generate")
        service.start_worker("verify")
        yield url
    finally:
        service.close()


def test_the_new_endpoints_are_all_in_the_schema() -> None:
    assert {operation.path for operation in OPERATIONS} == PATHS


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_no_request_to_the_chat_door_produces_a_server_error(operation, gateway_url: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        response = case.call(base_url=gateway_url, timeout=60)
        case.validate_response(response, checks=[not_a_server_error])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    check()
