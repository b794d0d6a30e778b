"""Prometheus metrics of every oprover process: what a proof job, a round, a generation and a Lean check cost.

Each process observes what it does itself (a generate worker its generations and retrievals, a verify worker its
checks and the ends of the jobs it decides), and each serves `/metrics`: the gateway on its HTTP port, a worker on
`OPROVER_METRICS_PORT` (`serve_for_worker`). Prometheus adds the processes up (`sum by (...)`), so every
number here is a counter or a histogram of this process's own events, except the gauges read at scrape time.

Multiprocess-safe: when `PROMETHEUS_MULTIPROC_DIR` is set before the process starts (a gateway run with several
uvicorn/gunicorn worker processes), prometheus-client keeps every value in files of that directory and `render`
merges the files of all processes, so a scrape that lands on any process sees the total. Without it, values live
in this process's memory. Metrics read from Redis or the Lean pool at scrape time come from `extra` collectors,
which are the same in any process and so are added outside the multiprocess merge.

The Grafana dashboard (deploy/monitoring/grafana-dashboard.json) queries only names defined here or by the
gateway's queue collector; tests/test_metrics_e2e.py checks that against real scrapes.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PORT_ENV = "OPROVER_METRICS_PORT"

# Bucket edges in seconds, from the shapes of the real work: a job takes minutes to hours, a round seconds to the
# 30-minute generation limit, a Lean check milliseconds (a cached REPL) to its 120 s timeout.
_JOB_S = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
_ROUND_S = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)
_CHECK_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_RETRIEVAL_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_TOKENS_PER_S = (5, 10, 20, 40, 60, 80, 100, 150, 200, 400, 1000)

# --- jobs (observed where a job ends: the verify worker that proves or exhausts it, or an error) --------------------
# Outcomes proved, failed, error: a job ran to its end. A cancelled job ends at the client's request, in the gateway,
# and is left out, so proved / all is the pass rate of the jobs the service was allowed to finish.
JOBS_FINISHED = Counter("oprover_jobs_finished_total", "Proof jobs that ended, by outcome.", ["outcome"])
JOB_DURATION = Histogram(
    "oprover_job_duration_seconds", "Submission to end of a proof job, by outcome.", ["outcome"], buckets=_JOB_S
)
PROOF_ROUNDS = Histogram(
    "oprover_proof_rounds",
    "Round (of its chain) in which a proved job's proof passed.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
)
PROOF_GENERATIONS = Histogram(
    "oprover_proof_generations",
    "Generations a proved job used over all its chains (attempts x rounds spent).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

# --- rounds -------------------------------------------------------------------------------------------------------
ROUND_DURATION = Histogram(
    "oprover_round_duration_seconds",
    "One round: retrieval + generation + Lean check (queue waits excluded), by verdict.",
    ["verdict"],
    buckets=_ROUND_S,
)

# --- the generator (generate workers) ------------------------------------------------------------------------------
GENERATIONS = Counter("oprover_generations_total", "Completions received from the model, by finish reason.", ["finish"])
GENERATION_DURATION = Histogram(
    "oprover_generation_duration_seconds", "One completion, request to last token.", buckets=_ROUND_S
)
TIME_TO_FIRST_TOKEN = Histogram(
    "oprover_generator_time_to_first_token_seconds", "Request to first streamed token.", buckets=_TTFT_S
)
COMPLETION_TOKENS = Counter("oprover_generator_completion_tokens_total", "Tokens the model generated.")
PROMPT_TOKENS = Counter("oprover_generator_prompt_tokens_total", "Prompt tokens sent to the model.")
TOKENS_PER_SECOND = Histogram(
    "oprover_generator_tokens_per_second",
    "Decode speed of one completion (completion tokens / time after the first token).",
    buckets=_TOKENS_PER_S,
)
IN_FLIGHT = Gauge(
    "oprover_generator_requests_in_flight",
    "Completions requested and not yet answered.",
    multiprocess_mode="livesum",
)
RETRIEVAL_DURATION = Histogram(
    "oprover_retrieval_duration_seconds", "Searching the memory for proofs like the target.", buckets=_RETRIEVAL_S
)

# --- Lean (verify workers) ----------------------------------------------------------------------------------------
CHECK_DURATION = Histogram(
    "oprover_lean_check_duration_seconds", "One Lean check, by verdict.", ["verdict"], buckets=_CHECK_S
)


# --- observations -------------------------------------------------------------------------------------------------
def observe_generation(
    *, seconds: float, retrieval_seconds: float | None, finish: str | None, usage: dict[str, Any] | None, ttft_ms: Any
) -> None:
    """One completion received (and the retrieval that preceded it)."""
    GENERATIONS.labels(finish=finish or "unknown").inc()
    GENERATION_DURATION.observe(seconds)
    if retrieval_seconds is not None:
        RETRIEVAL_DURATION.observe(retrieval_seconds)
    completion = int((usage or {}).get("completion_tokens") or 0)
    COMPLETION_TOKENS.inc(completion)
    PROMPT_TOKENS.inc(int((usage or {}).get("prompt_tokens") or 0))
    first = ttft_ms / 1000 if isinstance(ttft_ms, int | float) else None
    if first is not None:
        TIME_TO_FIRST_TOKEN.observe(first)
    decoding = seconds - (first or 0.0)
    if completion and decoding > 0:
        TOKENS_PER_SECOND.observe(completion / decoding)


def observe_round(verdict: str, timings: dict[str, Any] | None) -> None:
    """A round's Lean verdict is known: its check time, and the round's own work (from the attempt's timings)."""
    timings = timings or {}
    if isinstance(timings.get("verify_ms"), int | float):
        CHECK_DURATION.labels(verdict=verdict).observe(timings["verify_ms"] / 1000)
    spent = [timings.get(name) for name in ("retrieve_ms", "generate_ms", "verify_ms")]
    ROUND_DURATION.labels(verdict=verdict).observe(sum(v for v in spent if isinstance(v, int | float)) / 1000)


def observe_job_end(outcome: str, job: dict[str, Any] | None) -> None:
    """A job ended (`proved`, `failed`, `error`, `cancelled`); `job` is its record (store.get) when at hand."""
    JOBS_FINISHED.labels(outcome=outcome).inc()
    if not job:
        return
    created = job.get("created_at")
    if isinstance(created, int | float):
        JOB_DURATION.labels(outcome=outcome).observe(max(0.0, time.time() - created))
    if outcome == "proved":
        winner = job.get("proved_by") or {}
        if isinstance(winner.get("round"), int):
            PROOF_ROUNDS.observe(winner["round"])
        PROOF_GENERATIONS.observe(len(job.get("attempts") or []))


# --- read at scrape time -------------------------------------------------------------------------------------------
class LeanPoolCollector:
    """REPL life events of this verify worker's pool (its `stats`): starts, kills (timeout, crash, memory), recycles."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "oprover_lean_repl_events",
            "REPL processes started (spawned), killed after a timeout/crash/memory overrun (killed), retired "
            "after max checks or max RSS (recycled), or that failed to start (spawn_failures).",
            labels=["event"],
        )
        for event, count in dict(self.pool.stats).items():
            events.add_metric([event], count)
        size = GaugeMetricFamily("oprover_lean_pool_size", "REPLs checking at once in this verify worker.")
        size.add_metric([], getattr(self.pool, "size", 0))
        yield from (events, size)


class MemorySizeCollector:
    """Verified proofs in the retrieval memory (every generate worker reports the same number: take the max)."""

    def __init__(self, memory: Any) -> None:
        self.memory = memory

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("oprover_memory_proofs", "Verified proofs in the retrieval memory.")
        try:
            gauge.add_metric([], self.memory.count())
        except Exception as exc:  # a scrape must not fail because the memory is down
            logger.warning("metrics: could not count the memory (%s)", exc)
            return
        yield gauge


class QueueAgeCollector:
    """Age of the oldest waiting RQ job of every queue: a growing age is a stalled or under-provisioned stage."""

    def __init__(self, redis_client: Any) -> None:
        self.redis = redis_client

    def collect(self) -> Iterator[Metric]:
        from rq import Queue
        from rq.serializers import JSONSerializer

        gauge = GaugeMetricFamily(
            "oprover_queue_oldest_job_age_seconds",
            "How long the oldest waiting job of a queue has waited.",
            labels=["queue"],
        )
        now = time.time()
        for queue in Queue.all(connection=self.redis, serializer=JSONSerializer):
            oldest = queue.get_job_ids(0, 1)
            age = 0.0
            if oldest:
                enqueued = self.redis.hget(f"rq:job:{oldest[0]}", "enqueued_at")
                age = max(0.0, now - _parse_rq_time(enqueued)) if enqueued else 0.0
            gauge.add_metric([queue.name], age)
        yield gauge


def _parse_rq_time(raw: bytes | str) -> float:
    from rq.utils import utcparse

    text = raw.decode() if isinstance(raw, bytes) else raw
    parsed = utcparse(text)
    if parsed.tzinfo is None:  # RQ writes UTC without an offset
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


# --- exposition ----------------------------------------------------------------------------------------------------
def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def render(extra: Iterable[Any] = ()) -> bytes:
    """The text exposition of this process (or of all processes sharing the multiprocess directory) plus `extra`."""
    if multiprocess_dir():
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        body = generate_latest(merged)
    else:
        body = generate_latest(REGISTRY)
    collectors = list(extra)
    if collectors:
        registry = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            registry.register(collector)
        body += generate_latest(registry)
    return body


def serve_worker_metrics(port: int, extra: Iterable[Any] = (), host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """`/metrics` of a worker process on `port` (0: any free one), served by daemon threads (the worker's threads
    never wait on it). Returns the server: `server_address` has the port, `shutdown()` stops it."""

    collectors = list(extra)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            try:
                body = render(collectors)
            except Exception:
                logger.exception("metrics: rendering failed")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes every few seconds would drown the worker's log."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    logger.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server


def serve_for_worker(
    ctx: Any, port: int | None = None, env: dict[str, str] | None = None
) -> ThreadingHTTPServer | None:
    """`/metrics` of a worker process on `port` (`oprover worker --metrics-port`), else on OPROVER_METRICS_PORT
    (unset: none), with its pool's and memory's numbers.

    A port already taken costs this worker its /metrics, not its work: it says so and goes on.
    """
    raw = str(port) if port is not None else (env if env is not None else os.environ).get(METRICS_PORT_ENV, "")
    raw = raw.strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        logger.error("metrics: %s=%r is not a port number; this worker serves no /metrics", METRICS_PORT_ENV, raw)
        return None
    extra: list[Any] = []
    if getattr(ctx, "checker", None) is not None:
        extra.append(LeanPoolCollector(ctx.checker.pool))
    if getattr(ctx, "memory", None) is not None:
        extra.append(MemorySizeCollector(ctx.memory))
    try:
        return serve_worker_metrics(port, extra)
    except OSError as exc:
        logger.warning("metrics: cannot listen on port %d (%s); this worker serves no /metrics", port, exc)
        return None


def mark_process_dead(pid: int | None = None) -> None:
    """Multiprocess mode: drop this process's live gauges (in-flight requests) when it exits."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
