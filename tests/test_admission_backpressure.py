"""Backpressure: while the queues are too deep (or their oldest round too old) a new job gets a 503 with
`retry-after`; the jobs admitted before all finish, and the door opens again once the backlog drains.

Real Redis, gateway and workers; the model and Lean are stand-ins (standins/) taking seconds like the real
parts. The workers start only after the queue has filled, as when a flood arrives faster than they drain it.
"""

from __future__ import annotations

import time

import pytest

from tests.harness import ServiceHarness
from tests.test_chat_openai import GOOD, GOOD_MARK, PROBLEM, completion_text

pytestmark = pytest.mark.slow

BODY = {"formal_statement": PROBLEM["formal_statement"], "rounds": 1}
CHAT = {"model": "oprover", "messages": [{"role": "user", "content": PROBLEM["formal_statement"]}]}


def _standins(harness: ServiceHarness) -> None:
    harness.lean_rules([{"match": GOOD_MARK, "outcome": "pass", "check_s": 2}])
    harness.generator.script([], default={"content": completion_text(GOOD), "delay_s": 3})


def test_a_full_queue_refuses_new_jobs_and_admitted_jobs_finish(harness: ServiceHarness) -> None:
    _standins(harness)
    harness.start_gateway(OPROVER_ADMISSION_MAX_QUEUED_ROUNDS="3")
    with harness.client() as http:
        admitted = [http.post("/v1/prove", json=BODY) for _ in range(4)]
        assert [r.status_code for r in admitted] == [202] * 4, [r.text for r in admitted]
        for refused in (
            http.post("/v1/prove", json=BODY),
            http.post("/v1/prove/batch", json=[BODY]),
            http.post("/v1/chat/completions", json=CHAT),
        ):
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "queue_full"
            assert "OPROVER_ADMISSION_MAX_QUEUED_ROUNDS" in refused.json()["error"]["message"]
            assert refused.headers["retry-after"] == "30"
    harness.start_worker("generate")
    harness.start_worker("verify")
    jobs = [harness.wait_job(r.json()["id"], timeout_s=90) for r in admitted]
    assert [job["status"] for job in jobs] == ["proved"] * 4
    assert harness.submit(BODY)["status"] == "queued"  # drained: new jobs are welcome again


def test_a_stale_queue_refuses_new_jobs_until_it_moves(harness: ServiceHarness) -> None:
    _standins(harness)
    harness.start_gateway(OPROVER_ADMISSION_MAX_QUEUE_AGE_S="2")
    first = harness.submit(BODY)
    time.sleep(3)
    with harness.client() as http:
        refused = http.post("/v1/prove", json=BODY)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "queue_too_old" and int(refused.headers["retry-after"]) > 0
    harness.start_worker("generate")
    harness.start_worker("verify")
    assert harness.wait_job(first["id"], timeout_s=60)["status"] == "proved"
    assert harness.submit(BODY)["status"] == "queued"
