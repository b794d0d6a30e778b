"""`oprover worker generate|verify`: one RQ worker per process that runs N jobs at once on a thread pool.

Why one RQ worker with N job slots, and not N RQ workers as threads (the design this replaced):
- A generate worker keeps 64 generations in flight. As 64 full `SimpleWorker`s, a process held 64 pub/sub
  connections, 64 blocking dequeues, 64 heartbeat loops and 64 registry maintenance runs per interval, on a
  redis-py pool that stops at 100 connections: threads died with `MaxConnectionsError`, were restarted, and the
  streams in flight were cut and resent, so the model saw one request 5-7 times. Measured side by side at the
  shipped concurrency (README, Performance: `bench/bench_generate.py`, the old design with its pool cap raised so
  that it runs at all), the gateway and two workers of 64 slots peaked at 43 Redis connections instead of 275,
  sent 26 Redis commands/s instead of 350 while idle, used less CPU, and kept the GPU as busy (97.6% vs 97.0%).
- RQ 3 already tracks several executions per worker (`worker.executions`, one started-registry entry per
  execution), so a worker that runs jobs side by side keeps RQ's bookkeeping exact: each job is prepared,
  finished, retried, failed and cleaned up by RQ's own steps (`prepare_execution`, `prepare_job_execution`,
  `_finalize_success`/`_finalize_failure`), and its failure callback runs as usual.
- Threads rather than an event loop: the job functions are plain blocking functions (a generation is an HTTP
  call through the process's shared client, a check waits for a REPL of the shared Lean pool), so a thread per
  slot costs little and keeps them unchanged; the generation client already runs one event loop for all.

What this module adds around those steps:
- One dequeue loop: it takes a job only when a slot is free, blocks on Redis at most `WORKER_BLOCK_S` (so a
  stop is seen quickly; the process's Redis client is built for that block), and never drops a job it took: a
  stop is looked at only before the dequeue, and a Redis outage after it is waited out.
- One heartbeat thread, on a connection of its own, beats the worker and every running execution every
  `abandoned_after_s / 3` in one round trip. A job whose heartbeats stop (its process was SIGKILLed, its
  machine died) is found by RQ's maintenance after `abandoned_after_s` and retried, or handed to its failure
  callback when its retries are used up.
- One maintenance run per process per `maintenance_interval_s`, under a lock that this worker releases even
  when the cleanup fails, and that expires after one maintenance interval (RQ's own expires after 15 minutes:
  a process killed during cleanup stopped every retry of abandoned rounds for that long). A longer lock left
  behind (an older version, a plain `rq worker`) is cut down to that expiry.
- Jobs are timed with RQ's `TimerDeathPenalty` (SIGALRM reaches only the main thread), and so are the failure
  callbacks RQ's maintenance runs for abandoned jobs.
- Signals reach the main thread: the first stops taking jobs and lets the ones in flight finish; a second
  exits at once (RQ then retries what was cut off). The RQ scheduler (retries with a delay) runs as a thread.
- Logs at INFO: start, stop, one line per finished job, Redis lost and back. RQ's per-job housekeeping lines
  are left at DEBUG.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from rq import worker_registration
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry, clean_registries
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.suspension import is_suspended
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from services import jsonlog, lean_workers, redis_clients
from services.lean.policy import header_parts
from workers import context
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

# How often a verify worker re-announces its Lean versions (below keys.LEAN_WORKER_TTL_S).
ANNOUNCE_EVERY_S = 20
# Pause before a failed scheduler is started again.
RESTART_PAUSE_S = 2
# Shortest expiry of RQ's registry maintenance lock. One cleanup takes well under a second, so the lock expires
# after one maintenance interval (at least this long): a lock left by a process that died while holding it
# delays the next cleanup, and so the retry of abandoned rounds, by at most that much.
MIN_MAINTENANCE_LOCK_S = 10
# An RQ worker record expires this long after its last heartbeat (the worker beats every WORKER_BLOCK_S).
WORKER_TTL_S = 60
# How often the dequeue loop beats the worker and looks for `rq suspend` (also between busy dequeues).
HOUSEKEEPING_EVERY_S = 1.0
# Longest pause between attempts while Redis is unreachable.
MAX_BACKOFF_S = 30.0

# Release a lock only if this worker still holds it (it may have expired and been taken by another).
_RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SlotWorker(SimpleWorker):
    """One RQ worker that runs up to `concurrency` jobs at once, each on a thread of its pool."""

    death_penalty_class = TimerDeathPenalty

    def __init__(
        self,
        queues: Sequence[str],
        *,
        name: str,
        connection: redis.Redis,
        heartbeat_connection: redis.Redis,
        concurrency: int,
        abandoned_after_s: int,
        maintenance_interval_s: int,
    ) -> None:
        super().__init__(
            list(queues),
            name=name,
            connection=connection,
            serializer=JSONSerializer,
            maintenance_interval=maintenance_interval_s,
            worker_ttl=WORKER_TTL_S,
            log_job_description=False,
            prepare_for_work=False,  # RQ would talk to Redis here; `_register` does, retrying while it is away
        )
        self.hostname, self.pid = socket.gethostname(), os.getpid()
        self.log_result_lifespan = False
        self.concurrency = concurrency
        self.abandoned_after_s = abandoned_after_s
        self._beat_connection = heartbeat_connection
        self._free = threading.Semaphore(concurrency)
        self._pool = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix=f"{name.split('.')[0]}-job")
        self._running: dict[str, tuple[Job, Execution]] = {}
        self._running_lock = threading.Lock()
        self._idle_recorded: set[str] = set()  # executions whose success transaction set the worker idle
        self._stop = threading.Event()
        self._beats_stop = threading.Event()
        self._pubsub_failing = False
        self._release_lock = self.connection.register_script(_RELEASE_IF_OWNER)

    # --- RQ hooks ------------------------------------------------------------------------------------------------
    @property
    def dequeue_timeout(self) -> int:
        return int(redis_clients.WORKER_BLOCK_S)

    def _install_signal_handlers(self) -> None:
        """The main thread owns the signals (see WorkerPool.run)."""

    def request_stop(self, signum: Any = None, frame: Any = None) -> None:
        self._stop.set()

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        """RQ's listener for commands (`rq shutdown` ...): reconnects by itself; say so once per outage, not every
        2 s at ERROR as RQ does (the dequeue loop logs when Redis is back)."""
        if not isinstance(exc, redis.exceptions.ConnectionError):
            super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)  # RQ's: log and end the listener
            return
        if not self._pubsub_failing:
            logger.warning("%s: command listener lost Redis (%s); reconnecting", self.name, exc)
            self._pubsub_failing = True
        time.sleep(2.0)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.abandoned_after_s

    def serialize(self) -> dict[str, Any]:
        # Job slots, so /readyz and /metrics can report capacity as well as live processes.
        return {**super().serialize(), "concurrency": self.concurrency}

    def clean_registries(self) -> None:
        expiry_ms = max(MIN_MAINTENANCE_LOCK_S, int(self.maintenance_interval)) * 1000
        for queue in self.queues:
            lock = queue.registry_cleaning_key
            if self.connection.pttl(lock) > expiry_ms:  # RQ's own 15-minute lock, left behind
                self.connection.pexpire(lock, expiry_ms)
            if not self.connection.set(lock, self.name, nx=True, px=expiry_ms):
                continue
            try:
                logger.debug("%s: cleaning registries of queue %s", self.name, queue.name)
                clean_registries(queue, self._exc_handlers)
                worker_registration.clean_worker_registry(queue)
                queue.intermediate_queue.cleanup(self, queue)
            finally:
                self._release_lock(keys=[lock], args=[self.name])
        self.last_cleaned_at = now()  # type: ignore[assignment]  # RQ declares it as None until the first run

    # --- the loop --------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Take jobs while a slot is free, until a stop is requested; then wait for the jobs in flight."""
        self._register()
        beat = threading.Thread(target=self._beat_running_jobs, name=f"{self.name}-heartbeat", daemon=True)
        beat.start()
        redis_down_since: float | None = None
        backoff = 1.0
        housekeeping_due = 0.0
        try:
            while not self._stop.is_set():
                if not self._free.acquire(timeout=self.dequeue_timeout):
                    continue  # every slot busy; the heartbeat thread keeps the worker alive meanwhile
                taken = None
                try:
                    if time.monotonic() >= housekeeping_due:
                        # Not before every dequeue: under load that was two round trips more on every step's
                        # way to a slot; once per HOUSEKEEPING_EVERY_S is as good for liveness and `rq suspend`.
                        if is_suspended(self.connection, self):
                            time.sleep(self.dequeue_timeout)  # `rq suspend`: take nothing until `rq resume`
                            continue
                        self._beat()
                        housekeeping_due = time.monotonic() + HOUSEKEEPING_EVERY_S
                    if self.should_run_maintenance_tasks:
                        self.run_maintenance_tasks()
                    if self._stop.is_set():
                        break
                    taken = self.queue_class.dequeue_any(
                        self._ordered_queues,
                        self.dequeue_timeout,
                        connection=self.connection,
                        job_class=self.job_class,
                        serializer=self.serializer,
                        death_penalty_class=self.death_penalty_class,
                    )
                except DequeueTimeout:
                    pass
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    if redis_down_since is None:
                        redis_down_since = time.monotonic()
                        logger.warning("%s: Redis unavailable (%s); retrying until it is back", self.name, exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                except Exception:
                    logger.exception("%s: unexpected error while waiting for a job; carrying on", self.name)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                finally:
                    if taken is None:
                        self._free.release()
                if redis_down_since is not None:
                    logger.info("%s: Redis is back after %.0f s", self.name, time.monotonic() - redis_down_since)
                    redis_down_since, backoff = None, 1.0
                    self._pubsub_failing = False
                if taken is not None:
                    job, queue = taken
                    self.reorder_queues(reference_queue=queue)
                    self._start(job, queue)
        finally:
            self._stop.set()
            running = len(self._running)
            if running:
                logger.info("%s: waiting for %d jobs in flight", self.name, running)
            self._pool.shutdown(wait=True)
            self._beats_stop.set()
            beat.join()
            with contextlib.suppress(redis.exceptions.RedisError):
                self.teardown()

    def _register(self) -> None:
        """RQ's birth and pub/sub subscription (commands such as `rq shutdown`), retried while Redis is away."""
        backoff = 1.0
        while True:
            try:
                if self.ip_address == "unknown":
                    self._set_ip_address(self.connection)
                if self.birth_date is not None:
                    # A birth that failed half-way may have written the record, and RQ's birth refuses a second
                    # one: write it idempotently instead.
                    self._beat()
                else:
                    self.register_birth()
                if self.pubsub is None:
                    self.subscribe()
                self.set_state(WorkerStatus.STARTED)
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if self.pubsub is not None and self.pubsub_thread is None:  # subscribing failed half-way
                    with contextlib.suppress(Exception):
                        self.pubsub.close()
                    self.pubsub = None
                logger.warning("%s: Redis unavailable at start (%s); retrying", self.name, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _beat(self, pipeline: Any = None) -> None:
        """The worker's heartbeat, re-registering it if Redis lost its record (a restart without persistence)."""
        own = pipeline is None
        pipe = self.connection.pipeline() if own else pipeline
        self.last_heartbeat = now()
        pipe.hset(self.key, mapping=self.serialize())  # type: ignore[arg-type]  # RQ's own record, as RQ writes it
        pipe.expire(self.key, self.worker_ttl + 60)
        pipe.expire(self.executions_key, self.worker_ttl + 60)
        worker_registration.register(self, pipe)
        if own:
            pipe.execute()
            pipe.reset()

    def _start(self, job: Job, queue: Queue) -> None:
        """Hand a dequeued job to a free slot. The job is off the queue: never give up on it while Redis is away.

        Both of RQ's preparations run here, in one transaction, before the job waits for its thread: RQ's
        maintenance drops an expired started-registry entry whose job is not yet `started`, so a process killed
        between the two would lose the job instead of having it retried.
        """
        backoff = 1.0
        while True:
            try:
                execution = self._prepare(job)
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                logger.warning("%s: could not start %s (%s); retrying", self.name, job.id, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        with self._running_lock:
            self._running[execution.id] = (job, execution)
        self._pool.submit(self._perform, job, queue, execution)

    def _prepare(self, job: Job) -> Execution:
        """RQ's `prepare_execution` and `prepare_job_execution` (the same writes, in RQ's order) in one
        transaction, so one round trip instead of two on every step's way to its slot."""
        ttl = self.get_heartbeat_ttl(job)
        with self.connection.pipeline() as pipe:
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            self.heartbeat(ttl, pipeline=pipe)
            job.heartbeat(now(), ttl, pipeline=pipe)
            job.prepare_for_execution(self.name, pipeline=pipe)
            pipe.persist(job.key)
            if len(self.queues) == 1:  # RQ dequeues a single queue through its intermediate list (BLMOVE)
                pipe.lrem(Queue(job.origin, connection=self.connection).intermediate_queue_key, 1, job.id)
            pipe.execute()
        self.executions[execution.id] = execution
        return execution

    def _perform(self, job: Job, queue: Queue, execution: Execution) -> None:
        started = time.monotonic()
        ok = False
        bound = jsonlog.bind(job.id)  # what this thread logs meanwhile carries the proof job's id (JSON logs)
        try:
            ok = self.perform_job(job, queue, execution)
        except BaseException:  # RQ records failures itself; this is its own bookkeeping failing (Redis down)
            logger.exception("%s: %s %s: could not record its outcome", self.name, queue.name, job.id)
        finally:
            jsonlog.unbind(bound)
            with self._running_lock:
                self._running.pop(execution.id, None)
                idle = not self._running and execution.id not in self._idle_recorded
                self._idle_recorded.discard(execution.id)
            if idle:
                with contextlib.suppress(redis.exceptions.RedisError):
                    self.set_state(WorkerStatus.IDLE)
            self._free.release()
        outcome = "done" if ok else "failed"
        logger.info("%s %s: %s in %.1f s", queue.name, job.id, outcome, time.monotonic() - started)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """RQ's `perform_job` without its preparation, which `_start` has done (see there)."""
        try:
            job.started_at = now()
            with self.death_penalty_class(
                job.timeout or self.queue_class.DEFAULT_TIMEOUT, JobTimeoutException, job_id=job.id
            ):
                return_value = job.perform()
            self._finalize_success(job, queue, execution, return_value)
        except:  # noqa: E722 - as RQ: every failure of the job, timeouts included, is recorded as its failure
            self._finalize_failure(job, queue, execution, sys.exc_info())
            return False
        return True

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        """RQ's, less its heartbeat of a job that succeeded without a success callback (a round trip per step):
        that beat keeps the job from looking abandoned while its callback runs, and nothing runs between this
        and the success transaction. A failed job's beat is kept: its failure callback follows."""
        if job.get_status(refresh=False) != JobStatus.FAILED and not job._success_callback_name:
            job.ended_at = now()
            return
        super().handle_execution_ended(job, queue, heartbeat_ttl)

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry, execution: Execution
    ) -> None:
        """RQ's success bookkeeping in one transaction instead of three round trips.

        RQ first WATCHes and reads the job's dependents set, to enqueue jobs that waited for this one. The
        round steps have none: each enqueues its successor itself and the dispatcher never passes
        `depends_on` (workers/dispatch.py). A job with repeats or a rate limit (not ours) gets RQ's own handling.
        The worker's idle state goes in the same transaction when this was its only running job.
        """
        if job.repeats_left or job.has_rate_limit:
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        assert job.started_at is not None and job.ended_at is not None
        with self.connection.pipeline() as pipe:
            self.increment_successful_job_count(pipeline=pipe)
            self.increment_total_working_time(job.ended_at - job.started_at, pipe)
            result_ttl = job.get_result_ttl(self.default_result_ttl)
            if result_ttl != 0:
                job._handle_success(
                    result_ttl,
                    pipeline=pipe,
                    worker_name=self.name,
                    execution_id=execution.id,
                    execution_started_at=execution.created_at,
                    execution_ended_at=job.ended_at,
                )
            job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
            job._status = JobStatus.FINISHED
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            with self._running_lock:
                idle = set(self._running) <= {execution.id}
                if idle:
                    self._idle_recorded.add(execution.id)
            if idle:
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
            pipe.execute()

    def _beat_running_jobs(self) -> None:
        """Heartbeats of the worker and of every running execution, in one round trip, on a connection of their
        own (a busy pool must never delay them: a job without heartbeats is declared abandoned and retried)."""
        # Also the worker's own heartbeat while every slot is busy: /readyz counts a worker live for 30 s.
        interval = max(0.5, min(self.abandoned_after_s / 3, 10.0))
        failing = False
        while not self._beats_stop.wait(interval):
            with self._running_lock:
                running = list(self._running.values())
            try:
                with self._beat_connection.pipeline(transaction=False) as pipe:
                    self._beat(pipe)
                    for job, execution in running:
                        execution.heartbeat(job.started_job_registry, self.abandoned_after_s, pipeline=pipe)
                        job.heartbeat(now(), self.abandoned_after_s, pipeline=pipe, xx=True)
                    pipe.execute()
            except Exception as exc:  # a missed beat is survivable; three in a row mark the jobs abandoned
                if not failing:  # once per outage, not once per beat
                    logger.warning("%s: heartbeats failing (%s); %d jobs running", self.name, exc, len(running))
                failing = True
                continue
            if failing:
                logger.info("%s: heartbeats sent again", self.name)
            failing = False


class _ThreadScheduler(RQScheduler):
    """RQ's scheduler (it moves jobs whose retry delay has passed back onto their queues), run as a thread."""

    def _install_signal_handlers(self) -> None:
        """Stopped by the pool through request_stop()."""


class WorkerPool:
    """A worker process: its `SlotWorker`, the RQ scheduler, and (verify workers) the Lean announcements."""

    def __init__(self, ctx: WorkerContext, queues: Sequence[str], concurrency: int, *, kind: str) -> None:
        self.ctx = ctx
        self.queues = list(queues)
        self.concurrency = concurrency
        self.kind = kind
        # The random part keeps names unique across container restarts, where hostname and pid repeat.
        self.name = f"{kind}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
        self._stop = threading.Event()
        self._heartbeat_redis = redis_clients.sync_client(
            ctx.settings.redis.url, name=f"oprover-{kind}-heartbeat", max_connections=2
        )
        self.worker = SlotWorker(
            self.queues,
            name=self.name,
            connection=ctx.redis,
            heartbeat_connection=self._heartbeat_redis,
            concurrency=concurrency,
            abandoned_after_s=ctx.settings.worker.abandoned_after_s,
            maintenance_interval_s=ctx.settings.worker.maintenance_interval_s,
        )
        self._scheduler: _ThreadScheduler | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        # RQ's housekeeping lines (one per job and per maintenance run) and httpx's line per HTTP request are
        # not an operator's business: this module logs one line per finished job instead.
        logging.getLogger("rq.worker").setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # RQ builds these registries itself during maintenance; see the module docstring.
        StartedJobRegistry.death_penalty_class = TimerDeathPenalty  # type: ignore[assignment]  # RQ's typing is narrower
        context.install(self.ctx)
        for target, name in ((self._run_scheduler, "scheduler"), (self._run_worker, "dequeue")):
            thread = threading.Thread(target=target, name=f"{self.kind}-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        logger.info("%s: %d job slots on queues %s", self.name, self.concurrency, ", ".join(self.queues))

    def _run_worker(self) -> None:
        try:
            self.worker.run()
        except Exception:
            logger.exception("%s: the worker loop failed; stopping the process", self.name)
            self.request_stop()

    def _run_scheduler(self) -> None:
        """One process per queue set holds RQ's scheduler lock; the others stand by to take over.

        The same scheduler (and so the same lock owner name) is reused after a failure: its lock outlives a
        Redis restart (AOF), and only its owner may take it back before it expires a minute later.
        """
        scheduler = _ThreadScheduler(self.queues, connection=self.ctx.redis, serializer=JSONSerializer)
        self._scheduler = scheduler
        while not self._stop.is_set():
            try:
                if scheduler.acquire_locks():
                    scheduler.work()  # returns once request_stop() was called
                    if self._stop.is_set():
                        return
            except Exception:
                logger.warning("%s: scheduler failed; restarting it", self.name, exc_info=True)
            self._stop.wait(RESTART_PAUSE_S)

    def announce(self) -> None:
        """Tell the gateway and /readyz which Lean this verify worker serves."""
        if self.ctx.checker is None:
            return
        info = {
            "name": self.name,
            "version": self.ctx.settings.lean.version,
            "queues": self.queues,
            "concurrency": self.concurrency,
            # What its REPLs import: the gateway refuses (400) a header of this version that imports anything else.
            "imports": header_parts(self.ctx.settings.lean.header)[0],
            **self.ctx.checker.versions(),
        }
        try:
            lean_workers.announce(self.ctx.redis, self.name, info)
        except redis.exceptions.RedisError as exc:
            logger.warning("%s: could not announce the Lean versions (%s); retrying", self.name, exc)

    def request_stop(self) -> None:
        if not self._stop.is_set():
            logger.info("%s: stopping after the jobs in flight (signal again to stop at once)", self.name)
        self._stop.set()
        self.worker.request_stop()
        if self._scheduler is not None:
            self._scheduler.request_stop()

    def run(self) -> int:
        """Run until SIGINT/SIGTERM; a second signal exits at once (RQ retries the jobs that were cut off)."""
        signals_seen = 0

        def on_signal(signum: int, _frame: Any) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen > 1:
                logger.warning("%s: second signal, exiting now", self.name)
                os._exit(1)
            self.request_stop()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        self.start()
        try:
            self.announce()
            while not self._stop.wait(ANNOUNCE_EVERY_S):
                self.announce()
            self.request_stop()
            for thread in self._threads:
                thread.join()
        finally:
            if self.ctx.checker is not None:
                with contextlib.suppress(redis.exceptions.RedisError):
                    lean_workers.withdraw(self.ctx.redis, self.name)
            context.install(None)
            self.ctx.close()
            self._heartbeat_redis.close()
        logger.info("%s: stopped", self.name)
        return 0
