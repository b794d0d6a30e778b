"""Property-based fuzzing of the whole gateway from its own OpenAPI schema, with API keys and tenancy on.

Schemathesis generates valid and invalid requests for every operation (one test per operation), sent with a
valid key. For each one:
- no server error, and an error leaves in the envelope, naming the field it is about (`param`) when the
  request's content is what is wrong;
- the same request without a key, and with a key the gateway does not know, is a 401 on every `/v1` route;
- on a route that takes a job id, the same request naming another key's job is the 404 an unknown id gets.
A verify worker with the stand-in REPL answers /v1/verify, so fuzzed Lean code also goes through the checker's
policy and the REPL protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.app import create_app
from services.settings import Settings
from tests.api_fixtures import (
    TenantKeys,
    assert_error_envelope,
    bearer,
    check_fuzzed_response,
    check_refused_without_a_key,
    running_service,
)
from tests.shared_data import GOLDEN, read_jsonl

pytestmark = pytest.mark.slow

# The schema as the app describes itself; building the app does no I/O (that happens in its lifespan).
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())
# /readyz answers 503 by design while parts are down; everything else must never answer 5xx.
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations() if result.ok().path != "/readyz"]
KEYS = TenantKeys(
    a="sk-fuzz-a-4d6f8a0c2e4b6d8f0a2c4e6b", b="sk-fuzz-b-9c7e5a3f1d9b7e5c3a1f9d7b", admin="sk-fuzz-admin-2b4d6f8a0c"
)
STATEMENT = read_jsonl(GOLDEN / "minif2f_problems.jsonl")[0]["formal_statement"]


@dataclass(frozen=True)
class Gateway:
    url: str
    other_keys_job: str  # a job key B created: key A must get the 404 an unknown id gets


@pytest.fixture(scope="module")
def gateway(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # `?wait=` is capped at 1 s here: no generate worker runs, so no job would ever finish.
    with running_service(
        f"{redis_server}/13",
        tmp_path_factory.mktemp("fuzz"),
        env=KEYS.env(),
        gateway_env={"OPROVER_API_MAX_WAIT_S": "1"},
        workers=("verify",),
    ) as service:
        with service.client(headers=bearer(KEYS.b)) as http:
            created = http.post("/v1/prove", json={"formal_statement": STATEMENT})
        assert created.status_code == 202, created.text
        yield Gateway(url=str(service.gateway_url), other_keys_job=created.json()["id"])


def _check_other_keys_job(case, gateway: Gateway) -> None:
    """The other key's job answers exactly as an id that never existed does (ids leak nothing)."""
    answers = []
    for job_id in (gateway.other_keys_job, "prf_" + "0" * 24):
        case.path_parameters["job_id"] = job_id
        response = case.call(base_url=gateway.url, headers=bearer(KEYS.a), timeout=30)
        assert response.status_code == 404, (job_id, response.text)
        answers.append(assert_error_envelope(response)["message"].replace(job_id, "<id>"))
    assert answers[0] == answers[1], answers


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_no_request_with_a_key_produces_a_server_error_and_none_without_passes(operation, gateway: Gateway) -> None:
    needs_key = operation.path.startswith("/v1/")
    takes_job_id = "{job_id}" in operation.path

    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        check_fuzzed_response(case, case.call(base_url=gateway.url, headers=bearer(KEYS.a), timeout=30))
        if needs_key:
            check_refused_without_a_key(case, gateway.url)
        if takes_job_id:
            _check_other_keys_job(case, gateway)

    check()


def test_the_fuzzed_operations_cover_every_route_that_needs_a_key(gateway: Gateway) -> None:
    """Each `/v1` route of the schema is fuzzed above; and without a key even a well-formed request is a 401."""
    fuzzed = {(operation.method.upper(), operation.path) for operation in OPERATIONS}
    assert {("POST", "/v1/prove"), ("GET", "/v1/prove/{job_id}"), ("POST", "/v1/verify")} <= fuzzed
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for method, path in sorted(fuzzed):
            if path.startswith("/v1/"):
                response = http.request(method, path.replace("{job_id}", gateway.other_keys_job))
                assert response.status_code == 401, (method, path, response.text)
