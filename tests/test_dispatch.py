"""Enqueueing steps on a real Redis: deterministic ids make a duplicated or retried predecessor harmless."""

from __future__ import annotations

import redis

from services.settings import Settings
from workers.dispatch import Dispatcher


def test_a_step_is_enqueued_once(redis_client: redis.Redis) -> None:
    dispatch = Dispatcher(redis_client, Settings(_env_file=None))
    assert dispatch._enqueue("generate", "workers.jobs.generate_round", ["prf_x", 0, 2], "prf_x-c0-r2-gen", 60)
    assert not dispatch._enqueue("generate", "workers.jobs.generate_round", ["prf_x", 0, 2], "prf_x-c0-r2-gen", 60)
    dispatch.generate("prf_x", 0, 2)  # the public call is just as idempotent
    assert dispatch.queue("generate").count == 1
    dispatch.generate("prf_x", 1, 2)
    assert dispatch.queue("generate").count == 2


def test_dropping_a_finished_jobs_rounds(redis_client: redis.Redis) -> None:
    dispatch = Dispatcher(redis_client, Settings(_env_file=None))
    dispatch.start_job("prf_y", attempts=3)
    dispatch.verify("prf_y", 1, 1, None)
    assert dispatch.drop_pending("prf_y", attempts=3, rounds=2) == 4
    assert dispatch.queue("generate").count == 0 and dispatch.queue("verify").count == 0


def test_verify_timeout_outlasts_the_checkers_worst_case() -> None:
    settings = Settings(_env_file=None)
    lean = settings.lean
    assert Dispatcher(redis.Redis(), settings).verify_timeout_s > lean.import_timeout_s + 2 * lean.timeout_s
