"""Generator failures as a proof job sees them: real gateway, Redis, generate/verify worker processes, and the
stand-in generator scripted to fail (tests/harness.py). Transient then success, a permanent
rejection, and `Retry-After`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.harness import ServiceHarness

pytestmark = pytest.mark.slow

STATEMENT = "theorem gen_loop (a b : ℝ) (h : a = b + 1) : a - b = 1 := by sorry"
PROOF = "```lean4\ntheorem gen_loop (a b : ℝ) (h : a = b + 1) : a - b = 1 := by\n  linarith [h] -- PASS_ME\n```"
# A job's records stay in Redis after it ends; each test proves the statement anew (no cache of proofs here).


# One service for the module (starting the processes is most of the cost); each test resets the stand-in.
_DB = 13  # tests/conftest.py hands out 1..14 one test at a time; none runs while this module does


@pytest.fixture(scope="module")
def harness(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHarness]:
    url = f"{redis_server}/{_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    service = ServiceHarness(redis_url=url, workdir=tmp_path_factory.mktemp("generation-loop"))
    try:
        service.start_gateway()
        service.start_worker("generate", concurrency=2)
        service.start_worker("verify", concurrency=1)
        yield service
    finally:
        service.close()
        client.flushdb()
        client.close()


@pytest.fixture(autouse=True)
def fresh_generator(harness: ServiceHarness) -> None:
    harness.generator.reset()


def test_transient_failures_then_success_prove_the_job(harness: ServiceHarness) -> None:
    harness.generator.script(
        [
            {"match": "gen_loop", "status": 503, "times": 1, "error_message": "server is loading"},
            {"match": "gen_loop", "status": 500, "times": 1},
            {"match": "gen_loop", "content": PROOF},
        ]
    )
    job = harness.wait_job(harness.submit({"formal_statement": STATEMENT, "rounds": 1, "top_k": 0})["id"])
    assert job["status"] == "proved", job
    assert [a["verdict"] for a in job["attempts"]] == ["pass"]
    assert len(harness.chat_requests()) == 3  # retried inside the client, one attempt on the record


def test_permanent_rejection_ends_the_job_with_error_at_once(harness: ServiceHarness) -> None:
    message = "This model's maximum context length is 40960 tokens; the request has 51234"
    harness.generator.script([{"match": "gen_loop", "status": 400, "error_message": message}])
    job = harness.wait_job(harness.submit({"formal_statement": STATEMENT, "rounds": 3})["id"], timeout_s=30)
    assert job["status"] == "error"
    assert job["error"].startswith("generator") and "maximum context length" in job["error"]
    assert len(harness.chat_requests()) == 1  # neither the client nor RQ retried it


def test_retry_after_is_honoured_between_requests(harness: ServiceHarness) -> None:
    harness.generator.script(
        [
            {"match": "gen_loop", "status": 429, "times": 1, "retry_after": 1.5},
            {"match": "gen_loop", "content": PROOF},
        ]
    )
    job = harness.wait_job(harness.submit({"formal_statement": STATEMENT, "rounds": 1, "top_k": 0})["id"])
    assert job["status"] == "proved", job
    first, second = harness.generator.requests()
    assert second["received_at"] - first["received_at"] >= 1.5
