"""Abort in-flight generations of finished jobs: one thread per process watches every job it is generating for.

A generation can take many minutes. When its job is cancelled, or another chain proves the theorem, the
GPU time left is wasted unless the request is aborted; the generation client aborts a call when its
`cancel` event is set (closing the stream, which SGLang treats as an abort). Rather than one poller per
in-flight request, a single thread reads the status of all watched jobs in one pipelined round trip.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import redis

from services import keys
from services.domain import TERMINAL_STATUSES

logger = logging.getLogger(__name__)

_TERMINAL = {status.value.encode() for status in TERMINAL_STATUSES}


class CancellationWatcher:
    def __init__(self, client: redis.Redis, *, interval_s: float = 1.0) -> None:
        self.redis = client
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._watched: dict[str, list[threading.Event]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[threading.Event]:
        """An event that is set once `job_id` is terminal (or gone), for as long as the block runs."""
        event = threading.Event()
        with self._lock:
            self._watched.setdefault(job_id, []).append(event)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cancellation-watcher", daemon=True)
                self._thread.start()
        try:
            yield event
        finally:
            with self._lock:
                events = self._watched.get(job_id, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._watched.pop(job_id, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                job_ids = list(self._watched)
            if not job_ids:
                continue
            try:
                with self.redis.pipeline(transaction=False) as pipe:
                    for job_id in job_ids:
                        pipe.hget(keys.job_key(job_id), "status")
                    statuses = pipe.execute()
            except redis.exceptions.RedisError:
                logger.warning("cancellation watcher: Redis unavailable, retrying", exc_info=True)
                continue
            except Exception:  # the watcher must outlive anything: without it no generation can be aborted
                logger.exception("cancellation watcher: unexpected error, carrying on")
                continue
            with self._lock:
                for job_id, status in zip(job_ids, statuses, strict=True):
                    if status is None or status in _TERMINAL:
                        for event in self._watched.get(job_id, []):
                            event.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
