"""Schemathesis over the chat door, the batch and the model list, with API keys and tenancy on: no input produces a
server error, every error leaves in the envelope naming its field, and without a valid key each is a 401.

Unlike tests/test_api_fuzz.py, workers run here, so the jobs that fuzzed chat requests do create end (the
stand-in REPL judges everything `error`), and `oprover` chats are answered; a generated request naming another
model is relayed to the stand-in generator (standins/).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.app import create_app
from services.settings import Settings
from tests.api_fixtures import TenantKeys, bearer, check_fuzzed_response, check_refused_without_a_key, running_service

pytestmark = pytest.mark.slow

SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())
PATHS = {"/v1/chat/completions", "/v1/prove/batch", "/v1/models"}
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations() if result.ok().path in PATHS]
KEYS = TenantKeys(
    a="sk-chatfuzz-a-6e8a0c2e4b6d8f0a2c", b="sk-chatfuzz-b-1d9b7e5c3a1f9d7b5e", admin="sk-chatfuzz-admin-3c5e7a9b"
)


@pytest.fixture(scope="module")
def gateway_url(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_service(
        f"{redis_server}/13",
        tmp_path_factory.mktemp("chat-fuzz"),
        env={**KEYS.env(), "OPROVER_PROVE_ROUNDS": "1"},
        gateway_env={"OPROVER_PROVE_MAX_BATCH": "20", "OPROVER_PROVE_MAX_ATTEMPTS": "4"},
    ) as service:
        yield str(service.gateway_url)


def test_the_new_endpoints_are_all_in_the_schema() -> None:
    assert {operation.path for operation in OPERATIONS} == PATHS


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_no_request_to_the_chat_door_produces_a_server_error(operation, gateway_url: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        check_fuzzed_response(case, case.call(base_url=gateway_url, headers=bearer(KEYS.a), timeout=60))
        check_refused_without_a_key(case, gateway_url)

    check()
