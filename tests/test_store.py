"""The job store's transitions on a real Redis: exactly one terminal state, announced exactly once."""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis

from services import keys
from services.domain import RetrievedProof
from services.errors import NotFound
from services.store import Event, JobSpec, JobStore, read_events_async


def _spec(attempts: int = 3) -> JobSpec:
    return JobSpec(
        formal_statement="theorem t : 1 = 1 := by",
        header="import Mathlib",
        rounds=2,
        attempts=attempts,
        top_k=0,
        temperature=0.6,
        top_p=0.95,
        max_tokens=64,
    )


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, job_ttl_s=120)


def _events(store: JobStore, job_id: str, after: str = "0-0") -> list[Event]:
    """The job's events as the gateway reads them (read_events_async, its only reader)."""

    async def read() -> list[Event]:
        where = store.redis.connection_pool.connection_kwargs
        client = redis.asyncio.Redis(host=where["host"], port=where["port"], db=where.get("db", 0))
        try:
            return await read_events_async(client, job_id, after, block_ms=1)
        finally:
            await client.aclose()

    return asyncio.run(read())


def _terminal_events(store: JobStore, job_id: str) -> list[str]:
    return [
        e.type for e in _events(store, job_id) if e.type in {"job.proved", "job.failed", "job.cancelled", "job.error"}
    ]


def test_first_proof_wins_and_later_ones_change_nothing(store: JobStore) -> None:
    job_id = store.create(_spec())
    assert store.mark_running(job_id)
    assert not store.mark_running(job_id)
    assert store.finish_proved(job_id, chain=1, round_=2, proof="first")
    assert not store.finish_proved(job_id, chain=0, round_=2, proof="second")
    assert not store.cancel(job_id)
    assert not store.fail_with_error(job_id, "late")
    job = store.get(job_id)
    assert (job["status"], job["proof"], job["proved_by"]) == ("proved", "first", {"chain": 1, "round": 2})
    assert _terminal_events(store, job_id) == ["job.proved"]
    assert 0 < store.redis.ttl(keys.job_key(job_id)) <= 120  # finished: the job TTL, not the long active one


def test_concurrent_winners_produce_one_proof(store: JobStore) -> None:
    job_id = store.create(_spec(attempts=16))
    results: list[bool] = []
    threads = [
        threading.Thread(
            target=lambda c=c: results.append(store.finish_proved(job_id, chain=c, round_=1, proof=f"proof {c}"))
        )
        for c in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    assert _terminal_events(store, job_id) == ["job.proved"]


def test_last_exhausted_chain_fails_the_job(store: JobStore) -> None:
    job_id = store.create(_spec(attempts=3))
    assert not store.chain_ended(job_id, 0)
    assert not store.chain_ended(job_id, 2)
    assert store.status(job_id).value == "queued"
    assert store.chain_ended(job_id, 1)
    assert store.get(job_id)["status"] == "failed"
    assert not store.chain_ended(job_id, 1)  # a duplicate end changes nothing
    assert _terminal_events(store, job_id) == ["job.failed"]


def test_cancel_then_verdicts_do_not_revive_the_job(store: JobStore) -> None:
    job_id = store.create(_spec())
    assert store.cancel(job_id)
    assert store.is_finished(job_id)
    assert not store.finish_proved(job_id, chain=0, round_=1, proof="too late")
    assert store.get(job_id)["status"] == "cancelled" and store.get(job_id)["proof"] is None


def test_a_chain_ends_once_however_often_its_last_round_runs(store: JobStore) -> None:
    job_id = store.create(_spec(attempts=2))
    assert not store.chain_ended(job_id, 0)
    assert not store.chain_ended(job_id, 0)  # a retried last round of chain 0
    assert store.get(job_id)["status"] == "queued"
    assert store.chain_ended(job_id, 1)


def test_a_late_attempt_does_not_resurrect_an_expired_job(store: JobStore) -> None:
    job_id = store.create(_spec())
    store.redis.delete(keys.job_key(job_id))
    written = store.put_attempt(
        job_id,
        {"chain": 0, "round": 1, "verdict": None},
        event="attempt.generated",
        usage={"prompt_tokens": 1, "completion_tokens": 1},
    )
    assert not written
    assert not store.redis.exists(keys.job_key(job_id))
    with pytest.raises(NotFound):
        store.get(job_id)


def test_attempts_keep_the_finished_jobs_lifetime(store: JobStore) -> None:
    job_id = store.create(_spec())
    store.cancel(job_id)
    store.put_attempt(job_id, {"chain": 0, "round": 1, "verdict": None}, event="attempt.generated")
    assert 0 < store.redis.ttl(keys.attempts_key(job_id)) <= 120


def test_attempts_accumulate_usage_and_come_back_in_order(store: JobStore) -> None:
    job_id = store.create(_spec())
    for chain, round_ in ((1, 1), (0, 2), (0, 1)):
        store.put_attempt(
            job_id,
            {"chain": chain, "round": round_, "verdict": None},
            event="attempt.generated",
            usage={"prompt_tokens": 10, "completion_tokens": 5},
        )
    job = store.get(job_id)
    assert [(a["chain"], a["round"]) for a in job["attempts"]] == [(0, 1), (0, 2), (1, 1)]
    assert job["usage"] == {"generations": 3, "prompt_tokens": 30, "completion_tokens": 15}


def test_unknown_job_is_not_found_naming_the_id(store: JobStore) -> None:
    with pytest.raises(NotFound) as info:
        store.get("prf_missing")
    assert info.value.param == "id"
    with pytest.raises(NotFound):
        store.cancel("prf_missing")


def test_events_resume_after_an_id(store: JobStore) -> None:
    job_id = store.create(_spec())
    store.mark_running(job_id)
    store.cancel(job_id)
    events = _events(store, job_id)
    assert [e.type for e in events] == ["job.created", "job.running", "job.cancelled"]
    assert [e.type for e in _events(store, job_id, after=events[0].id)] == ["job.running", "job.cancelled"]


def test_a_jobs_retrieved_proofs_are_fixed_by_the_first_round(store: JobStore) -> None:
    job_id = store.create(_spec())
    assert store.retrieved(job_id) is None
    first = [RetrievedProof(id="a", formal_statement="theorem a : True := by", proof="trivial", score=2.0)]
    later = [RetrievedProof(id="b", formal_statement="theorem b : True := by", proof="trivial", score=1.0)]
    assert store.keep_retrieved(job_id, first) == first
    assert store.keep_retrieved(job_id, later) == first  # a chain that searched later still shows the same
    assert store.retrieved(job_id) == first
