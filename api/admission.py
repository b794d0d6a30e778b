"""Backpressure: refuse new jobs with a 503 while the queues are too far behind, instead of queueing without bound.

A queued round costs nothing until a worker takes it, so a flood of submissions would otherwise grow the queues
(and every client's wait) without limit. Two signals, both read from the RQ queues the rounds wait in
(generation, and the default Lean version's verification): how many rounds wait (`max_queued_rounds`) and how
long the oldest has waited (`max_queue_age_s`). Only new jobs are refused: rounds of admitted jobs are enqueued by
the workers, never through here, so every admitted job runs to its end.
"""

from __future__ import annotations

import time

import redis
from rq.queue import Queue
from rq.utils import utcparse

from services import keys
from services.errors import RequestError
from services.settings import AdmissionSettings

# The queues whose backlog is the service's: a job's rounds alternate between generation and verification.
WATCHED_QUEUES = (keys.GENERATE_INTERACTIVE_QUEUE, keys.GENERATE_QUEUE, keys.VERIFY_QUEUE)


class Overloaded(RequestError):
    status_code = 503
    type = "service_unavailable"

    def __init__(self, message: str, *, code: str, retry_after_s: int) -> None:
        super().__init__(message, code=code)
        self.headers: dict[str, str] = {"retry-after": str(retry_after_s)}


def queue_backlog(client: redis.Redis) -> tuple[int, float]:
    """(rounds waiting, seconds the oldest has waited) over the watched queues, in one round trip."""
    queue_keys = [Queue(name, connection=client).key for name in WATCHED_QUEUES]
    with client.pipeline(transaction=False) as pipe:
        for key in queue_keys:
            pipe.llen(key)
            pipe.lindex(key, 0)  # RQ appends at the tail and takes from the head: the head is the oldest
        replies = pipe.execute()
    depth = sum(replies[0::2])
    heads = [head.decode() for head in replies[1::2] if head]
    oldest = 0.0
    if heads:
        with client.pipeline(transaction=False) as pipe:
            for job_id in heads:
                pipe.hget(f"rq:job:{job_id}", "enqueued_at")
            stamps = [stamp for stamp in pipe.execute() if stamp]
        now = time.time()
        for stamp in stamps:
            oldest = max(oldest, now - utcparse(stamp.decode()).timestamp())
    return depth, oldest


def admit(client: redis.Redis, settings: AdmissionSettings) -> None:
    """Nothing, or a 503 with `retry-after` naming the signal that is over its limit."""
    if not settings.max_queued_rounds and not settings.max_queue_age_s:
        return
    depth, oldest_s = queue_backlog(client)
    if settings.max_queued_rounds and depth > settings.max_queued_rounds:
        raise Overloaded(
            f"{depth} rounds are waiting (more than OPROVER_ADMISSION_MAX_QUEUED_ROUNDS={settings.max_queued_rounds}); "
            "jobs already accepted go on; submit again later",
            code="queue_full",
            retry_after_s=settings.retry_after_s,
        )
    if settings.max_queue_age_s and oldest_s > settings.max_queue_age_s:
        raise Overloaded(
            f"the oldest waiting round has waited {oldest_s:.0f} s (more than OPROVER_ADMISSION_MAX_QUEUE_AGE_S="
            f"{settings.max_queue_age_s:g}); jobs already accepted go on; submit again later",
            code="queue_too_old",
            retry_after_s=settings.retry_after_s,
        )
