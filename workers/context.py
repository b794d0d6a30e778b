"""The resources one worker process holds while it runs jobs: set up once at start, shared by its threads.

RQ job functions take only ids and small JSON values (they must survive a retry on another machine), so the
heavy things they need (the pooled generator client, the warm Lean REPLs, the memory) live here. The runner
installs the context before the first job and closes it after the last; `current()` is how a job reaches it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from services import redis_clients
from services.settings import Settings
from services.store import JobStore
from workers.cancellation import CancellationWatcher
from workers.dispatch import Dispatcher

if TYPE_CHECKING:
    from services.generation import GenerationClient
    from services.lean import LeanChecker
    from services.memory import ProofMemory

logger = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    dispatch: Dispatcher
    generator: GenerationClient | None = None
    checker: LeanChecker | None = None
    memory: ProofMemory | None = None
    cancellation: CancellationWatcher | None = None
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        generator: bool = False,
        checker: bool = False,
        memory: bool = False,
        pool_size: int | None = None,
        concurrency: int = 1,
    ) -> WorkerContext:
        """`concurrency`: jobs the process runs at once; its Redis pool holds one connection per job slot plus
        the worker's own threads, and is built for RQ's blocking dequeue (services/redis_clients.py)."""
        client = redis_clients.sync_client(
            settings.redis.url,
            name="oprover-worker",
            max_connections=redis_clients.worker_pool_size(concurrency),
            block_s=redis_clients.WORKER_BLOCK_S,
        )
        ctx = cls(
            settings=settings,
            redis=client,
            store=JobStore(client, job_ttl_s=settings.prove.job_ttl_s),
            dispatch=Dispatcher(client, settings),
        )
        try:
            if generator:
                from services.generation import GenerationClient

                ctx.generator = GenerationClient(settings.generator)
                ctx.cancellation = CancellationWatcher(client)
            if memory:
                from services.memory import ProofMemory

                ctx.memory = ProofMemory(settings.qdrant)
            if checker:
                from services.lean import LeanChecker
                from services.lean.version import require_same_lean

                lean = settings.lean if pool_size is None else settings.lean.model_copy(update={"pool_size": pool_size})
                ctx.checker = LeanChecker(lean)
                ctx.checker.start()
                # Never serve a Lean under another version's name (services/lean/version.py).
                require_same_lean(settings.lean.version, ctx.checker.pool.lean_version)
        except BaseException:
            ctx.close()
            raise
        return ctx

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for name in ("cancellation", "checker", "generator", "memory"):
            resource = getattr(self, name)
            if resource is not None:
                try:
                    resource.close()
                except Exception:
                    logger.exception("closing the %s failed", name)
        self.redis.close()


_lock = threading.Lock()
_current: WorkerContext | None = None


def install(ctx: WorkerContext | None) -> None:
    global _current
    with _lock:
        _current = ctx


def maybe_current() -> WorkerContext | None:
    """The context if this process runs jobs; RQ failure callbacks may also run in a gateway or CLI process."""
    return _current


def current() -> WorkerContext:
    ctx = _current
    if ctx is None:
        raise RuntimeError("no worker context: job functions run only inside `oprover worker`")
    return ctx
