"""Per-key quotas: requests per minute, unfinished jobs, and generated tokens per UTC day.

Counted in Redis (services/keys.py `QUOTA_*`), each check one atomic command or Lua script, so every gateway
replica shares the same counts and two concurrent requests cannot both take the last unit. A refusal is a 429 whose
`code` and message name the limit that was hit (and its setting), with `retry-after` saying when to try again.
A limit of 0 is off. The key is known only by its owner id (api/tenancy.py); an open API counts as one owner.

- requests per minute: a counter per clock minute, counted on every authenticated /v1 request;
- jobs in flight: a sorted set of the owner's admitted jobs; an admission first prunes the ones that ended, then
  admits the new job ids only if they fit. Ids are reserved before their jobs exist, so a just-reserved id whose
  job is not written yet is kept for `_RESERVATION_GRACE_S`;
- daily tokens: the workers add each generation's completion tokens to the owner's counter of the day
  (services/store.py); a new job is refused once the day's budget is spent (jobs already running go on).
"""

from __future__ import annotations

import time

import redis

from services import keys
from services.errors import RequestError
from services.settings import QuotaSettings
from services.store import utc_day

# Seconds a reserved job id counts as in flight before its job record exists (creation takes milliseconds).
_RESERVATION_GRACE_S = 60
# A client over its in-flight limit is told to look again after this long: jobs take seconds to hours.
_IN_FLIGHT_RETRY_S = 30

# KEYS: the owner's live-jobs set. ARGV: now, limit, grace, job key prefix, job key suffix, ttl, then the new ids.
# Returns -1 when admitted, else how many jobs are in flight.
_ADMIT_JOBS = """
local now = tonumber(ARGV[1])
local live = 0
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local status = redis.call('HGET', ARGV[4] .. members[i] .. ARGV[5], 'status')
  local ended = status == 'proved' or status == 'failed' or status == 'cancelled' or status == 'error'
  if ended or (not status and tonumber(members[i + 1]) < now - tonumber(ARGV[3])) then
    redis.call('ZREM', KEYS[1], members[i])
  else
    live = live + 1
  end
end
if live + (#ARGV - 6) > tonumber(ARGV[2]) then return live end
for i = 7, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
return -1
"""


class QuotaExceeded(RequestError):
    status_code = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, code: str, retry_after_s: int) -> None:
        super().__init__(message, code=code)
        self.headers: dict[str, str] = {"retry-after": str(max(1, retry_after_s))}


class Quotas:
    def __init__(self, client: redis.Redis, settings: QuotaSettings) -> None:
        self.redis = client
        self.settings = settings
        self._admit_jobs = client.register_script(_ADMIT_JOBS)

    def count_request(self, owner: str | None) -> None:
        limit = self.settings.requests_per_minute
        if not limit:
            return
        now = time.time()
        minute = int(now // 60)
        key = keys.quota_requests_key(owner or "open", minute)
        with self.redis.pipeline() as pipe:  # MULTI: the count and its expiry together
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = pipe.execute()
        if count > limit:
            raise QuotaExceeded(
                f"this key sent more than {limit} requests this minute (OPROVER_QUOTA_REQUESTS_PER_MINUTE)",
                code="requests_per_minute",
                retry_after_s=int((minute + 1) * 60 - now) + 1,
            )

    def admit_jobs(self, owner: str | None, job_ids: list[str]) -> None:
        """Reserve `job_ids` against the owner's limits, or a 429 naming the limit; all of them or none."""
        owner = owner or "open"
        self._check_tokens(owner)
        limit = self.settings.jobs_in_flight
        if not limit:
            return
        if len(job_ids) > limit:
            raise QuotaExceeded(
                f"{len(job_ids)} jobs at once exceed this key's {limit} jobs in flight (OPROVER_QUOTA_JOBS_IN_FLIGHT)",
                code="jobs_in_flight",
                retry_after_s=_IN_FLIGHT_RETRY_S,
            )
        head, _, tail = keys.job_key("\0").partition("\0")
        live = self._admit_jobs(
            keys=[keys.quota_live_jobs_key(owner)],
            args=[time.time(), limit, _RESERVATION_GRACE_S, head, tail, keys.ACTIVE_JOB_TTL_S, *job_ids],
        )
        if live != -1:
            raise QuotaExceeded(
                f"this key has {live} unfinished jobs; {limit} may be in flight at once (OPROVER_QUOTA_JOBS_IN_FLIGHT)",
                code="jobs_in_flight",
                retry_after_s=_IN_FLIGHT_RETRY_S,
            )

    def release_jobs(self, owner: str | None, job_ids: list[str]) -> None:
        """Give back reservations whose jobs were never created."""
        if self.settings.jobs_in_flight and job_ids:
            self.redis.zrem(keys.quota_live_jobs_key(owner or "open"), *job_ids)

    def _check_tokens(self, owner: str) -> None:
        budget = self.settings.daily_tokens
        if not budget:
            return
        now = time.time()
        spent = int(self.redis.get(keys.quota_tokens_key(owner, utc_day(now))) or 0)
        if spent >= budget:
            raise QuotaExceeded(
                f"this key generated {spent} tokens today (UTC); the daily budget is {budget} "
                "(OPROVER_QUOTA_DAILY_TOKENS)",
                code="daily_tokens",
                retry_after_s=int(86400 - now % 86400) + 1,
            )
