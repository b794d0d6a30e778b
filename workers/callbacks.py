"""Callback delivery: a finished job that carries a `callback_url` is POSTed there, signed, until it lands.

The job store schedules a delivery in the same atomic step that ends a job (services/store.py): every end is
delivered, once, whichever way it came (proved, failed, cancelled, error). Delivery runs apart from the job
— in the gateway's event loop, as one background task — so a slow or dead receiver never holds up proving.

    due set (keys.CALLBACKS_DUE)   job id -> when its next delivery may start
    claim                          move due ids' scores past a lease, atomically: one deliverer per job at a
                                   time, even with several gateways; a deliverer that dies mid-POST lets its
                                   lease run out and the job is delivered again
    POST                           the job object as JSON; `X-Oprover-Signature: sha256=<hex>` is the
                                   HMAC-SHA256 of the exact body bytes with OPROVER_CALLBACK_SECRET
    2xx                            done (event `callback.delivered`)
    anything else                  retried after backoff_base_s x 2^(n-1) (capped), up to max_attempts, then
                                   given up (event `callback.failed`)

Receivers should treat deliveries as at-least-once (a lease can run out while a slow receiver is still
answering) and use the job id to ignore repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
import redis.asyncio
import redis.exceptions

from services import keys
from services.errors import NotFound
from services.settings import CallbackSettings
from services.store import JobStore

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Oprover-Signature"
# Deliveries claimed per pass: a burst of finished jobs goes out concurrently, in slices this big.
_BATCH = 32

# Lua: the due job ids (score <= now), each moved to the end of its lease. KEYS: due. ARGV: now, lease end, limit.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id) end
return ids
"""


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: what a receiver recomputes from the raw body to trust it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff_s(settings: CallbackSettings, attempt: int) -> float:
    return float(min(settings.backoff_max_s, settings.backoff_base_s * (2 ** (attempt - 1))))


class CallbackDelivery:
    def __init__(self, aredis: redis.asyncio.Redis, store: JobStore, settings: CallbackSettings) -> None:
        self.aredis = aredis
        self.store = store
        self.settings = settings
        self._claim = aredis.register_script(_CLAIM)
        self._http = httpx.AsyncClient(timeout=settings.timeout_s, follow_redirects=False)
        self._task: asyncio.Task[None] | None = None

    # --- the background task ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="callback-delivery")

    async def stop(self) -> None:
        """Stop delivering; a POST cut off here is delivered again once its lease runs out."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                delivered = await self.deliver_due()
            except redis.exceptions.RedisError as exc:
                logger.warning("callback delivery: Redis unavailable (%s); retrying", exc)
                delivered = 0
            except Exception:  # the loop must outlive anything, or no callback is ever sent again
                logger.exception("callback delivery: unexpected error; carrying on")
                delivered = 0
            if delivered < _BATCH:
                await asyncio.sleep(self.settings.poll_interval_s)

    # --- one pass ---------------------------------------------------------------------------------------------------
    async def deliver_due(self) -> int:
        """Claim the deliveries due now and make them, concurrently; returns how many were claimed."""
        now = time.time()
        lease_end = now + 2 * self.settings.timeout_s + 5
        raw = await self._claim(keys=[keys.CALLBACKS_DUE], args=[now, lease_end, _BATCH])
        job_ids = [item.decode() if isinstance(item, bytes) else str(item) for item in raw]
        if job_ids:
            await asyncio.gather(*(self._deliver(job_id) for job_id in job_ids))
        return len(job_ids)

    async def _deliver(self, job_id: str) -> None:
        attempt = int(await self.aredis.hincrby(keys.CALLBACK_ATTEMPTS, job_id, 1))
        try:
            job = await asyncio.to_thread(self.store.get, job_id)
        except NotFound:
            logger.info("job %s: expired before its callback was delivered; dropped", job_id)
            await self._forget(job_id)
            return
        url = job.get("callback_url")
        error = await self._post(job_id, url, job, attempt) if url else "the job has no callback_url"
        if error is None:
            await self._forget(job_id)
            await asyncio.to_thread(self.store.event, job_id, "callback.delivered", {"attempts": attempt})
            logger.info("job %s: callback delivered to %s (attempt %d)", job_id, url, attempt)
        elif attempt >= self.settings.max_attempts or url is None:
            await self._forget(job_id)
            await asyncio.to_thread(self.store.event, job_id, "callback.failed", {"attempts": attempt, "error": error})
            logger.warning("job %s: callback to %s given up after %d attempts: %s", job_id, url, attempt, error)
        else:
            wait = backoff_s(self.settings, attempt)
            await self.aredis.zadd(keys.CALLBACKS_DUE, {job_id: time.time() + wait}, xx=True)
            logger.info(
                "job %s: callback to %s failed (%s); attempt %d in %.1f s", job_id, url, error, attempt + 1, wait
            )

    async def _post(self, job_id: str, url: str, job: dict[str, Any], attempt: int) -> str | None:
        """One delivery; None when the receiver took it (2xx), else what went wrong."""
        if not self.settings.secret:
            return "OPROVER_CALLBACK_SECRET is not set, so the delivery cannot be signed"
        body = json.dumps(job, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "oprover-serve-callback",
            SIGNATURE_HEADER: sign(self.settings.secret, body),
            "X-Oprover-Job-Id": job_id,
            "X-Oprover-Delivery-Attempt": str(attempt),
        }
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def _forget(self, job_id: str) -> None:
        async with self.aredis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.CALLBACKS_DUE, job_id)
            pipe.hdel(keys.CALLBACK_ATTEMPTS, job_id)
            await pipe.execute()
