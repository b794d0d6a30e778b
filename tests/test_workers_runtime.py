"""The runtime at real latencies and the shipped defaults: Redis clients, the worker process, /readyz.

Every test here talks to a real redis-server and, where a worker is involved, to real `oprover` processes and the
stand-in generator (a real HTTP server: its answers are not a model's). Settings are the shipped defaults unless a
test says why it lowers one.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import redis
from rq import Worker
from rq.utils import now, utcformat

from services import redis_clients
from services.store import JobStore, pop_verify_result
from standins.openai_server import StandinServer
from tests.conftest import free_port
from tests.harness import ServiceHarness
from workers.runner import SlotWorker

STATEMENT = "theorem runtime_{i} (a b : ℕ) (h : a = b + {i}) : a - b = {i} := by sorry"
NO_CODE = {"content": "[standin] I have no proof to offer."}


# --- Redis clients ------------------------------------------------------------------------------------------------
def test_blocking_reads_longer_than_five_seconds_end_by_redis_not_by_the_socket(redis_url: str) -> None:
    """redis-py 8's default 5 s socket timeout cut every longer BLPOP/XREAD BLOCK with `Timeout reading`."""
    client = redis_clients.sync_client(redis_url, name="test", max_connections=2, block_s=7)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both at once, on two connections of the pool
        popped = pool.submit(client.blpop, ["runtime:nothing"], timeout=6)
        read = pool.submit(client.xread, {"runtime:stream": "0-0"}, block=6500)
        assert popped.result() is None
        assert read.result() == []
    assert time.monotonic() - started >= 6.5
    client.close()


def test_the_gateways_async_client_waits_for_a_verify_result_across_blocks(redis_url: str) -> None:
    """A check longer than one block: the result pushed after 8 s arrives, with blocks of 3 s each."""

    async def scenario() -> dict | None:
        client = redis_clients.async_client(redis_url, name="test", max_connections=4, block_s=3)
        pusher = redis.Redis.from_url(redis_url)
        try:
            late = asyncio.get_running_loop().call_later(8, lambda: pusher.rpush("oprover:verify:vfy_late", '{"v": 1}'))
            result = await pop_verify_result(client, "vfy_late", 20, block_s=3)
            late.cancel()
            return result
        finally:
            await client.aclose()
            pusher.close()

    assert asyncio.run(scenario()) == {"v": 1}


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a Redis that hangs (or a black-holed address)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_hanging_redis_fails_a_plain_command_instead_of_hanging_it(silent_server: str) -> None:
    client = redis_clients.sync_client(silent_server, name="test", max_connections=2)
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.get("anything")
    elapsed = time.monotonic() - started
    # One COMMAND_TIMEOUT_S: a timeout is not retried (redis-py's defaults took 45 s here).
    assert redis_clients.COMMAND_TIMEOUT_S <= elapsed < 2 * redis_clients.COMMAND_TIMEOUT_S


def test_the_gateway_answers_a_wait_longer_than_five_seconds(harness: ServiceHarness) -> None:
    """`?wait=` blocks on the job's event stream; with no worker running it must end as 202 after the wait,
    not as 503 `Timeout reading from redis` after five seconds."""
    harness.start_gateway()
    with httpx.Client(base_url=harness.gateway_url, timeout=60) as client:
        started = time.monotonic()
        response = client.post("/v1/prove?wait=8", json={"formal_statement": STATEMENT.format(i=1)})
        elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    assert elapsed >= 8


def test_the_gateway_keeps_an_idle_connection_open_longer_than_a_proxy_does(harness: ServiceHarness) -> None:
    """uvicorn's 5 s keep-alive closed a client's pooled connection under it; the gateway keeps it 75 s."""
    harness.start_gateway()
    conn = http.client.HTTPConnection("127.0.0.1", int(harness.gateway_url.rsplit(":", 1)[1]), timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b'{"status":"ok"}'
        time.sleep(7)  # idle longer than uvicorn's default keep-alive
        conn.request("GET", "/healthz")  # on the same connection: closed by the server, this raised
        assert conn.getresponse().read() == b'{"status":"ok"}'
    finally:
        conn.close()


# --- the generate worker at its shipped concurrency ---------------------------------------------------------------
def _shipped_defaults(harness: ServiceHarness) -> None:
    """Drop the harness's lowered settings: the worker and generator client run as shipped."""
    for name in list(harness.env):
        if name.startswith(("OPROVER_WORKER_", "OPROVER_GENERATOR_", "OPROVER_PROVE_", "OPROVER_QDRANT_TOP_K")):
            del harness.env[name]


def test_a_generate_worker_holds_64_generations_in_flight_each_requested_once(harness: ServiceHarness) -> None:
    """`oprover worker generate` with its defaults (64 slots) against a generator taking 8 s per completion:
    64 requests in flight at once, 80 jobs each requested exactly once, and a clean log. Before, 64 RQ workers
    as threads exhausted redis-py's 100-connection pool: threads died with `Too many connections` and the
    generator saw the same request several times."""
    _shipped_defaults(harness)
    harness._generator = StandinServer(capacity=64, latency_s=8.0)
    harness.env["OPROVER_GENERATOR_URL"] = harness._generator.url
    harness.generator.script([], default=NO_CODE)
    harness.start_gateway()
    worker = harness._spawn("generate-worker", "worker", "generate")  # no --concurrency: the default, 64
    harness._wait(lambda: harness.worker_registered("generate", worker.pid), "generate-worker", 60, worker)

    with harness.client() as client:
        ids = [
            client.post("/v1/prove", json={"formal_statement": STATEMENT.format(i=i), "rounds": 1}).json()["id"]
            for i in range(80)
        ]
    most_in_flight = 0
    deadline = time.monotonic() + 60
    while harness.generator.stats()["served"] < 80:
        assert time.monotonic() < deadline, harness.log("generate-worker")[-4000:]
        most_in_flight = max(most_in_flight, harness.generator.stats()["active"])
        time.sleep(0.2)
    assert most_in_flight == 64

    for job_id in ids:
        assert harness.wait_job(job_id, timeout_s=30)["status"] == "failed"  # one round, no code: chain over
    request_ids = collections.Counter(r["headers"]["x-request-id"] for r in harness.generator.requests())
    assert sorted(request_ids) == sorted(f"{job_id}-c0-r1" for job_id in ids)
    assert set(request_ids.values()) == {1}, request_ids.most_common(3)

    # Connections of the worker process: its pool (one per slot plus its own threads) and its heartbeat.
    clients = harness.redis.client_list()
    held = [c for c in clients if c["name"].startswith(("oprover-worker", "oprover-generate"))]
    assert len(held) <= redis_clients.worker_pool_size(64) + 2
    log = harness.log("generate-worker")
    for problem in ("Too many connections", "Timeout reading", "Traceback", "ERROR"):
        assert problem not in log, log[-4000:]


def test_a_maintenance_lock_left_behind_does_not_stop_retries_of_abandoned_rounds(harness: ServiceHarness) -> None:
    """A process killed during RQ's registry cleanup leaves `rq:clean_registries:<queue>` behind with RQ's
    15-minute expiry; until it expired, no worker noticed rounds whose worker had died, and a job stayed
    `queued` for 11 minutes. Settings lowered: abandoned after 3 s, maintenance every second (harness)."""
    harness.generator.script([{"match": "runtime_7", "delay_s": 60, "times": 1, **NO_CODE}], default=NO_CODE)
    harness.start_gateway()
    harness.start_worker("generate", name="generate-a")
    job = harness.submit({"formal_statement": STATEMENT.format(i=7), "rounds": 1})
    deadline = time.monotonic() + 20
    while not harness.generator.requests():
        assert time.monotonic() < deadline, harness.log("generate-a")[-3000:]
        time.sleep(0.05)
    harness.kill("generate-a")  # SIGKILL mid-generation
    harness.redis.set("rq:clean_registries:generate", 1, ex=899)  # as the dying process would have left it

    harness.start_worker("generate", name="generate-b")
    final = harness.wait_job(job["id"], timeout_s=30)
    assert final["status"] == "failed"  # the round ran again on generate-b, found no code, and the chain ended
    assert harness.redis.ttl("rq:clean_registries:generate") <= 10


def test_a_cleanup_that_fails_releases_its_maintenance_lock(redis_url: str) -> None:
    """RQ takes the cleanup lock and releases it only when the cleanup returns: a cleanup that raised (here a
    started-registry entry whose job record cannot be read) left the lock for 15 minutes, and with it every
    abandoned round unretried. The worker's cleanup releases it whatever happens."""
    client = redis_clients.sync_client(redis_url, name="test", max_connections=4)
    client.zadd("rq:wip:generate", {"broken-job:exec": 1})
    client.hset("rq:job:broken-job", mapping={"status": "started", "created_at": "not a date", "data": "{}"})
    worker = SlotWorker(
        ["generate"],
        name="generate.test.1.abc",
        connection=client,
        heartbeat_connection=client,
        concurrency=1,
        abandoned_after_s=30,
        maintenance_interval_s=30,
    )
    with pytest.raises(ValueError):
        worker.clean_registries()
    assert client.exists("rq:clean_registries:generate") == 0
    client.close()


def test_a_worker_started_while_redis_is_down_registers_once_it_is_up(harness: ServiceHarness, tmp_path) -> None:
    """A worker must not die when Redis is away at its start (or goes away half-way through it): it retries, and
    registers once Redis answers. Before, RQ's first command raised and the process exited; a birth interrupted
    half-way was refused on retry ("There exists an active worker named ...")."""
    port = free_port()
    _ = harness.generator  # the worker needs a generator URL to start
    harness.env["OPROVER_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    worker = harness._spawn("generate-worker", "worker", "generate", "--concurrency", "2", "--no-memory")
    harness._wait(lambda: "Redis unavailable at start" in harness.log("generate-worker"), "generate-worker", 30, worker)
    time.sleep(2)  # a retry or two more, still alive
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        harness._wait(
            lambda: any(w.pid == worker.pid for w in Worker.all(connection=client)), "generate-worker", 30, worker
        )
    finally:
        client.close()
        harness.close()
        server.terminate()
        server.wait(timeout=10)


# --- /readyz ----------------------------------------------------------------------------------------------------------
def test_readyz_counts_only_live_workers(harness: ServiceHarness) -> None:
    """A worker killed without a goodbye keeps its RQ registration for minutes; /readyz counted 101 generate
    workers after an unclean stop. It counts worker processes that beat recently, and their job slots."""
    stale = Worker(["generate"], name="generate.gone.1.abc", connection=harness.redis)
    stale.register_birth()
    harness.redis.hset(stale.key, "last_heartbeat", utcformat(now() - timedelta(minutes=5)))
    harness.start_gateway()
    with harness.client() as client:
        check = client.get("/readyz").json()["checks"]["generate_workers"]
    assert check == {"ok": False, "count": 0, "slots": 0}

    harness.start_worker("generate", concurrency=5)
    with harness.client() as client:
        check = client.get("/readyz").json()["checks"]["generate_workers"]
        metrics = client.get("/metrics").text
    assert check == {"ok": True, "count": 1, "slots": 5}
    assert 'oprover_worker_slots{queue="generate"} 5.0' in metrics


def test_a_stopped_worker_finishes_its_jobs_in_flight_and_says_goodbye(harness: ServiceHarness) -> None:
    """SIGTERM: no new jobs, the ones running finish (their rounds are recorded), the registration is gone."""
    harness.generator.script([], default={**NO_CODE, "delay_s": 3})
    harness.start_gateway()
    harness.start_worker("generate", concurrency=4)
    jobs = [harness.submit({"formal_statement": STATEMENT.format(i=i), "rounds": 1}) for i in (20, 21)]
    deadline = time.monotonic() + 20
    while len(harness.generator.requests()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process = harness.processes["generate-worker"]
    process.terminate()
    assert process.wait(timeout=30) == 0
    for job in jobs:
        assert JobStore(harness.redis).get(job["id"])["status"] == "failed"  # finished, not cut off
    assert not [w for w in Worker.all(connection=harness.redis) if w.name.startswith("generate.")]
    assert "stopped" in harness.log("generate-worker")


def test_sse_stream_sends_keep_alive_comments_while_quiet(harness: ServiceHarness) -> None:
    """No event for 20 s (no worker): the stream stays open and carries a `: ping` comment, so a proxy does not
    close it; before, the event read hit the 5 s socket timeout and the stream ended with an error."""
    harness.start_gateway()
    job = harness.submit({"formal_statement": STATEMENT.format(i=30)})
    received = b""
    with httpx.stream("GET", f"{harness.gateway_url}/v1/prove/{job['id']}/events", timeout=30) as response:
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["cache-control"] == "no-cache"
        started = time.monotonic()
        for chunk in response.iter_bytes():
            received += chunk
            if b": ping" in received or time.monotonic() - started > 20:
                break
    assert b"event: job.created" in received
    assert b": ping" in received
    assert "Timeout reading" not in harness.log("gateway")
