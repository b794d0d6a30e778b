"""Signed callbacks: a finished job with a `callback_url` is POSTed there once, retried with backoff, never
holding the job up. Real Redis and a real HTTP receiver on this machine; the end-to-end test runs the gateway
and workers with stand-ins (standins/) that take seconds, as the real parts do."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
import redis.asyncio

from services import keys
from services.settings import CallbackSettings
from services.store import JobSpec, JobStore
from tests.harness import ServiceHarness
from tests.test_chat_openai import GOOD, GOOD_MARK, PROBLEM, completion_text
from workers.callbacks import SIGNATURE_HEADER, CallbackDelivery

SECRET = "test-callback-secret"


class Receiver:
    """A local HTTP server that records every POST and answers with scripted statuses (then 200)."""

    def __init__(self, statuses: list[int] | None = None, delay_s: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay_s = delay_s
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.received.append(
                    {"body": body, "headers": dict(self.headers), "status": status, "at": time.monotonic()}
                )
                time.sleep(receiver.delay_s)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _spec(callback_url: str | None, attempts: int = 1) -> JobSpec:
    return JobSpec(
        formal_statement=PROBLEM["formal_statement"],
        header="import Mathlib",
        rounds=1,
        attempts=attempts,
        top_k=0,
        temperature=0.6,
        top_p=0.95,
        max_tokens=1024,
        callback_url=callback_url,
    )


def _due(client: redis.Redis) -> dict[str, float]:
    return {k.decode(): v for k, v in client.zrange(keys.CALLBACKS_DUE, 0, -1, withscores=True)}


# How a job with two chains, one of them already exhausted, can end.
ENDINGS = {
    "proved": lambda store, job: store.finish_proved(job, chain=1, round_=1, proof="theorem ..."),
    "failed": lambda store, job: store.chain_ended(job, 1),
    "cancelled": lambda store, job: store.cancel(job),
    "error": lambda store, job: store.fail_with_error(job, "generator: down"),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_way_a_job_ends_schedules_exactly_one_delivery(redis_client: redis.Redis, ending: str) -> None:
    store = JobStore(redis_client)
    job_id = store.create(_spec("http://127.0.0.1:9/hook", attempts=2))
    quiet = store.create(_spec(None, attempts=2))
    for job in (job_id, quiet):
        store.chain_ended(job, 0)
    assert _due(redis_client) == {}  # not ended yet: one chain is left
    for job in (job_id, quiet):
        assert ENDINGS[ending](store, job)
    assert store.get(job_id)["status"] == ending
    # A later transition attempt (a late verdict, a DELETE, a duplicated last round) changes nothing.
    store.cancel(job_id)
    store.fail_with_error(job_id, "late")
    store.chain_ended(job_id, 1)
    store.finish_proved(job_id, chain=1, round_=1, proof="late")
    assert _due(redis_client) == {job_id: 0.0}


def _deliver(redis_url: str, settings: CallbackSettings, *, passes: int = 1, until: float = 0.0) -> int:
    """Run delivery passes (as the gateway's background task does), for `passes` or until `until` s passed."""

    async def run() -> int:
        aredis = redis.asyncio.Redis.from_url(redis_url)
        sync = redis.Redis.from_url(redis_url)
        delivery = CallbackDelivery(aredis, JobStore(sync), settings)
        claimed = 0
        deadline = time.monotonic() + until
        try:
            for _ in range(passes):
                claimed += await delivery.deliver_due()
            while time.monotonic() < deadline:
                claimed += await delivery.deliver_due()
                await asyncio.sleep(0.05)
        finally:
            await delivery.stop()
            await aredis.aclose()
            sync.close()
        return claimed

    return asyncio.run(run())


def test_the_finished_job_is_posted_once_signed_with_the_secret(
    redis_url: str, redis_client: redis.Redis, receiver: Receiver
) -> None:
    store = JobStore(redis_client)
    job_id = store.create(_spec(receiver.url))
    store.finish_proved(job_id, chain=0, round_=1, proof="theorem t : True := trivial")

    assert _deliver(redis_url, CallbackSettings(secret=SECRET), passes=2) == 1
    [delivery] = receiver.received
    expected = "sha256=" + hmac.new(SECRET.encode(), delivery["body"], hashlib.sha256).hexdigest()
    assert delivery["headers"][SIGNATURE_HEADER] == expected
    assert delivery["headers"]["X-Oprover-Job-Id"] == job_id
    job = json.loads(delivery["body"])
    assert job["id"] == job_id and job["status"] == "proved" and job["proof"] == "theorem t : True := trivial"
    assert _due(redis_client) == {}
    events = [fields[b"type"] for _, fields in redis_client.xrange(keys.events_key(job_id))]
    assert events[-1] == b"callback.delivered"


def test_a_failing_receiver_is_retried_with_backoff_until_it_takes_the_job(
    redis_url: str, redis_client: redis.Redis
) -> None:
    receiver = Receiver(statuses=[500, 503])
    try:
        store = JobStore(redis_client)
        job_id = store.create(_spec(receiver.url))
        store.cancel(job_id)
        settings = CallbackSettings(secret=SECRET, backoff_base_s=0.3)
        _deliver(redis_url, settings, until=3.0)
        assert [r["status"] for r in receiver.received] == [500, 503, 200]
        assert [r["headers"]["X-Oprover-Delivery-Attempt"] for r in receiver.received] == ["1", "2", "3"]
        gaps = [b["at"] - a["at"] for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
        assert gaps[0] >= 0.3 and gaps[1] >= 0.6  # 0.3 s, then doubled
        assert _due(redis_client) == {}
    finally:
        receiver.close()


def test_a_receiver_that_never_takes_it_is_given_up_after_max_attempts(
    redis_url: str, redis_client: redis.Redis
) -> None:
    receiver = Receiver(statuses=[500] * 10)
    try:
        store = JobStore(redis_client)
        job_id = store.create(_spec(receiver.url))
        store.fail_with_error(job_id, "lean: down")
        _deliver(redis_url, CallbackSettings(secret=SECRET, backoff_base_s=0.05, max_attempts=3), until=2.0)
        assert len(receiver.received) == 3
        assert _due(redis_client) == {} and redis_client.hlen(keys.CALLBACK_ATTEMPTS) == 0
        last = redis_client.xrevrange(keys.events_key(job_id), count=1)[0][1]
        assert last[b"type"] == b"callback.failed" and b"HTTP 500" in last[b"data"]
    finally:
        receiver.close()


@pytest.mark.slow
def test_jobs_with_a_callback_are_delivered_by_the_gateway_without_waiting_for_the_receiver(
    harness: ServiceHarness,
) -> None:
    """Stand-ins at real latencies (3 s generation, 1 s Lean check); a receiver that takes 5 s to answer."""
    receiver = Receiver(statuses=[503], delay_s=5.0)
    try:
        harness.lean_rules([{"match": GOOD_MARK, "outcome": "pass", "check_s": 1}])
        harness.generator.script([], default={"content": completion_text(GOOD), "delay_s": 3})
        harness.start_gateway(OPROVER_CALLBACK_SECRET=SECRET, OPROVER_CALLBACK_BACKOFF_BASE_S="1")
        harness.start_worker("generate")
        harness.start_worker("verify")
        job = harness.submit(
            {"formal_statement": PROBLEM["formal_statement"], "rounds": 1, "callback_url": receiver.url}
        )
        proved = harness.wait_job(job["id"], timeout_s=30)
        assert proved["status"] == "proved" and proved["callback_url"] == receiver.url
        deadline = time.monotonic() + 30
        while len(receiver.received) < 2:
            assert time.monotonic() < deadline, receiver.received
            time.sleep(0.1)
        time.sleep(2)  # no third delivery: the second one was taken
        assert [r["status"] for r in receiver.received] == [503, 200]
        body = receiver.received[1]["body"]
        assert json.loads(body)["status"] == "proved"
        assert receiver.received[1]["headers"][SIGNATURE_HEADER].endswith(
            hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        )
    finally:
        receiver.close()


@pytest.mark.slow
def test_a_callback_url_without_a_signing_secret_is_refused(harness: ServiceHarness) -> None:
    harness.start_gateway()
    with harness.client() as http:
        response = http.post(
            "/v1/prove",
            json={"formal_statement": PROBLEM["formal_statement"], "callback_url": "http://127.0.0.1:9/hook"},
        )
        not_a_url = http.post("/v1/prove", json={"formal_statement": PROBLEM["formal_statement"], "callback_url": "x"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "callback_url"
    assert "OPROVER_CALLBACK_SECRET" in response.json()["error"]["message"]
    assert not_a_url.status_code == 400 and not_a_url.json()["error"]["param"] == "callback_url"
