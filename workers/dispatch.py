"""Enqueueing the stages of a proof job on RQ: ids, queues, timeouts, retries, callbacks in one place.

Used by the gateway (round 1 of each chain, one-off verifications) and by the workers (every later step).
RQ's enqueue is synchronous: the gateway calls these through a thread pool, never on its event loop.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from rq import Callback, Queue, Retry
from rq.exceptions import DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from services import keys
from services.settings import Settings

logger = logging.getLogger(__name__)

# An RQ job's record outlives its execution only for debugging; the proof job keeps what clients need.
RESULT_TTL_S = 3600


class Dispatcher:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._queues: dict[str, Queue] = {}

    def queue(self, name: str) -> Queue:
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.redis, serializer=JSONSerializer)
        return self._queues[name]

    # --- timeouts: each stage's own limits plus a margin, so RQ only kills a truly stuck job -------------------
    @property
    def generate_timeout_s(self) -> int:
        gen = self.settings.generator
        return int(gen.request_timeout_s + gen.retry_budget_s + 60)

    @property
    def verify_timeout_s(self) -> int:
        return self.verify_timeout_for(self.settings.lean.timeout_s)

    def verify_timeout_for(self, check_timeout_s: float) -> int:
        """RQ's limit for a verify step whose Lean check may take `check_timeout_s`.

        Above the checker's worst case: waiting for a REPL to be (re)started, the check in it, a claimed pass
        repeated in a REPL that ran nothing else (a warm spare), and the kernel replay; RQ's timeout must never cut
        a check in half."""
        lean = self.settings.lean
        return int(lean.import_timeout_s + 2 * check_timeout_s + lean.replay_timeout_s + 60)

    def _retry(self) -> Retry | None:
        worker = self.settings.worker
        if worker.round_retries == 0:
            return None
        return Retry(max=worker.round_retries, interval=worker.retry_intervals_s)

    def _enqueue(self, queue: str, func: str, args: list[Any], job_id: str, timeout: int, **options: Any) -> bool:
        """Enqueue once: a step whose id already exists (a retried or duplicated predecessor) is not added again.

        Returns False for such a duplicate. RQ checks and saves atomically (`unique=True`), so two racing
        predecessors cannot both enqueue, and a predecessor that failed after enqueueing can safely be retried.
        """
        options.setdefault("on_failure", Callback("workers.jobs.on_stage_failure"))
        try:
            self.queue(queue).enqueue_call(
                func,
                args=args,
                job_id=job_id,
                timeout=timeout,
                result_ttl=RESULT_TTL_S,
                # inspectable (`rq info`, the failed registry) as long as the proof job stays readable
                failure_ttl=self.settings.prove.job_ttl_s,
                retry=self._retry(),
                unique=True,
                **options,
            )
        except DuplicateJobError:
            logger.info("step %s is already enqueued (or done); not adding it again", job_id)
            return False
        return True

    # --- the stages --------------------------------------------------------------------------------------------
    def generate(self, job_id: str, chain: int, round_: int, *, interactive: bool | None = None) -> None:
        """`interactive`: whether the job is marked interactive, when the caller has read it already (a worker's
        step has, in its `round_state`); None reads it here."""
        rq_id = keys.rq_job_id(job_id, chain, round_, "gen")
        # An interactive job's every round goes to the queue generate workers take first (services/keys.py).
        if interactive is None:
            interactive = self.redis.hget(keys.job_key(job_id), "priority") == b"interactive"
        queue = keys.GENERATE_INTERACTIVE_QUEUE if interactive else keys.GENERATE_QUEUE
        self._enqueue(queue, "workers.jobs.generate_round", [job_id, chain, round_], rq_id, self.generate_timeout_s)

    def verify(self, job_id: str, chain: int, round_: int, lean_version: str | None) -> None:
        rq_id = keys.rq_job_id(job_id, chain, round_, "ver")
        queue = keys.verify_queue(lean_version, self.settings.lean.version)
        self._enqueue(queue, "workers.jobs.verify_round", [job_id, chain, round_], rq_id, self.verify_timeout_s)

    def remember(self, job_id: str) -> None:
        """Add a proved job's proof to the memory, on the queue of the process that owns the memory."""
        self._enqueue(
            keys.MEMORY_QUEUE, "workers.jobs.remember_proof", [job_id], f"{job_id}-remember", 120, on_failure=None
        )

    def verify_code(
        self, request_id: str, payload: dict[str, Any], lean_version: str | None, *, check_timeout_s: float
    ) -> int:
        """A one-off check for POST /v1/verify; the result lands at `keys.verify_result_key(request_id)`.

        `check_timeout_s` is the check's effective limit (the client's `timeout_s`, at most the operator's);
        returns the RQ timeout it was given, which the waiting gateway follows."""
        queue = keys.verify_queue(lean_version, self.settings.lean.version)
        timeout = self.verify_timeout_for(check_timeout_s)
        self._enqueue(
            queue,
            "workers.jobs.verify_code",
            [request_id, payload],
            f"{request_id}-verify",
            timeout,
            on_failure=Callback("workers.jobs.on_verify_failure"),
        )
        return timeout

    def start_job(self, job_id: str, attempts: int) -> None:
        for chain in range(attempts):
            self.generate(job_id, chain, 1)

    def drop_pending(self, job_id: str, attempts: int, rounds: int) -> int:
        """Best effort: take a finished job's still-queued rounds off their queues.

        Not needed for correctness (every stage checks the job's status first), but it frees workers at once.
        Running stages cannot be stopped from outside; they see the status at their next check.
        """
        dropped = 0
        ids = [
            keys.rq_job_id(job_id, chain, round_, stage)
            for chain in range(attempts)
            for round_ in range(1, rounds + 1)
            for stage in ("gen", "ver")
        ]
        for rq_job in Job.fetch_many(ids, connection=self.redis, serializer=JSONSerializer):
            if rq_job is None or rq_job.get_status(refresh=False) not in ("queued", "scheduled", "deferred"):
                continue
            try:
                rq_job.cancel()
                dropped += 1
            except (InvalidJobOperation, NoSuchJobError):
                continue
        return dropped
