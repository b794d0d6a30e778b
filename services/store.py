"""The proof-job store: job records, attempts, status transitions and event streams in Redis.

A job moves `queued → running → proved | failed | cancelled | error`. Each terminal transition is a Lua
script that succeeds only if the job is not already terminal, so the first chain to pass wins, a late
verdict cannot overwrite a cancellation, and exactly one event announces the end. Every transition appends
an event to the job's stream (Redis Streams), which the gateway turns into resumable Server-Sent Events.

Workers use the synchronous `JobStore`; the gateway calls it through a thread pool, except for blocking
event reads, which use `read_events_async` on the asyncio Redis client.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
import redis.asyncio

from services import keys
from services.domain import TERMINAL_STATUSES, JobStatus, RetrievedProof
from services.errors import NotFound
from services.settings import DEFAULT_JOB_TTL_S

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """What was asked: the validated request, as the workers read it."""

    formal_statement: str
    header: str
    rounds: int
    attempts: int
    top_k: int
    temperature: float
    top_p: float
    max_tokens: int
    informal_statement: str | None = None
    prompt_profile: str | None = None
    lean_version: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    user: str | None = None  # the end user the client named (OpenAI's `user`), kept for the client's records
    callback_url: str | None = None  # the finished job is POSTed there once (workers/callbacks.py)
    # Never retrieved into this job's prompts (the request's `exclude`): statements by body hash
    # (services.memory.body_hash) and problem names, e.g. a whole benchmark while `oprover eval` runs it.
    exclude_hashes: list[str] = field(default_factory=list)
    exclude_names: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> JobSpec:
        """A stored spec; fields added later take their defaults, and fields this version does not know (written
        by a newer gateway during a rolling upgrade) are left out rather than failing every step of the job."""
        stored = json.loads(raw)
        return cls(**{name: value for name, value in stored.items() if name in _SPEC_FIELDS})


_SPEC_FIELDS = frozenset(JobSpec.__dataclass_fields__)


@dataclass(frozen=True)
class RoundState:
    """What one step of a round (chain, round) reads of its job before it works: `JobStore.round_state`."""

    status: JobStatus | None  # None: the job is gone (expired)
    spec: JobSpec | None
    interactive: bool  # someone waits: its rounds go to the priority queue (workers/dispatch.py)
    retrieved: list[RetrievedProof] | None  # None: not searched yet
    proved_by: tuple[int, int] | None  # (chain, round) of the proof, once proved
    attempt: dict[str, Any] | None  # this round's attempt, once generated
    previous: dict[str, Any] | None  # the chain's previous round's attempt (round > 1)

    @property
    def finished(self) -> bool:
        """Terminal or gone: the cooperative cancellation flag every step checks first."""
        return self.status is None or self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class Event:
    id: str  # the stream entry id, usable as Last-Event-ID
    type: str
    data: dict[str, Any]


def new_job_id() -> str:
    return "prf_" + secrets.token_hex(12)


def utc_day(now: float | None = None) -> str:
    """The UTC day a daily quota counts in, as YYYYMMDD."""
    return time.strftime("%Y%m%d", time.gmtime(time.time() if now is None else now))


# Lua, shared by the scripts that end a job: a job with a callback URL gets its delivery scheduled in the same
# atomic step that makes it terminal, so every end is delivered once and no end is missed (workers/callbacks.py).
_SCHEDULE_CALLBACK = """
if redis.call('HEXISTS', KEYS[1], 'callback_url') == 1 then
  redis.call('ZADD', KEYS[4], 'NX', 0, redis.call('HGET', KEYS[1], 'id'))
end
"""

# Lua: return 0 when the job's status (in `status`) is terminal; written from TERMINAL_STATUSES, the one list.
_RETURN_IF_TERMINAL = (
    "if " + " or ".join(f"status == '{status.value}'" for status in sorted(TERMINAL_STATUSES)) + " then return 0 end\n"
)

# Lua: set a terminal status unless the job already has one. KEYS: job, events, attempts, callbacks due.
# ARGV: status, event type, event data (JSON), ttl, events maxlen, then field/value pairs for the job hash.
_FINISH = (
    """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
"""
    + _RETURN_IF_TERMINAL
    + """redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'type', ARGV[2], 'data', ARGV[3])
local ttl = tonumber(ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
"""
    + _SCHEDULE_CALLBACK
    + """
return 1
"""
)

# Lua: queued → running (first round started). KEYS: job, events. ARGV: now, event data.
_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'job.running', 'data', ARGV[2])
return 1
"""

# Lua: one chain ended without a proof; the last one to end fails the job. A chain ends once: a retried or
# duplicated last round cannot count it twice. KEYS: job, events, attempts, callbacks due.
# ARGV: now, ttl, event data for job.failed, maxlen, chain.
_CHAIN_ENDED = (
    """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
"""
    + _RETURN_IF_TERMINAL
    + """if redis.call('HSETNX', KEYS[1], 'chain_ended:' .. ARGV[5], '1') == 0 then return 0 end
local live = redis.call('HINCRBY', KEYS[1], 'chains_live', -1)
if live > 0 then return 1 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'job.failed', 'data', ARGV[3])
local ttl = tonumber(ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
"""
    + _SCHEDULE_CALLBACK
    + """
return 2
"""
)


# Lua: write one attempt of an existing job, keeping the job's lifetime (a late write to an expired job must not
# recreate it without a TTL). KEYS: job, attempts, events. ARGV: field, attempt JSON, event type, event data,
# maxlen, then prompt and completion tokens when the attempt spent a generation, and the two halves of the owner's
# daily token counter name around the owner id plus its TTL (the per-key daily budget, api/quotas.py). That counter
# is named from the job's owner field, which only the script reads: fine on one Redis; on Redis Cluster it would
# need the owner's slot. Returns the job's status after the write (0: no such job), so the step that wrote the
# attempt learns whether the job ended meanwhile without another round trip.
_PUT_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if ARGV[6] then
  redis.call('HINCRBY', KEYS[1], 'generations', 1)
  redis.call('HINCRBY', KEYS[1], 'prompt_tokens', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'completion_tokens', ARGV[7])
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then
    local spent = ARGV[8] .. owner .. ARGV[9]
    redis.call('INCRBY', spent, ARGV[7])
    redis.call('EXPIRE', spent, ARGV[10])
  end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'type', ARGV[3], 'data', ARGV[4])
return redis.call('HGET', KEYS[1], 'status')
"""


class JobStore:
    def __init__(self, client: redis.Redis, *, job_ttl_s: int = DEFAULT_JOB_TTL_S) -> None:
        self.redis = client
        self.job_ttl_s = job_ttl_s
        self._finish = client.register_script(_FINISH)
        self._start = client.register_script(_START)
        self._chain_ended = client.register_script(_CHAIN_ENDED)
        self._put_attempt = client.register_script(_PUT_ATTEMPT)

    # --- creation and reading ----------------------------------------------------------------------------
    def create(
        self, spec: JobSpec, *, job_id: str | None = None, owner: str | None = None, interactive: bool = False
    ) -> str:
        """`owner` is the creating key's owner id (api/tenancy.py), a hash: the key itself is never stored.
        `interactive`: someone waits for the answer; its rounds go to the priority queue (workers/dispatch.py)."""
        job_id = job_id or new_job_id()
        now = time.time()
        with self.redis.pipeline() as pipe:
            pipe.hset(
                keys.job_key(job_id),
                mapping={
                    "id": job_id,
                    "status": JobStatus.QUEUED.value,
                    "spec": spec.to_json(),
                    "created_at": repr(now),
                    "chains_live": spec.attempts,
                    "generations": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    **({"callback_url": spec.callback_url} if spec.callback_url else {}),
                    **({"owner": owner} if owner else {}),
                    **({"priority": "interactive"} if interactive else {}),
                },
            )
            pipe.expire(keys.job_key(job_id), keys.ACTIVE_JOB_TTL_S)
            self._event(pipe, job_id, "job.created", {"status": "queued"})
            pipe.expire(keys.events_key(job_id), keys.ACTIVE_JOB_TTL_S)
            pipe.execute()
        logger.info("job %s: created (%d chains x %d rounds)", job_id, spec.attempts, spec.rounds)
        return job_id

    def spec(self, job_id: str) -> JobSpec:
        raw = self.redis.hget(keys.job_key(job_id), "spec")
        if raw is None:
            raise NotFound(f"no proof job {job_id!r} (unknown or expired)", param="id")
        return JobSpec.from_json(raw)

    def owner(self, job_id: str) -> str | None:
        """The owner id the job was created under (None: created on an open API); a 404 for an unknown job."""
        with self.redis.pipeline() as pipe:
            pipe.exists(keys.job_key(job_id))
            pipe.hget(keys.job_key(job_id), "owner")
            exists, owner = pipe.execute()
        if not exists:
            raise NotFound(f"no proof job {job_id!r} (unknown or expired)", param="id")
        return _text(owner) if owner is not None else None

    def status(self, job_id: str) -> JobStatus | None:
        raw = self.redis.hget(keys.job_key(job_id), "status")
        return JobStatus(raw.decode() if isinstance(raw, bytes) else raw) if raw is not None else None

    def is_finished(self, job_id: str) -> bool:
        """True once the job is terminal (or gone): the cooperative cancellation flag every round checks."""
        status = self.status(job_id)
        return status is None or status in TERMINAL_STATUSES

    def get(self, job_id: str) -> dict[str, Any]:
        """The job object `GET /v1/jobs/{id}` returns (README, "HTTP API")."""
        with self.redis.pipeline() as pipe:
            pipe.hgetall(keys.job_key(job_id))
            pipe.hgetall(keys.attempts_key(job_id))
            record, attempts_raw = pipe.execute()
        if not record:
            raise NotFound(f"no proof job {job_id!r} (unknown or expired)", param="id")
        rec = {_text(k): _text(v) for k, v in record.items()}
        spec = JobSpec.from_json(rec["spec"])
        attempts = sorted((json.loads(v) for v in attempts_raw.values()), key=lambda a: (a["chain"], a["round"]))
        return {
            "id": rec["id"],
            "object": "proof_job",
            "status": rec["status"],
            "formal_statement": spec.formal_statement,
            "header": spec.header,
            "proof": rec.get("proof"),
            "proved_by": json.loads(rec["proved_by"]) if rec.get("proved_by") else None,
            "attempts": attempts,
            "usage": {
                "generations": int(rec.get("generations", 0)),
                "prompt_tokens": int(rec.get("prompt_tokens", 0)),
                "completion_tokens": int(rec.get("completion_tokens", 0)),
            },
            "config": {
                "rounds": spec.rounds,
                "attempts": spec.attempts,
                "top_k": spec.top_k,
                "prompt_profile": spec.prompt_profile,
                "lean_version": spec.lean_version,
                "sampling": {
                    "temperature": spec.temperature,
                    "top_p": spec.top_p,
                    "max_tokens": spec.max_tokens,
                },
            },
            "lean": json.loads(rec["lean"]) if rec.get("lean") else None,
            "metadata": spec.metadata,
            "user": spec.user,
            "callback_url": spec.callback_url,
            "created_at": float(rec["created_at"]),
            "started_at": float(rec["started_at"]) if rec.get("started_at") else None,
            "finished_at": float(rec["finished_at"]) if rec.get("finished_at") else None,
            "error": rec.get("error"),
        }

    def round_state(self, job_id: str, chain: int, round_: int) -> RoundState:
        """Everything a round's step reads before it works, in one round trip (each read was one before)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.job_key(job_id), ["status", "spec", "priority", "retrieved", "proved_by"])
            pipe.hmget(keys.attempts_key(job_id), [f"{chain}:{round_}", f"{chain}:{round_ - 1}"])
            (status, spec, priority, retrieved, proved_by), (attempt, previous) = pipe.execute()
        winner = json.loads(proved_by) if proved_by else None
        return RoundState(
            status=JobStatus(_text(status)) if status is not None else None,
            spec=JobSpec.from_json(spec) if spec is not None else None,
            interactive=priority == b"interactive",
            retrieved=None if retrieved is None else [RetrievedProof(**item) for item in json.loads(retrieved)],
            proved_by=(winner["chain"], winner["round"]) if winner else None,
            attempt=json.loads(attempt) if attempt else None,
            previous=json.loads(previous) if previous and round_ > 1 else None,
        )

    # --- attempts ------------------------------------------------------------------------------------------
    def attempt(self, job_id: str, chain: int, round_: int) -> dict[str, Any] | None:
        raw = self.redis.hget(keys.attempts_key(job_id), f"{chain}:{round_}")
        return json.loads(raw) if raw else None

    def put_attempt(
        self, job_id: str, attempt: dict[str, Any], *, event: str, usage: dict[str, int] | None = None
    ) -> JobStatus | None:
        """Write (or rewrite) one attempt and announce it; returns the job's status after the write, None if the
        job no longer exists (a step reads there whether the job ended meanwhile, in the same round trip).

        Only one stage owns an attempt at a time (generate writes it, then verify completes it).
        """
        chain, round_ = attempt["chain"], attempt["round"]
        summary = {k: attempt.get(k) for k in ("chain", "round", "verdict")}
        args: list[Any] = [
            f"{chain}:{round_}",
            json.dumps(attempt, ensure_ascii=False),
            event,
            json.dumps(summary),
            keys.EVENTS_MAXLEN,
        ]
        if usage is not None:
            args += [int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))]
            head, _, tail = keys.quota_tokens_key("\0", utc_day()).partition("\0")
            args += [head, tail, keys.QUOTA_TOKENS_TTL_S]
        status = self._put_attempt(
            keys=[keys.job_key(job_id), keys.attempts_key(job_id), keys.events_key(job_id)], args=args
        )
        return JobStatus(_text(status)) if status else None

    def retrieved(self, job_id: str) -> list[RetrievedProof] | None:
        raw = self.redis.hget(keys.job_key(job_id), "retrieved")
        return None if raw is None else [RetrievedProof(**item) for item in json.loads(raw)]

    def keep_retrieved(self, job_id: str, proofs: list[RetrievedProof]) -> list[RetrievedProof]:
        """Fix the job's retrieved proofs once: every chain and round shows the same ones (a stable prompt
        prefix for the server's cache, whatever the memory learns meanwhile). Returns the ones kept first."""
        encoded = json.dumps([asdict(proof) for proof in proofs], ensure_ascii=False)
        if self.redis.hsetnx(keys.job_key(job_id), "retrieved", encoded):
            return proofs
        return self.retrieved(job_id) or []

    def proved_by(self, job_id: str) -> tuple[int, int] | None:
        raw = self.redis.hget(keys.job_key(job_id), "proved_by")
        if not raw:
            return None
        winner = json.loads(raw)
        return winner["chain"], winner["round"]

    def set_lean(self, job_id: str, versions: dict[str, str]) -> None:
        self.redis.hset(keys.job_key(job_id), "lean", json.dumps(versions))

    # --- transitions ---------------------------------------------------------------------------------------
    def mark_running(self, job_id: str) -> bool:
        return bool(
            self._start(
                keys=[keys.job_key(job_id), keys.events_key(job_id)],
                args=[repr(time.time()), json.dumps({"status": "running"}), keys.EVENTS_MAXLEN],
            )
        )

    def finish_proved(self, job_id: str, *, chain: int, round_: int, proof: str) -> bool:
        return self._terminal(
            job_id,
            JobStatus.PROVED,
            {"chain": chain, "round": round_},
            proof=proof,
            proved_by=json.dumps({"chain": chain, "round": round_}),
        )

    def cancel(self, job_id: str) -> bool:
        return self._terminal(job_id, JobStatus.CANCELLED, {})

    def fail_with_error(self, job_id: str, error: str) -> bool:
        return self._terminal(job_id, JobStatus.ERROR, {"error": error}, error=error)

    def chain_ended(self, job_id: str, chain: int) -> bool:
        """Record that `chain` is exhausted; returns True if that made the whole job `failed`."""
        result = self._chain_ended(
            keys=[keys.job_key(job_id), keys.events_key(job_id), keys.attempts_key(job_id), keys.CALLBACKS_DUE],
            args=[repr(time.time()), self.job_ttl_s, json.dumps({"status": "failed"}), keys.EVENTS_MAXLEN, chain],
        )
        if result == 2:
            logger.info("job %s: failed (every chain exhausted; chain %d was last)", job_id, chain)
        return result == 2

    def _terminal(self, job_id: str, status: JobStatus, data: dict[str, Any], **fields: str) -> bool:
        event = json.dumps({"status": status.value, **data})
        args: list[Any] = [status.value, f"job.{status.value}", event, self.job_ttl_s, keys.EVENTS_MAXLEN]
        args += ["finished_at", repr(time.time())]
        for name, value in fields.items():
            args += [name, value]
        result = self._finish(
            keys=[keys.job_key(job_id), keys.events_key(job_id), keys.attempts_key(job_id), keys.CALLBACKS_DUE],
            args=args,
        )
        if result == -1:
            raise NotFound(f"no proof job {job_id!r} (unknown or expired)", param="id")
        if result == 1:
            logger.info("job %s: %s", job_id, status.value)
        return result == 1

    # --- events ----------------------------------------------------------------------------------------------
    def event(self, job_id: str, type_: str, data: dict[str, Any]) -> None:
        with self.redis.pipeline() as pipe:
            self._event(pipe, job_id, type_, data)
            pipe.execute()

    @staticmethod
    def _event(pipe: Any, job_id: str, type_: str, data: dict[str, Any]) -> None:
        pipe.xadd(
            keys.events_key(job_id),
            {"type": type_, "data": json.dumps(data, ensure_ascii=False)},
            maxlen=keys.EVENTS_MAXLEN,
            approximate=True,
        )


async def read_events_async(client: redis.asyncio.Redis, job_id: str, after: str, *, block_ms: int) -> list[Event]:
    reply = await client.xread({keys.events_key(job_id): after}, block=block_ms, count=1000)
    return _parse_events(reply)


async def pop_verify_result(
    client: redis.asyncio.Redis, request_id: str, timeout_s: float, *, block_s: float
) -> dict[str, Any] | None:
    """The result a verify worker pushed for `request_id`, waiting up to `timeout_s`; None if none came.

    A check may take many minutes, but one BLPOP blocks at most `block_s`: the client's socket timeout is
    built for that block (services/redis_clients.py), so a long wait never ends in a socket timeout while a
    dead Redis is still noticed within one block.
    """
    key = keys.verify_result_key(request_id)
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        # BLPOP takes whole or fractional seconds; 0 would mean "forever".
        reply = await client.blpop([key], timeout=max(0.01, min(remaining, block_s)))
        if reply is not None:
            return json.loads(reply[1])


def _parse_events(reply: Any) -> list[Event]:
    events = []
    for _stream, entries in reply or []:
        for entry_id, fields in entries:
            fields = {_text(k): _text(v) for k, v in fields.items()}
            events.append(Event(id=_text(entry_id), type=fields["type"], data=json.loads(fields["data"])))
    return events


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value
