"""Idempotent submission: a retry with the same `Idempotency-Key` gets the job(s) the first request created.

Real Redis, gateway and workers; the model and Lean are stand-ins (standins/) taking seconds like the real
parts, with the shipped defaults except the API keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api_fixtures import bearer, running_service
from tests.harness import ServiceHarness
from tests.test_chat_openai import GOOD, GOOD_MARK, PROBLEM, completion_text

pytestmark = pytest.mark.slow

KEY_A = "sk-idem-a-3b5d7f9a1c3e5b7d9f1a3c5e"
KEY_B = "sk-idem-b-8e6c4a2f0d8b6e4c2a0f8d6b"
BODY = {"formal_statement": PROBLEM["formal_statement"], "rounds": 1}


def _headers(key: str, idem: str | None = None) -> dict[str, str]:
    return {**bearer(key), **({"Idempotency-Key": idem} if idem else {})}


@pytest.fixture(scope="module")
def service(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHarness]:
    with running_service(
        f"{redis_server}/13",
        tmp_path_factory.mktemp("idempotency"),
        lean_rules=[{"match": GOOD_MARK, "outcome": "pass", "check_s": 2}],
        model={"content": completion_text(GOOD), "delay_s": 3},
        env={"OPROVER_API_KEYS": f"{KEY_A},{KEY_B}"},
    ) as harness:
        yield harness


def _job_count(service: ServiceHarness) -> int:
    return sum(1 for key in service.redis.scan_iter("oprover:job:{*}", count=1000) if key.endswith(b"}"))


def _post(service: ServiceHarness, path: str, key: str, idem: str | None, **kwargs: Any) -> httpx.Response:
    with service.client(headers=_headers(key, idem)) as http:
        return http.post(path, timeout=60, **kwargs)


def test_a_retried_submission_gets_the_job_it_already_created(service: ServiceHarness) -> None:
    before = _job_count(service)
    first = _post(service, "/v1/prove", KEY_A, "retry-1", json=BODY)
    assert first.status_code == 202, first.text
    retry = _post(service, "/v1/prove", KEY_A, "retry-1", json=BODY)
    assert retry.status_code == 202, retry.text
    assert retry.json()["id"] == first.json()["id"]
    assert retry.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert _job_count(service) == before + 1
    # a retry after the job ended still gets it, finished (a `?wait=` retry waits on the same job)
    waited = _post(service, "/v1/prove?wait=60", KEY_A, "retry-1", json=BODY)
    assert waited.status_code == 200 and waited.json()["id"] == first.json()["id"]
    assert waited.json()["status"] == "proved"
    assert _job_count(service) == before + 1


def test_the_same_key_with_another_body_is_refused_naming_the_header(service: ServiceHarness) -> None:
    assert _post(service, "/v1/prove", KEY_A, "reused", json=BODY).status_code == 202
    other = _post(service, "/v1/prove", KEY_A, "reused", json={**BODY, "rounds": 2})
    assert other.status_code == 422, other.text
    assert other.json()["error"]["param"] == "Idempotency-Key"
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_idempotency_keys_are_scoped_to_the_api_key(service: ServiceHarness) -> None:
    a = _post(service, "/v1/prove", KEY_A, "shared-name", json=BODY)
    b = _post(service, "/v1/prove", KEY_B, "shared-name", json=BODY)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_concurrent_retries_create_one_job(service: ServiceHarness) -> None:
    before = _job_count(service)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: _post(service, "/v1/prove", KEY_A, "burst", json=BODY), range(8)))
    created = {r.json()["id"] for r in answers if r.status_code == 202}
    busy = [r for r in answers if r.status_code == 409]
    assert len(created) == 1, [r.text for r in answers]
    assert len(created) + len(busy) <= len(answers) and all(r.status_code in (202, 409) for r in answers)
    for response in busy:  # a client told to retry does, and gets the one job
        assert response.json()["error"]["param"] == "Idempotency-Key"
        time.sleep(float(response.headers["retry-after"]))
        assert _post(service, "/v1/prove", KEY_A, "burst", json=BODY).json()["id"] in created
    assert _job_count(service) == before + 1


def test_a_refused_request_does_not_hold_its_key(service: ServiceHarness) -> None:
    bad = _post(service, "/v1/prove", KEY_A, "fixed-later", json={"formal_statement": "def f : ℕ := 1"})
    assert bad.status_code == 400
    assert _post(service, "/v1/prove", KEY_A, "fixed-later", json=BODY).status_code == 202


@pytest.mark.parametrize("value", ["x" * 256, "naïve", "tab\there"])
def test_a_malformed_idempotency_key_is_a_400_naming_the_header(service: ServiceHarness, value: str) -> None:
    with service.client(headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        response = http.post("/v1/prove", json=BODY, headers={b"Idempotency-Key": value.encode()})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "Idempotency-Key"


def test_a_retried_batch_gets_the_same_jobs(service: ServiceHarness) -> None:
    lines = "\n".join(json.dumps({**BODY, "metadata": {"n": i}}) for i in range(3))
    before = _job_count(service)
    first = _post(service, "/v1/prove/batch", KEY_A, "batch-1", content=lines)
    retry = _post(service, "/v1/prove/batch", KEY_A, "batch-1", content=lines)
    assert first.status_code == retry.status_code == 202, retry.text
    assert [d["id"] for d in retry.json()["data"]] == [d["id"] for d in first.json()["data"]]
    assert all(d["status"] in ("queued", "running", "proved") for d in retry.json()["data"])
    assert _job_count(service) == before + 3


def test_a_retried_chat_completion_follows_the_same_job(service: ServiceHarness) -> None:
    chat = {"model": "oprover", "messages": [{"role": "user", "content": PROBLEM["formal_statement"]}]}
    before = _job_count(service)
    first = _post(service, "/v1/chat/completions", KEY_A, "chat-1", json=chat)
    retry = _post(service, "/v1/chat/completions", KEY_A, "chat-1", json=chat)
    assert first.status_code == retry.status_code == 200, retry.text
    assert retry.headers["x-oprover-job-id"] == first.headers["x-oprover-job-id"]
    assert retry.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert _job_count(service) == before + 1
