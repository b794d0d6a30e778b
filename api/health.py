"""`/healthz` (this process is alive), `/readyz` (everything a proof needs is reachable), `/metrics`."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from rq import Worker
from rq.utils import now

from api.deps import Gateway, GatewayDep
from services import keys, lean_workers

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# A worker counts as live while its last heartbeat is this recent. Workers beat every few seconds (every 2 s while
# idle, every 10 s at most while all their slots are busy: workers/runner.py); a worker killed without a goodbye
# keeps its RQ registration until its record expires a minute or more later, and must not count meanwhile.
WORKER_LIVE_S = 30


def _workers(gateway: Gateway) -> dict[str, dict[str, int]]:
    """Live worker processes and their job slots, per queue."""
    counts = {name: {"count": 0, "slots": 0} for name in (keys.GENERATE_QUEUE, keys.VERIFY_QUEUE, keys.MEMORY_QUEUE)}
    workers = [
        worker
        for worker in Worker.all(connection=gateway.redis)
        if worker.last_heartbeat is not None and (now() - worker.last_heartbeat).total_seconds() < WORKER_LIVE_S
    ]
    with gateway.redis.pipeline(transaction=False) as pipe:
        for worker in workers:
            pipe.hget(worker.key, "concurrency")
        slots = pipe.execute()
    for worker, concurrency in zip(workers, slots, strict=True):
        for name in worker.queue_names():
            if name in counts:
                counts[name]["count"] += 1
                counts[name]["slots"] += int(concurrency or 1)
    return counts


def _generator(gateway: Gateway) -> dict[str, Any]:
    """Reachability of the model server: its /health when it has one (SGLang, vLLM), else /v1/models."""
    url = gateway.settings.generator.url
    if url is None:
        return {"ok": False, "error": "OPROVER_GENERATOR_URL is not set"}
    base = str(url).rstrip("/")
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    headers = {}
    if gateway.settings.generator.api_key:
        headers["Authorization"] = f"Bearer {gateway.settings.generator.api_key}"
    try:
        with httpx.Client(timeout=3.0, headers=headers) as client:
            health = client.get(f"{root}/health")
            if health.status_code == 200:
                return {"ok": True, "url": base}
            models = client.get(f"{base}/models")
            if models.status_code == 200:
                return {"ok": True, "url": base}
            return {"ok": False, "url": base, "error": f"HTTP {models.status_code} from /models"}
    except httpx.HTTPError as exc:
        return {"ok": False, "url": base, "error": f"{type(exc).__name__}: {exc}"}


def readiness(gateway: Gateway) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        gateway.redis.ping()
        checks["redis"] = {"ok": True}
    except Exception as exc:
        checks["redis"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return _labelled(gateway, {"status": "unavailable", "checks": checks})
    workers = _workers(gateway)
    for check, queue in (
        ("generate_workers", keys.GENERATE_QUEUE),
        ("verify_workers", keys.VERIFY_QUEUE),
        ("memory_worker", keys.MEMORY_QUEUE),
    ):
        checks[check] = {"ok": workers[queue]["count"] > 0, **workers[queue]}
    lean = lean_workers.live(gateway.redis)
    checks["lean"] = {"ok": bool(lean), "workers": lean}
    checks["generator"] = _generator(gateway)
    ok = all(check["ok"] for check in checks.values())
    return _labelled(gateway, {"status": "ready" if ok else "unavailable", "checks": checks})


def _labelled(gateway: Gateway, report: dict[str, Any]) -> dict[str, Any]:
    """`oprover up --demo`: whoever looks at the service learns that it runs on stand-ins."""
    if gateway.settings.api.demo:
        from api.demo import BANNER

        report.update(demo=True, banner=BANNER)
    return report


@router.get("/readyz")
async def readyz(gateway: GatewayDep) -> JSONResponse:
    report = await run_in_threadpool(readiness, gateway)
    return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)


class _QueueCollector:
    """Queue depths and worker counts, read from Redis at scrape time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Any:
        depth = GaugeMetricFamily("oprover_queue_jobs", "RQ jobs waiting per queue", labels=["queue"])
        running = GaugeMetricFamily("oprover_queue_running", "RQ jobs running per queue", labels=["queue"])
        workers = GaugeMetricFamily("oprover_workers", "Live worker processes per queue", labels=["queue"])
        slots = GaugeMetricFamily("oprover_worker_slots", "Job slots of the live workers per queue", labels=["queue"])
        per_queue = _workers(self.gateway)
        for name in per_queue:
            queue = self.gateway.dispatch.queue(name)
            depth.add_metric([name], queue.count)
            # without cleanup: RQ's cleanup of abandoned jobs belongs to the workers' maintenance, under its lock
            running.add_metric([name], queue.started_job_registry.get_job_count(cleanup=False))
            workers.add_metric([name], per_queue[name]["count"])
            slots.add_metric([name], per_queue[name]["slots"])
        yield from (depth, running, workers, slots)


@router.get("/metrics")
async def metrics(gateway: GatewayDep) -> Response:
    """This process's metrics (services/metrics.py) and the queues' state, read from Redis now."""
    from services import metrics as service_metrics

    collectors = [_QueueCollector(gateway), service_metrics.QueueAgeCollector(gateway.redis)]
    body = await run_in_threadpool(service_metrics.render, collectors)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
