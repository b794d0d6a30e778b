"""Tenancy: a job belongs to the key that created it; another key sees a 404; admin keys see all; keys never
appear in Redis or in any process's log.

Real Redis, gateway and workers; the model and Lean are stand-ins (standins/) taking seconds, like the
real parts, with the shipped defaults except the keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.tenancy import authenticate, owner_id
from services.errors import RequestError
from tests.api_fixtures import bearer, running_service
from tests.harness import ServiceHarness
from tests.test_chat_openai import GOOD, GOOD_MARK, PROBLEM, completion_text

pytestmark = pytest.mark.slow

KEY_A = "sk-tenant-a-7f3c9e1d2b4a6c8e0f1a3b5c7d9e"
KEY_B = "sk-tenant-b-0a2c4e6f8b1d3f5a7c9e1b3d5f7a"
ADMIN = "sk-admin-5e7a9c1b3d5f7e9a1c3b5d7f9e1a"
KEYS = (KEY_A, KEY_B, ADMIN)


@pytest.fixture(scope="module")
def service(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHarness]:
    with running_service(
        f"{redis_server}/13",
        tmp_path_factory.mktemp("tenancy"),
        lean_rules=[{"match": GOOD_MARK, "outcome": "pass", "check_s": 2}],
        model={"content": completion_text(GOOD), "delay_s": 3},
        env={"OPROVER_API_KEYS": f"{KEY_A},{KEY_B}", "OPROVER_API_ADMIN_KEYS": ADMIN},  # every process gets them
    ) as harness:
        yield harness


def _submit(service: ServiceHarness, key: str, **extra: Any) -> dict[str, Any]:
    with service.client(headers=bearer(key)) as http:
        response = http.post("/v1/prove", json={"formal_statement": PROBLEM["formal_statement"], "rounds": 1, **extra})
    assert response.status_code == 202, response.text
    return response.json()


def _wait(service: ServiceHarness, key: str, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with service.client(headers=bearer(key)) as http:
        while True:
            job = http.get(f"/v1/prove/{job_id}").json()
            if job["status"] in ("proved", "failed", "cancelled", "error"):
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.2)


def _assert_not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "not_found_error"


def test_another_keys_job_is_a_404_on_read_events_and_cancel(service: ServiceHarness) -> None:
    job_id = _submit(service, KEY_A)["id"]
    with service.client(headers=bearer(KEY_B)) as other:
        _assert_not_found(other.get(f"/v1/prove/{job_id}"))
        _assert_not_found(other.get(f"/v1/prove/{job_id}/events"))
        _assert_not_found(other.delete(f"/v1/prove/{job_id}"))
        unknown = other.get("/v1/prove/prf_000000000000000000000000")
        # the same answer as for a job that does not exist: ids do not reveal which jobs exist
        assert (
            unknown.json()["error"]["message"].replace("prf_000000000000000000000000", job_id)
            == (other.get(f"/v1/prove/{job_id}").json()["error"]["message"])
        )
    with service.client() as anonymous:
        assert anonymous.get(f"/v1/prove/{job_id}").status_code == 401
    with service.client(headers=bearer(ADMIN)) as admin:
        assert admin.get(f"/v1/prove/{job_id}").status_code == 200
    job = _wait(service, KEY_A, job_id)
    assert job["status"] == "proved"  # B's cancel did nothing
    with service.client(headers=bearer(KEY_A)) as owner:
        events = owner.get(f"/v1/prove/{job_id}/events")
    assert events.status_code == 200 and "job.proved" in events.text


def test_admin_key_cancels_any_job_and_owner_sees_it(service: ServiceHarness) -> None:
    job_id = _submit(service, KEY_B, rounds=4)["id"]
    with service.client(headers=bearer(ADMIN)) as admin:
        assert admin.delete(f"/v1/prove/{job_id}").json()["status"] == "cancelled"
    assert _wait(service, KEY_B, job_id)["status"] == "cancelled"


def test_a_chat_job_belongs_to_the_chat_caller(service: ServiceHarness) -> None:
    with service.client(headers=bearer(KEY_A)) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "oprover", "messages": [{"role": "user", "content": PROBLEM["formal_statement"]}]},
            timeout=60,
        )
    assert response.status_code == 200, response.text
    job_id = response.headers["x-oprover-job-id"]
    with service.client(headers=bearer(KEY_B)) as other:
        _assert_not_found(other.get(f"/v1/prove/{job_id}"))
    with service.client(headers=bearer(KEY_A)) as owner:
        assert owner.get(f"/v1/prove/{job_id}").status_code == 200


def test_jobs_store_the_keys_hash_never_the_key(service: ServiceHarness) -> None:
    job_id = _submit(service, KEY_A)["id"]
    owner = service.redis.hget(f"oprover:job:{{{job_id}}}", "owner")
    assert owner == owner_id(KEY_A).encode() and KEY_A.encode() not in owner
    _wait(service, KEY_A, job_id)
    dump = b"".join(
        service.redis.dump(key) or b"" for key in service.redis.scan_iter(count=1000) if service.redis.exists(key)
    )
    for key in KEYS:
        assert key.encode() not in dump


def test_no_key_appears_in_any_process_log(service: ServiceHarness) -> None:
    # Runs last in the module: by now every process has served authenticated submissions, reads, event streams,
    # cancels, chats and a bad key; its whole log is searched.
    with service.client(headers=bearer(KEY_A + "x")) as wrong:
        assert wrong.get("/v1/prove/prf_x").status_code == 401
    logs = {name: service.log(name) for name in service.processes}
    assert set(logs) == {"gateway", "generate-worker", "verify-worker"}
    assert all(logs.values()), "every process wrote a log"
    for name, text in logs.items():
        for key in KEYS:
            assert key not in text, f"{name}'s log holds an API key"
            assert key[8:24] not in text, f"{name}'s log holds part of an API key"


def test_keys_compare_exactly_and_admins_are_callers_too() -> None:
    assert authenticate(f"Bearer {KEY_A}", [KEY_A, KEY_B], [ADMIN]).owner == owner_id(KEY_A)
    assert authenticate(f"bearer  {ADMIN} ", [KEY_A], [ADMIN]).admin
    assert authenticate("", [], []).owner is None
    for header in (f"Bearer {KEY_A[:-1]}", f"Bearer {KEY_A}0", f"Basic {KEY_A}", "Bearer ", KEY_A):
        with pytest.raises(RequestError) as caught:
            authenticate(header, [KEY_A, KEY_B], [ADMIN])
        assert caught.value.status_code == 401
    assert owner_id(KEY_A) != owner_id(KEY_B) and KEY_A not in owner_id(KEY_A)
