"""A step that reaches a worker process without what it needs fails with a clear error, also under `python -O`.

These were `assert`s: `python -O` removes them, and the step then died with `AttributeError: 'NoneType' object has
no attribute 'complete'`. The job functions run here in a real process (`python -O`) against the test's Redis,
with a worker context that really lacks the resource, as a verify worker consuming the generate queue would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.harness import ROOT

SCRIPT = textwrap.dedent(
    """
    import sys

    import redis

    from services.settings import Settings
    from services.store import JobSpec, JobStore
    from workers import context, jobs
    from workers.dispatch import Dispatcher

    assert False, "never raised: this process runs with -O"  # noqa: B011 (proves -O is on)
    settings = Settings(_env_file=None, redis={"url": sys.argv[1]})
    client = redis.Redis.from_url(sys.argv[1])
    store = JobStore(client)
    spec = JobSpec(
        formal_statement="theorem t : 1 = 1 := by sorry", header="import Mathlib", rounds=1, attempts=1,
        top_k=0, temperature=0.6, top_p=0.95, max_tokens=64,
    )
    job_id = store.create(spec)
    context.install(context.WorkerContext(settings, client, store, Dispatcher(client, settings)))
    step = getattr(jobs, sys.argv[2])
    try:
        step(job_id, 0, 1) if sys.argv[2] != "remember_proof" else step(job_id)
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}")
    """
)


@pytest.mark.parametrize(
    ("step", "missing", "worker"),
    [
        ("generate_round", "a generator client", "oprover worker generate"),
        ("verify_round", "a Lean checker", "oprover worker verify"),
        ("remember_proof", "the retrieval memory", "oprover worker generate"),
    ],
)
def test_a_step_without_its_resource_fails_clearly_under_python_O(
    redis_url: str, step: str, missing: str, worker: str
) -> None:
    run = subprocess.run(
        [sys.executable, "-O", "-c", SCRIPT, redis_url, step],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("WorkerMisconfigured: "), run.stdout + run.stderr
    assert f"{step} reached a worker process without {missing}" in run.stdout
    assert worker in run.stdout
