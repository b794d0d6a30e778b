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
  blocked waiting for a job wakes every `DEQUEUE_POLL_S` to see the request (RQ's own loop would wait ~7 min).
- `SIGALRM` timeouts work only in the main thread: jobs are timed with RQ's `TimerDeathPenalty` instead.
- `SimpleWorker` sends no heartbeat while a job runs, so RQ could only call a job abandoned after its whole
  timeout (half an hour for a long generation). Here a side thread heartbeats every running job, and a job
  whose heartbeats stop for `abandoned_after_s` (its worker was SIGKILLed, its machine died) is found by RQ's
  maintenance (every `maintenance_interval_s`, instead of RQ's default 10 minutes) and retried, or handed to
  the failure callback when its retries are used up.
- The RQ scheduler (needed for retries with a delay) runs as a thread of the pool, not a forked process: forking
  a process that already runs many threads is unsafe.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Sequence
from typing import Any

from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from services import keys
from workers import context
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

# How long an idle worker thread blocks on Redis before looking at the stop flag again.
DEQUEUE_POLL_S = 2
# How often a verify worker re-announces its Lean versions (below keys.LEAN_WORKER_TTL_S).
ANNOUNCE_EVERY_S = 20


class ThreadWorker(SimpleWorker):
    """An RQ `SimpleWorker` that lives in a thread of a `WorkerPool`."""

    death_penalty_class = TimerDeathPenalty
    abandoned_after_s = 30

    def _install_signal_handlers(self) -> None:
        """The pool's main thread owns the signals."""

    @property
    def dequeue_timeout(self) -> int:
        return DEQUEUE_POLL_S

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # RQ stops an idle worker by raising StopRequested from its signal handler; a thread cannot receive
        # one, so an idle worker raises it here, at the heartbeat it sends between two dequeue waits.
        if self._stop_requested and self._state == WorkerStatus.IDLE and pipeline is None:
            raise StopRequested()
        super().heartbeat(timeout, pipeline)

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
    def _install_signal_handlers(self) -> None:
        """Stopped by the pool through request_stop()."""


class WorkerPool:
    def __init__(self, ctx: WorkerContext, queues: Sequence[str], concurrency: int, *, kind: str) -> None:
        self.ctx = ctx
        self.queues = list(queues)
        self.concurrency = concurrency
        self.kind = kind
        self.name = f"{kind}.{socket.gethostname()}.{os.getpid()}"
        self._stop = threading.Event()
        self._workers: list[ThreadWorker] = []
        self._threads: list[threading.Thread] = []
        self._scheduler: _ThreadScheduler | None = None

    def _make_worker(self, index: int) -> ThreadWorker:
        worker = ThreadWorker(
            self.queues,
            name=f"{self.name}.{index}",
            connection=self.ctx.redis,
            serializer=JSONSerializer,
            maintenance_interval=self.ctx.settings.worker.maintenance_interval_s,
        )
        worker.abandoned_after_s = self.ctx.settings.worker.abandoned_after_s
        worker.log_result_lifespan = False
        return worker

    def start(self) -> None:
        context.install(self.ctx)
        self._scheduler = _ThreadScheduler(self.queues, connection=self.ctx.redis, serializer=JSONSerializer)
        threading.Thread(target=self._run_scheduler, name=f"{self.kind}-scheduler", daemon=True).start()
        for index in range(self.concurrency):
            worker = self._make_worker(index)
            thread = threading.Thread(target=self._run_worker, args=(worker,), name=f"{self.kind}-{index}", daemon=True)
            self._workers.append(worker)
            self._threads.append(thread)
            thread.start()
        logger.info("%s: %d workers on queues %s", self.name, self.concurrency, ", ".join(self.queues))

    def _run_worker(self, worker: ThreadWorker) -> None:
        try:
            worker.work(logging_level=logging.getLevelName(logging.getLogger().level))
        except Exception:
            logger.exception("%s: worker thread %s died", self.name, worker.name)
            self._stop.set()

    def _run_scheduler(self) -> None:
        assert self._scheduler is not None
        while not self._stop.is_set():
            # Several pools may run; one holds each queue's scheduler lock, the others wait to take over.
            self._scheduler.acquire_locks()
            if self._scheduler.acquired_locks:
                try:
                    self._scheduler.work()
                except Exception:
                    logger.exception("%s: scheduler failed; restarting", self.name)
                return
            self._stop.wait(30)

    def announce(self) -> None:
        """Tell /readyz and the gateway which Lean this verify worker serves."""
        if self.ctx.checker is None:
            return
        info = {
            "version": self.ctx.settings.lean.version,
            "queues": self.queues,
            "concurrency": self.concurrency,
            **self.ctx.checker.versions(),
        }
        self.ctx.redis.set(keys.lean_worker_key(self.name), json.dumps(info), ex=keys.LEAN_WORKER_TTL_S)

    def request_stop(self) -> None:
        if not self._stop.is_set():
            logger.info("%s: stopping after the jobs in flight (signal again to stop at once)", self.name)
        self._stop.set()
        for worker in self._workers:
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
                self.ctx.redis.delete(keys.lean_worker_key(self.name))
            context.install(None)
            self.ctx.close()
        logger.info("%s: stopped", self.name)
        return 0
