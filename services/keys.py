"""Every Redis key shape and lifetime of oprover-serve, in one place.

RQ keeps its own keys under `rq:`; ours live under `oprover:`. A proof job's keys all carry its id in
braces (`{id}`) so that, on Redis Cluster, one job's keys share a hash slot and its Lua scripts stay legal.
"""

from __future__ import annotations

PREFIX = "oprover"

# --- per proof job ------------------------------------------------------------------------------------------
# Hash: status, request (JSON), proof, error, timestamps, chain bookkeeping.
JOB = PREFIX + ":job:{{{job_id}}}"
# Hash: "chain:round" -> attempt JSON (code, verdict, feedback, usage, timings ...).
ATTEMPTS = PREFIX + ":job:{{{job_id}}}:attempts"
# Stream: one entry per state change; SSE clients resume with Last-Event-ID = the entry id.
EVENTS = PREFIX + ":job:{{{job_id}}}:events"

# --- verify requests (POST /v1/verify) ---------------------------------------------------------------------
# List: the JSON result of a one-off verification, pushed by the verify worker, BLPOPped by the gateway.
VERIFY_RESULT = PREFIX + ":verify:{request_id}"

# --- callbacks (POST of a finished job to its callback_url) -------------------------------------------------------
# Sorted set: job id -> when its next delivery is due (epoch seconds; 0 = now). A job enters it in the same Lua
# step that ends it; a delivery claims it by pushing its score past a lease, and removes it once done or given up.
# (Not in the job's hash slot: on Redis Cluster the scripts that end a job would need it there.)
CALLBACKS_DUE = PREFIX + ":callbacks:due"
# Hash: job id -> deliveries tried so far.
CALLBACK_ATTEMPTS = PREFIX + ":callbacks:attempts"

# --- idempotent submission (api/idempotency.py) -----------------------------------------------------------------
# String (JSON): {"fingerprint", "job_ids"} of one `Idempotency-Key` of one owner (the key's hash, never the key)
# on one route. Written with SET NX, so of two concurrent retries exactly one creates jobs; `job_ids` is null while
# that one is still creating them. Lives `ApiSettings.idempotency_ttl_s` (a day by default: clients retry within
# minutes, and a day also covers a client restarted after an outage).
IDEMPOTENCY = PREFIX + ":idempotency:{owner}:{route}:{key_hash}"

# --- per-key quotas (api/quotas.py); `owner` is the key's hash (api/tenancy.py), never the key ---------------------
# String counter: requests of one owner in one clock minute (epoch minute); expires after two minutes.
QUOTA_REQUESTS = PREFIX + ":quota:{owner}:requests:{minute}"
# Sorted set: the owner's jobs counted as in flight, scored by when each was admitted; ended or vanished jobs are
# pruned at the next admission. Kept while jobs can be alive (ACTIVE_JOB_TTL_S), refreshed on every admission.
QUOTA_LIVE_JOBS = PREFIX + ":quota:{owner}:live"
# String counter: completion tokens the owner's jobs generated on one UTC day (YYYYMMDD), added by the workers
# in the same step that records an attempt's usage; kept two days.
QUOTA_TOKENS = PREFIX + ":quota:{owner}:tokens:{day}"
QUOTA_TOKENS_TTL_S = 2 * 24 * 3600

# --- workers -------------------------------------------------------------------------------------------------
# String (JSON): what a verify worker serves (Lean, Mathlib, repl revisions), refreshed while it lives.
LEAN_WORKER = PREFIX + ":lean-worker:{name}"
# Sorted set: live verify worker names, scored by when their record expires (services/lean_workers.py).
LEAN_WORKERS = PREFIX + ":lean-workers"

# --- lifetimes (seconds) ---------------------------------------------------------------------------------------
# A finished job's lifetime is a setting: ProveSettings.job_ttl_s (services/settings.py).
# An unfinished job's keys carry a long safety TTL so a job orphaned by a lost Redis write cannot live forever;
# it is far above any round's timeout times the largest rounds x attempts.
ACTIVE_JOB_TTL_S = 3 * 24 * 3600
# Events: bounded length so a very long job cannot grow its stream without limit (approximate trim).
EVENTS_MAXLEN = 10_000
# A /v1/verify result is read by the waiting gateway within its timeout; an hour covers retries of slow clients.
VERIFY_RESULT_TTL_S = 3600
# A verify worker re-announces itself more often than this; a dead one disappears from /readyz afterwards.
LEAN_WORKER_TTL_S = 60

# --- RQ queue names --------------------------------------------------------------------------------------------
GENERATE_QUEUE = "generate"
# Rounds of interactive jobs (chat, `?wait=`): generate workers take this queue before `generate`, so a person
# waiting is not queued behind another key's 10,000-problem batch (api/cli.py builds the worker's queue list).
GENERATE_INTERACTIVE_QUEUE = "generate-interactive"
VERIFY_QUEUE = "verify"  # the deployment's default Lean version; others are "verify-<version>"
MEMORY_QUEUE = "memory"


def job_key(job_id: str) -> str:
    return JOB.format(job_id=job_id)


def attempts_key(job_id: str) -> str:
    return ATTEMPTS.format(job_id=job_id)


def events_key(job_id: str) -> str:
    return EVENTS.format(job_id=job_id)


def verify_result_key(request_id: str) -> str:
    return VERIFY_RESULT.format(request_id=request_id)


def idempotency_key(owner: str, route: str, key_hash: str) -> str:
    return IDEMPOTENCY.format(owner=owner, route=route, key_hash=key_hash)


def quota_requests_key(owner: str, minute: int) -> str:
    return QUOTA_REQUESTS.format(owner=owner, minute=minute)


def quota_live_jobs_key(owner: str) -> str:
    return QUOTA_LIVE_JOBS.format(owner=owner)


def quota_tokens_key(owner: str, day: str) -> str:
    return QUOTA_TOKENS.format(owner=owner, day=day)


def lean_worker_key(name: str) -> str:
    return LEAN_WORKER.format(name=name)


def verify_queue(lean_version: str | None, default_version: str) -> str:
    """Verify jobs route to one queue per Lean version; the deployment's default keeps the plain name."""
    if not lean_version or lean_version == default_version:
        return VERIFY_QUEUE
    return versioned_verify_queue(lean_version)


def versioned_verify_queue(lean_version: str) -> str:
    """The queue of one Lean version, e.g. `verify-v4.15.0`: every verify worker serves its own version's."""
    return f"{VERIFY_QUEUE}-{lean_version}"


def rq_job_id(job_id: str, chain: int, round_: int, stage: str) -> str:
    """Deterministic RQ job id of one stage of one round, e.g. `prf_ab12-c0-r2-gen`.

    RQ 3 accepts only letters, digits, `_` and `-` in job ids, so not a colon-separated `{job}:{chain}:{round}:gen`.
    """
    return f"{job_id}-c{chain}-r{round_}-{stage}"
