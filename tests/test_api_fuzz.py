"""Property-based fuzzing of the gateway from its own OpenAPI schema: no input may produce a server error.

Schemathesis generates valid and invalid requests for every operation (one test per operation); a verify
worker with the stand-in REPL answers /v1/verify, so fuzzed Lean code also goes through the checker's policy
and the REPL protocol.
"""

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

# The schema as the app describes itself; building the app does no I/O (that happens in its lifespan).
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())
# /readyz answers 503 by design while parts are down; everything else must never answer 5xx.
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations() if result.ok().path != "/readyz"]


@pytest.fixture(scope="module")
def gateway_url(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service = ServiceHarness(redis_url=f"{redis_server}/13", workdir=tmp_path_factory.mktemp("fuzz"))
    service.redis.flushdb()
    try:
        # `?wait=` is capped at 1 s here: no generate worker runs, so no job would ever finish.
        url = service.start_gateway(OPROVER_API_MAX_WAIT_S="1")
        service.start_worker("verify", concurrency=2)
        yield url
    finally:
        service.close()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_no_request_produces_a_server_error(operation, gateway_url: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        response = case.call(base_url=gateway_url, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    check()
