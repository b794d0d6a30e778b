"""Idempotent submission: a retried POST with the same `Idempotency-Key` gets the jobs the first one created.

A client that times out, or gets a 503 from a proxy after the gateway had already created its job, retries; without
this the retry starts a second job burning GPU time. The record lives in Redis (services/keys.py `IDEMPOTENCY`),
scoped by owner (one key's Idempotency-Keys never collide with another's) and by route, and is claimed with
SET NX: of two concurrent retries exactly one creates; the other gets a 409 asking it to retry in a second.

The record also holds a fingerprint of the body: the same Idempotency-Key with a different body is a client bug
(a reused key), answered 422 naming the header rather than silently returning a job for another request.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import redis

from services import keys
from services.errors import RequestError

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
# How long a concurrent retry is told to wait while the first request is still creating its jobs.
IN_PROGRESS_RETRY_S = 1


class IdempotencyInProgress(RequestError):
    status_code = 409
    type = "conflict_error"
    headers: ClassVar[dict[str, str]] = {"retry-after": str(IN_PROGRESS_RETRY_S)}


class IdempotencyKeyReused(RequestError):
    status_code = 422
    type = "invalid_request_error"


@dataclass(frozen=True)
class Outcome:
    job_ids: list[str]
    replayed: bool  # True: these jobs were created by an earlier request with the same key


def replayed_headers(outcome: Outcome) -> dict[str, str]:
    """The response header that tells a client its jobs are the ones an earlier request created."""
    return {"idempotent-replayed": "true"} if outcome.replayed else {}


def check_header(value: str) -> str:
    if not value or len(value) > MAX_KEY_CHARS or not value.isascii() or not value.isprintable():
        raise RequestError(
            f"{HEADER} must be 1-{MAX_KEY_CHARS} printable ASCII characters", param=HEADER, code="invalid_value"
        )
    return value


def once(
    client: redis.Redis,
    *,
    owner: str | None,
    route: str,
    idempotency_key: str | None,
    body: bytes,
    ttl_s: int,
    create: Callable[[], list[str]],
) -> Outcome:
    """Run `create` (which returns the job ids it made) at most once per (owner, route, Idempotency-Key).

    Without a key, `create` just runs. A `create` that raises releases the claim, so a retry after a failed or
    invalid request is not stuck with it."""
    if idempotency_key is None:
        return Outcome(create(), replayed=False)
    check_header(idempotency_key)
    # The key is the client's; hash it so no client-chosen text reaches a Redis key name.
    record_key = keys.idempotency_key(owner or "open", route, hashlib.sha256(idempotency_key.encode()).hexdigest()[:32])
    fingerprint = hashlib.sha256(route.encode() + b"\0" + body).hexdigest()
    claimed = client.set(record_key, json.dumps({"fingerprint": fingerprint, "job_ids": None}), nx=True, ex=ttl_s)
    if not claimed:
        return Outcome(_earlier(client, record_key, fingerprint), replayed=True)
    try:
        job_ids = create()
    except BaseException:
        client.delete(record_key)
        raise
    client.set(record_key, json.dumps({"fingerprint": fingerprint, "job_ids": job_ids}), ex=ttl_s)
    return Outcome(job_ids, replayed=False)


def _earlier(client: redis.Redis, record_key: str, fingerprint: str) -> list[str]:
    raw = client.get(record_key)
    if raw is None:  # the first request failed and released its claim between our SET and GET
        raise IdempotencyInProgress(
            f"the request with this {HEADER} has just failed; retry it", param=HEADER, code="idempotency_retry"
        )
    record = json.loads(raw)
    if record["fingerprint"] != fingerprint:
        raise IdempotencyKeyReused(
            f"this {HEADER} was already used for a different request body; use a new key for a new request",
            param=HEADER,
            code="idempotency_key_reused",
        )
    if record["job_ids"] is None:
        raise IdempotencyInProgress(
            f"a request with this {HEADER} is still being processed; retry in {IN_PROGRESS_RETRY_S} s",
            param=HEADER,
            code="idempotency_in_progress",
        )
    return list(record["job_ids"])
