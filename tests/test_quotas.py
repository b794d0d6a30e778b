"""Per-key quotas in Redis: requests per minute, jobs in flight, generated tokens per day. Each gives a 429 with
`retry-after` naming the limit; other keys are not affected.

Real Redis, gateway and workers; the model and Lean are stand-ins (standins/) taking seconds like the real
parts. Each test uses its own key, so the quotas it fills are its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from api.tenancy import owner_id
from services import keys
from services.store import utc_day
from tests.api_fixtures import running_service
from tests.harness import ServiceHarness
from tests.test_chat_openai import GOOD, GOOD_MARK, PROBLEM, completion_text

pytestmark = pytest.mark.slow

KEYS = {
    name: f"sk-quota-{name}-{i}9f8e7d6c5b4a3f2e1d" for i, name in enumerate(("rpm", "flight", "burst", "tokens", "b"))
}
BODY = {"formal_statement": PROBLEM["formal_statement"], "rounds": 1}
RPM = 30


@pytest.fixture(scope="module")
def service(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHarness]:
    with running_service(
        f"{redis_server}/13",
        tmp_path_factory.mktemp("quotas"),
        lean_rules=[{"match": GOOD_MARK, "outcome": "pass", "check_s": 2}],
        model={"content": completion_text(GOOD), "delay_s": 3},
        env={"OPROVER_API_KEYS": ",".join(KEYS.values())},
        gateway_env={"OPROVER_QUOTA_REQUESTS_PER_MINUTE": str(RPM), "OPROVER_QUOTA_JOBS_IN_FLIGHT": "2"},
    ) as harness:
        yield harness


def _client(service: ServiceHarness, name: str) -> httpx.Client:
    return service.client(headers={"Authorization": f"Bearer {KEYS[name]}"})


def _assert_quota(response: httpx.Response, code: str, setting: str, max_retry_s: int) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == code and setting in error["message"]
    assert 1 <= int(response.headers["retry-after"]) <= max_retry_s


def _follow_to_end(http: httpx.Client, job_id: str) -> str:
    """One request that lasts until the job ends (no polling: polls would count against the request quota)."""
    events = http.get(f"/v1/prove/{job_id}/events", timeout=60)
    assert events.status_code == 200, events.text
    return events.text.strip().split("event: ")[-1].split("\n")[0]


def test_requests_per_minute(service: ServiceHarness) -> None:
    if time.time() % 60 > 50:  # the count is per clock minute: start inside one
        time.sleep(61 - time.time() % 60)
    with _client(service, "rpm") as http:
        answers = [http.get("/v1/prove/prf_000000000000000000000000").status_code for _ in range(RPM)]
        assert answers == [404] * RPM
        _assert_quota(http.get("/v1/prove/prf_000000000000000000000000"), "requests_per_minute", "PER_MINUTE", 61)
    with _client(service, "b") as other:  # another key still has its own minute
        assert other.get("/v1/prove/prf_000000000000000000000000").status_code == 404


def test_jobs_in_flight(service: ServiceHarness) -> None:
    with _client(service, "flight") as http:
        first = [http.post("/v1/prove", json=BODY) for _ in range(2)]
        assert [r.status_code for r in first] == [202, 202], [r.text for r in first]
        _assert_quota(http.post("/v1/prove", json=BODY), "jobs_in_flight", "JOBS_IN_FLIGHT", 60)
        batch = http.post("/v1/prove/batch", json=[BODY, BODY, BODY])
        _assert_quota(batch, "jobs_in_flight", "JOBS_IN_FLIGHT", 60)
        assert "3 jobs at once" in batch.json()["error"]["message"]
        assert [_follow_to_end(http, r.json()["id"]) for r in first] == ["job.proved", "job.proved"]
        assert http.post("/v1/prove", json=BODY).status_code == 202  # the ended jobs gave their places back


def test_concurrent_submissions_cannot_overrun_jobs_in_flight(service: ServiceHarness) -> None:
    with _client(service, "burst") as http, ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: http.post("/v1/prove", json=BODY), range(6)))
        assert sorted(r.status_code for r in answers) == [202, 202, 429, 429, 429, 429], [r.text for r in answers]
        live = service.redis.zcard(keys.quota_live_jobs_key(owner_id(KEYS["burst"])))
        assert live == 2
        for response in answers:
            if response.status_code == 202:
                assert _follow_to_end(http, response.json()["id"]) == "job.proved"


def test_daily_generated_tokens(harness: ServiceHarness) -> None:
    harness.env["OPROVER_API_KEYS"] = ",".join(KEYS.values())
    harness.lean_rules([{"match": GOOD_MARK, "outcome": "pass", "check_s": 2}])
    harness.generator.script([], default={"content": completion_text(GOOD), "delay_s": 3})
    harness.start_gateway(OPROVER_QUOTA_DAILY_TOKENS="1")
    harness.start_worker("generate")
    harness.start_worker("verify")
    service = harness
    with _client(service, "tokens") as http:
        job = http.post("/v1/prove", json=BODY)
        assert job.status_code == 202, job.text
        assert _follow_to_end(http, job.json()["id"]) == "job.proved"
        spent = http.get(f"/v1/prove/{job.json()['id']}").json()["usage"]["completion_tokens"]
        assert spent > 1
        counter = service.redis.get(keys.quota_tokens_key(owner_id(KEYS["tokens"]), utc_day()))
        assert int(counter or 0) == spent  # the worker counted exactly what the job's record shows
        _assert_quota(http.post("/v1/prove", json=BODY), "daily_tokens", "DAILY_TOKENS", 86401)
        chat = {"model": "oprover", "messages": [{"role": "user", "content": PROBLEM["formal_statement"]}]}
        _assert_quota(http.post("/v1/chat/completions", json=chat), "daily_tokens", "DAILY_TOKENS", 86401)
    with _client(service, "b") as other:
        assert other.post("/v1/prove", json=BODY).status_code == 202
