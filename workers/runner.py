"""`oprover worker generate|verify`: many RQ workers as threads of one process that shares its resources.

Why threads of `SimpleWorker` rather than RQ's default worker, `rq worker-pool`, or one process per slot:
- RQ's default `Worker` forks a work horse per job, which throws away the warm Lean REPLs and the pooled HTTP
  connections; `SimpleWorker` runs the job in the worker itself.
- A generate worker must keep 64-128 generations in flight (DESIGN §5). Each generation is an HTTP request that
  mostly waits, so one thread per in-flight request is cheap, while one process per request would cost ~60 MB
  each and open its own connection pool. Each thread is a full RQ worker (its own name, registration,
  heartbeats, started-job registry entries), so RQ's retries and abandoned-job detection work unchanged.
- A verify worker runs one thread per REPL of its pool, so every REPL is busy while checks are queued.

What threads change, and how this module handles it:
- Signals reach only the main thread: the pool installs the handlers and asks every worker to stop. A worker
  blocked waiting for a job wakes every `DEQUEUE_POLL_S` to see the request (RQ's own loop would wait ~7 min),
  and it looks at the request only before it blocks, never between taking a job and running it, so a stop
  cannot drop a job it already took off the queue.
- `SIGALRM` timeouts work only in the main thread: jobs are timed with RQ's `TimerDeathPenalty` instead, and
  so are the failure callbacks that RQ's maintenance runs for abandoned jobs (`StartedJobRegistry` would
  otherwise try to install a SIGALRM handler from a worker thread, fail, and skip the callback).
- A thread whose RQ worker quits (Redis went away, an unexpected error) is restarted with a fresh worker after
  a pause, and so is the scheduler: a Redis restart must not leave the pool with fewer workers or no retries.
- `SimpleWorker` sends no heartbeat while a job runs, so RQ could only call a job abandoned after its whole
  timeout (half an hour for a long generation). Here a side thread heartbeats every running job, and a job
  whose heartbeats stop for `abandoned_after_s` (its worker was SIGKILLed, its machine died) is found by RQ's
  maintenance (every `maintenance_interval_s`, instead of RQ's default 10 minutes) and retried, or handed to
  the failure callback when its retries are used up.
- The RQ scheduler (needed for retries with a delay) runs as a thread of the pool, not a forked process: forking
  a process that already runs many threads is unsafe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from services import lean_workers
from workers import context
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

# How long an idle worker thread blocks on Redis before looking at the stop flag again.
DEQUEUE_POLL_S = 2
# How often a verify worker re-announces its Lean versions (below keys.LEAN_WORKER_TTL_S).
ANNOUNCE_EVERY_S = 20
# Pause before a quit worker thread or a failed scheduler is started again.
RESTART_PAUSE_S = 2


class ThreadWorker(SimpleWorker):
    """An RQ `SimpleWorker` that lives in a thread of a `WorkerPool`."""

    death_penalty_class = TimerDeathPenalty
    abandoned_after_s = 30

    def _install_signal_handlers(self) -> None:
        """The pool's main thread owns the signals."""

    @property
    def dequeue_timeout(self) -> int:
        return DEQUEUE_POLL_S

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """Wait for a job in short slices, looking at the stop request only before each wait.

        RQ stops an idle worker by raising StopRequested from its signal handler, which a thread cannot
        receive; raising it anywhere after a job was popped would lose that job.
        """
        self.set_state(WorkerStatus.IDLE)
        backoff = 1.0
        while True:
            if self._stop_requested:
                raise StopRequested()
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                result = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    DEQUEUE_POLL_S,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except DequeueTimeout:
                continue
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                logger.warning("worker %s: Redis unavailable (%s); retrying in %.0f s", self.name, exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if result is not None:
                job, queue = result
                self.reorder_queues(reference_queue=queue)
                logger.info("worker %s: %s: %s", self.name, queue.name, job.id)
                return result

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.abandoned_after_s

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        done = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat_while_running,
            args=(job, execution, done),
            name=f"{threading.current_thread().name}-heartbeat",
            daemon=True,
        )
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _heartbeat_while_running(self, job: Job, execution: Execution, done: threading.Event) -> None:
        interval = max(0.5, self.abandoned_after_s / 3)
        while not done.wait(interval):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception:  # a missed beat is survivable; three in a row mark the job abandoned
                logger.warning("worker %s: heartbeat for job %s failed", self.name, job.id, exc_info=True)


class _ThreadScheduler(RQScheduler):
    """RQ's scheduler (it moves jobs whose retry delay has passed back onto their queues), run as a thread."""

    def _install_signal_handlers(self) -> None:
        """Stopped by the pool through request_stop()."""


class WorkerPool:
    def __init__(self, ctx: WorkerContext, queues: Sequence[str], concurrency: int, *, kind: str) -> None:
        self.ctx = ctx
        self.queues = list(queues)
        self.concurrency = concurrency
        self.kind = kind
        # The random part keeps names unique across container restarts, where hostname and pid repeat.
        self.name = f"{kind}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
        self._stop = threading.Event()
        self._lock = threading.RLock()  # also taken by the signal handler, on the main thread
        self._workers: dict[int, ThreadWorker] = {}
        self._threads: list[threading.Thread] = []
        self._scheduler: _ThreadScheduler | None = None

    def _make_worker(self, index: int, generation: int = 0) -> ThreadWorker:
        suffix = f".{generation}" if generation else ""
        worker = ThreadWorker(
            self.queues,
            name=f"{self.name}.{index}{suffix}",
            connection=self.ctx.redis,
            serializer=JSONSerializer,
            maintenance_interval=self.ctx.settings.worker.maintenance_interval_s,
        )
        worker.abandoned_after_s = self.ctx.settings.worker.abandoned_after_s
        worker.log_result_lifespan = False
        worker.log_job_description = False
        return worker

    def start(self) -> None:
        # RQ builds these registries itself during maintenance; see the module docstring.
        StartedJobRegistry.death_penalty_class = TimerDeathPenalty
        context.install(self.ctx)
        threading.Thread(target=self._run_scheduler, name=f"{self.kind}-scheduler", daemon=True).start()
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._run_worker, args=(index,), name=f"{self.kind}-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()
        logger.info("%s: %d workers on queues %s", self.name, self.concurrency, ", ".join(self.queues))

    def _run_worker(self, index: int) -> None:
        """Keep one RQ worker running in this thread until the pool stops."""
        generation = 0
        while not self._stop.is_set():
            worker = self._make_worker(index, generation)
            with self._lock:
                self._workers[index] = worker
                worker._stop_requested = self._stop.is_set()  # a stop requested while it was being made
            try:
                worker.work(logging_level=logging.getLevelName(logging.getLogger().level))
            except Exception:
                logger.exception("%s: worker %s failed", self.name, worker.name)
            if self._stop.is_set():
                return
            logger.warning("%s: worker %s quit; starting a new one in %d s", self.name, worker.name, RESTART_PAUSE_S)
            self._stop.wait(RESTART_PAUSE_S)
            generation += 1

    def _run_scheduler(self) -> None:
        """One pool per queue set holds RQ's scheduler lock; the others stand by to take over.

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
                logger.exception("%s: scheduler failed; restarting it", self.name)
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
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker._stop_requested = True
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
        logger.info("%s: stopped", self.name)
        return 0
