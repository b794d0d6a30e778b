"""Priorities: an interactive request (`?wait=`, chat) is not stuck behind another key's big batch: its rounds go
to the queue generate workers take first.

Real Redis, gateway and workers; the model and Lean are stand-ins (standins/) taking seconds like the real
parts. One generate slot, so the order in which rounds are taken is the order in which jobs finish.
"""

from __future__ import annotations

import time

import pytest

from tests.harness import ServiceHarness
from tests.test_chat_openai import GOOD, GOOD_MARK, PROBLEM, completion_text

pytestmark = pytest.mark.slow

BATCH_KEY = "sk-priority-batch-4d6f8a0c2e4b6d8f"
CHAT_KEY = "sk-priority-chat-9c7e5a3f1d9b7e5c"
BODY = {"formal_statement": PROBLEM["formal_statement"], "rounds": 1}
BATCH = 8


def test_an_interactive_job_overtakes_a_big_batch_of_another_key(harness: ServiceHarness) -> None:
    harness.env["OPROVER_API_KEYS"] = f"{BATCH_KEY},{CHAT_KEY}"
    harness.lean_rules([{"match": GOOD_MARK, "outcome": "pass", "check_s": 1}])
    harness.generator.script([], default={"content": completion_text(GOOD), "delay_s": 2})
    harness.start_gateway()
    harness.start_worker("generate", concurrency=1)
    harness.start_worker("verify")
    with harness.client(headers={"Authorization": f"Bearer {BATCH_KEY}"}) as batch_client:
        batch = batch_client.post("/v1/prove/batch", json=[BODY] * BATCH)
        assert batch.status_code == 202, batch.text
        batch_ids = [item["id"] for item in batch.json()["data"]]
    harness.wait_running("generate")  # the batch has the one slot: the interactive job arrives behind it
    with harness.client(headers={"Authorization": f"Bearer {CHAT_KEY}"}) as chat_client:
        waited = chat_client.post("/v1/prove?wait=60", json=BODY, timeout=90)
    assert waited.status_code == 200, waited.text
    interactive = waited.json()
    assert interactive["status"] == "proved"
    with harness.client(headers={"Authorization": f"Bearer {BATCH_KEY}"}) as batch_client:
        jobs = [batch_client.get(f"/v1/prove/{job_id}").json() for job_id in batch_ids]
    unfinished = [job for job in jobs if job["finished_at"] is None or job["finished_at"] > interactive["finished_at"]]
    # Behind at most the round that held the slot (and one taken while it was being enqueued), not behind 8 x 2 s.
    assert len(unfinished) >= BATCH - 2, [(j["status"], j["finished_at"]) for j in jobs]
    assert interactive["finished_at"] - interactive["created_at"] < 2 * 2 + 10
    deadline = time.monotonic() + 60
    with harness.client(headers={"Authorization": f"Bearer {BATCH_KEY}"}) as batch_client:
        while True:  # and the batch still finishes, every job of it
            statuses = [batch_client.get(f"/v1/prove/{job_id}").json()["status"] for job_id in batch_ids]
            if statuses == ["proved"] * BATCH:
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.5)
