"""Runs the service's real processes for a test: gateway, workers, stand-in generator, stand-in Lean REPL.

Every process is started the way an operator starts it (`python -m api.cli ...` with `OPROVER_*` variables),
logs to a file in the test's tmp dir, and is stopped at teardown. The stand-ins are the test's, never the
model's or Lean's: standins/.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from rq import Queue, Worker

from services.domain import TERMINAL_STATUSES
from standins.fake_repl import lean_cmd, write_table
from standins.fake_replay import replay_cmd, write_replay_table
from standins.openai_server import StandinServer

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {status.value for status in TERMINAL_STATUSES}


# Ports for the servers tests start come from below the kernel's ephemeral range (32768-60999 by default), where
# no client connection's local port is ever picked, and each pytest-xdist worker has a slice of its own: a port
# handed out here is not handed out again by this session's other workers, nor taken by a connection, before the
# server it was meant for binds it. Within a slice ports are handed out in turn from a random start (concurrent
# sessions on one machine rarely start at the same place), and a port is only handed out if it binds now.
_PORT_BASE, _PORT_SLICE, _PORT_SLICES = 16384, 2048, 8


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # unset without -n: the first slice
    index = int(worker.removeprefix("gw")) % _PORT_SLICES if worker.startswith("gw") else 0
    start = _PORT_BASE + index * _PORT_SLICE
    return range(start, start + _PORT_SLICE)


_ports = _port_slice()
_next_port = random.randrange(len(_ports))


def _binds(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(count: int = 1) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1 (`oprover up --port P` also serves P+1 and P+2)."""
    global _next_port
    for _ in range(len(_ports)):
        first = _ports[_next_port % len(_ports)]
        _next_port = (_next_port + count) % len(_ports)
        if first + count <= _ports.stop and all(_binds(first + k) for k in range(count)):
            return first
    raise RuntimeError(f"no {count} free consecutive ports in {_ports}")


class ServiceHarness:
    def __init__(self, *, redis_url: str, workdir: Path) -> None:
        self.redis_url = redis_url
        self.workdir = workdir
        self.redis = redis.Redis.from_url(redis_url)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._generator: StandinServer | None = None
        self.gateway_url: str | None = None
        self.env: dict[str, str] = {
            "OPROVER_REDIS_URL": redis_url,
            "OPROVER_QDRANT_PATH": str(workdir / "qdrant"),
            "OPROVER_GENERATOR_BACKOFF_BASE_S": "0",
            "OPROVER_GENERATOR_MAX_RETRIES": "2",
            "OPROVER_GENERATOR_RETRY_BUDGET_S": "10",
            "OPROVER_GENERATOR_REQUEST_TIMEOUT_S": "30",
            "OPROVER_WORKER_MAINTENANCE_INTERVAL_S": "1",
            "OPROVER_WORKER_ABANDONED_AFTER_S": "3",
            "OPROVER_WORKER_RETRY_INTERVALS_S": "0",
            "OPROVER_LEAN_TIMEOUT_S": "10",
            "OPROVER_LEAN_POOL_SIZE": "2",
            "OPROVER_PROVE_ROUNDS": "2",
            "OPROVER_QDRANT_TOP_K": "2",
        }
        self.lean_rules([{"match": "PASS_ME", "outcome": "pass"}])

    # --- stand-ins --------------------------------------------------------------------------------------------
    @property
    def generator(self) -> StandinServer:
        if self._generator is None:
            self._generator = StandinServer()
            self.env["OPROVER_GENERATOR_URL"] = self._generator.url
        return self._generator

    def lean_rules(self, rules: list[dict[str, Any]], **options: Any) -> Path:
        """Write the stand-in REPL's verdict table; workers started afterwards use it."""
        options.setdefault("default", "error")
        kernel_rules = options.pop("kernel_rules", None)
        table = write_table(self.workdir / "repl-table.json", rules, **options)
        self.env["OPROVER_LEAN_CMD"] = lean_cmd(table)
        # the stand-in kernel replay, which alone decides a pass: accepts every constant unless `kernel_rules` says
        self.env["OPROVER_LEAN_REPLAY_CMD"] = replay_cmd(
            write_replay_table(self.workdir / "replay-table.json", kernel_rules)
        )
        return table

    # --- processes ----------------------------------------------------------------------------------------------
    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it until it exits
        process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", *args],
            cwd=ROOT,
            env={**os.environ, **self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_gateway(self, **env: str) -> str:
        _ = self.generator  # the gateway's /readyz reports on it
        port = free_port()
        self._spawn("gateway", "serve", "--port", str(port), env=env)
        self.gateway_url = f"http://127.0.0.1:{port}"
        self._wait(lambda: httpx.get(f"{self.gateway_url}/healthz", timeout=1).status_code == 200, "gateway", 20)
        return self.gateway_url

    def start_worker(
        self, kind: str, *, name: str | None = None, concurrency: int = 4, **env: str
    ) -> subprocess.Popen[bytes]:
        if kind == "generate":
            _ = self.generator
        name = name or f"{kind}-worker"
        args = ["worker", kind, "--concurrency", str(concurrency)]
        process = self._spawn(name, *args, env=env)
        self._wait(lambda: self.worker_registered(kind, process.pid), name, 30, process)
        return process

    def worker_registered(self, kind: str, pid: int) -> bool:
        """Whether the worker process `pid` has registered its RQ worker (one per process, named after its pid)."""
        return any(w.name.startswith(f"{kind}.") and w.pid == pid for w in Worker.all(connection=self.redis))

    def _wait(self, ready: Any, name: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log(name)[-4000:]}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready after {timeout_s} s:\n{self.log(name)[-4000:]}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._generator is not None:
            self._generator.close()
        self.redis.close()

    # --- the gateway as a client sees it -------------------------------------------------------------------------
    def client(self, **kwargs: Any) -> httpx.Client:
        assert self.gateway_url, "start_gateway() first"
        return httpx.Client(base_url=self.gateway_url, timeout=30, **kwargs)

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.client() as client:
            response = client.post("/v1/prove", json=body)
        assert response.status_code == 202, response.text
        return response.json()

    def wait_job(self, job_id: str, timeout_s: float = 60, statuses: set[str] = TERMINAL) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while True:
                job = client.get(f"/v1/prove/{job_id}").json()
                if job["status"] in statuses:
                    return job
                if time.monotonic() > deadline:
                    logs = "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.processes)
                    raise AssertionError(f"job {job_id} still {job['status']}:\n{json.dumps(job)[:3000]}\n{logs}")
                time.sleep(0.1)

    def wait_running(self, queue_name: str, timeout_s: float = 20) -> None:
        """Until a step of `queue_name` is executing (to interrupt it at a known point)."""
        registry = Queue(queue_name, connection=self.redis).started_job_registry
        deadline = time.monotonic() + timeout_s
        while registry.get_job_count(cleanup=False) == 0:
            assert time.monotonic() < deadline, f"no {queue_name} step started within {timeout_s} s"
            time.sleep(0.05)

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.generator.requests() if "messages" in r["body"]]


def stop_up(process: subprocess.Popen) -> None:
    """Stop an `oprover up` as Ctrl-C does (children finish what is in flight), a second Ctrl-C if that hangs,
    SIGKILL as the last resort. Its children run in sessions of their own, so they are looked up first and killed
    by pid if `up` could not stop them: a test must never leave a worker behind."""
    children = []
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(process.pid).children(recursive=True)
    for sig, wait_s in ((signal.SIGINT, 45), (signal.SIGINT, 20)):
        if process.poll() is not None:
            break
        process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.is_running():
                child.kill()


class OproverUp:
    """`oprover up` as a user starts it: the shipped defaults, with only the parts it needs pointed at.

    Exactly OPROVER_REDIS_URL, OPROVER_GENERATOR_URL, OPROVER_LEAN_CMD, OPROVER_LEAN_REPLAY_CMD (the stand-in
    kernel replay, accepting every constant), OPROVER_LEAN_CWD and OPROVER_QDRANT_PATH are set; every other
    OPROVER_* variable of the test's own environment is removed, so no lowered concurrency or shortened interval
    leaks in. It runs in `workdir` (so no `.env` of the repository is read), on a free port, and
    `up` and its children (gateway, generate worker, verify worker) all print into `workdir/up.log`.
    """

    def __init__(self, *, redis_url: str, workdir: Path, generator_url: str, lean_cmd: str) -> None:
        self.workdir = workdir
        self.log_path = workdir / "up.log"
        (workdir / "lean-project").mkdir(exist_ok=True)
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("OPROVER_")}
        self.env.update(
            {
                "OPROVER_REDIS_URL": redis_url,
                "OPROVER_GENERATOR_URL": generator_url,
                "OPROVER_LEAN_CMD": lean_cmd,
                "OPROVER_LEAN_REPLAY_CMD": replay_cmd(write_replay_table(workdir / "replay-table.json")),
                "OPROVER_LEAN_CWD": str(workdir / "lean-project"),
                "OPROVER_QDRANT_PATH": str(workdir / "qdrant"),
            }
        )
        self.port = free_port(3)  # `up` puts its workers' /metrics on the next two ports
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 90) -> None:
        """Start `oprover up` and wait until /readyz says every part is reachable."""
        with open(self.log_path, "ab") as log:  # the children keep their own copies of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "up", "--port", str(self.port)],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"oprover up exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"oprover up not ready after {ready_timeout_s} s:\n{self.log()[-4000:]}")

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, **kwargs)

    # --- its log ------------------------------------------------------------------------------------------------
    def log(self, since: int = 0) -> str:
        """What `up` and its children printed, from byte offset `since` (a `log_mark()`)."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def log_mark(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    # --- stop, as Ctrl-C does -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ctrl-C (children finish what is in flight), a second Ctrl-C if that hangs, SIGKILL as the last resort.

        The children run in sessions of their own, so they are looked up first and killed by pid if `up` could
        not stop them: a test must never leave a worker behind on the shared Redis.
        """
        if self.process is not None:
            stop_up(self.process)
