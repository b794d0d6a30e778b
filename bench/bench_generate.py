"""Does the service keep the GPU busy? A fixed-capacity stand-in generator, and proof jobs through the real service.

The stand-in (standins/openai_server.py, capacity mode) serves at most C requests at once, each taking L
seconds, and queues the rest: a GPU server reduced to its throughput. In front of it run the real processes: a
redis-server, the gateway (`oprover serve`) and W generate workers (`oprover worker generate --concurrency N`).
Jobs go in through `POST /v1/prove` like a client's.

Two phases:

1. light load: one job at a time (one chain, one round); the time from submitting the job to its attempt being
   stored, minus L, is what the service adds to every round (gateway, RQ pickup, prompt, HTTP, extraction, store);
2. plentiful jobs: J jobs of k chains submitted at once (W x N > C requests in flight); the stand-in reports how
   much of its C x time was busy. "Steady" is the window in which work was queued at the stand-in (jobs were
   plentiful), "whole run" includes ramp-up and the final drain.

No verify worker runs: each job is k generations, then waits for Lean. The stand-in's answers are not a model's.

Besides the GPU's busy fraction it reports what the worker processes cost: Redis connections (peak), Redis
commands per second while idle, worker CPU seconds during the saturated phase, generations requested more than
once, and error lines in the workers' logs. `--service-root` runs the service's processes from another checkout,
to compare two designs on the same machine and load.

    python bench/bench_generate.py                  # C=32, L=1 s, W=2 x N=64 (the default), J=160 x k=4
    python bench/bench_generate.py --quick          # smaller, for a smoke run
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from rq import Worker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from standins.openai_server import StandinServer  # noqa: E402 - after the path set-up above

STATEMENT = "theorem bench_{i} (a b : ℝ) (h : a = b + {i}) : a - b = {i} := by sorry"
ANSWER = (
    "Plan: rewrite and close.\n\n```lean4\ntheorem bench (a b : ℝ) (h : a = b + 1) : a - b = 1 := by\n  linarith\n```\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """redis-server, gateway and generate workers as child processes of this script."""

    def __init__(self, workdir: Path, generator_url: str, root: Path = ROOT) -> None:
        self.workdir = workdir
        self.root = root
        self.processes: list[subprocess.Popen[bytes]] = []
        self.worker_pids: list[int] = []
        redis_port = free_port()
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (make install, or apt-get install redis-server)")
        self._spawn(
            "redis",
            [binary, "--port", str(redis_port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        )
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.redis = redis.Redis.from_url(self.redis_url)
        self._wait(lambda: self.redis.ping(), "redis-server")
        self.env = {
            **os.environ,
            "OPROVER_REDIS_URL": self.redis_url,
            "OPROVER_GENERATOR_URL": generator_url,
            "OPROVER_QDRANT_PATH": str(workdir / "qdrant"),
            "OPROVER_PROVE_ROUNDS": "1",
        }
        self.gateway = ""

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it
        process = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes.append(process)
        return process

    def _wait(self, ready: Any, what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.1)
        raise SystemExit(f"{what} not ready after {timeout_s:g}s; logs in {self.workdir}")

    def start_gateway(self) -> None:
        port = free_port()
        self._spawn("gateway", [sys.executable, "-m", "api.cli", "serve", "--port", str(port)], self.env)
        self.gateway = f"http://127.0.0.1:{port}"
        self._wait(lambda: httpx.get(f"{self.gateway}/healthz", timeout=1).status_code == 200, "gateway")

    def start_generate_workers(self, workers: int, concurrency: int) -> None:
        for n in range(workers):
            cmd = [sys.executable, "-m", "api.cli", "worker", "generate", "--concurrency", str(concurrency)]
            self.worker_pids.append(self._spawn(f"generate-{n}", [*cmd, "--no-memory"], self.env).pid)

        def registered() -> bool:  # every process has registered (one RQ worker per process, or one per thread)
            pids = {w.pid for w in Worker.all(connection=self.redis) if w.name.startswith("generate.")}
            return set(self.worker_pids) <= pids

        self._wait(registered, "generate workers", 60)

    def worker_cpu_s(self) -> float:
        """User + system CPU seconds the generate worker processes used so far."""
        ticks = 0
        for pid in self.worker_pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def redis_info(self) -> dict[str, int]:
        stats = self.redis.info()
        return {"clients": int(stats["connected_clients"]), "commands": int(stats["total_commands_processed"])}

    def worker_log_problems(self) -> dict[str, int]:
        text = "".join(
            (self.workdir / f"generate-{n}.log").read_text(errors="replace") for n in range(len(self.worker_pids))
        )
        return {problem: text.count(problem) for problem in ("Too many connections", "Timeout reading", "Traceback")}

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.redis.close()


def submit(client: httpx.Client, i: int, attempts: int) -> str:
    body = {"formal_statement": STATEMENT.format(i=i), "rounds": 1, "attempts": attempts, "top_k": 0}
    response = client.post("/v1/prove", json=body)
    response.raise_for_status()
    return response.json()["id"]


def generated(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/prove/{job_id}").json().get("attempts") or []


def light_phase(service: Service, jobs: int, latency_s: float) -> list[float]:
    """Seconds the service adds to one round at light load (submit -> attempt stored, minus L)."""
    added: list[float] = []
    with httpx.Client(base_url=service.gateway, timeout=30) as client:
        for i in range(jobs):
            started = time.monotonic()
            job_id = submit(client, 10_000 + i, 1)
            while not generated(client, job_id):
                time.sleep(0.005)
            added.append(time.monotonic() - started - latency_s)
    return added


def idle_phase(service: Service, seconds: float = 10.0) -> float:
    """Redis commands per second while the workers wait for jobs (heartbeats, polls, maintenance)."""
    before = service.redis_info()["commands"]
    time.sleep(seconds)
    return (service.redis_info()["commands"] - before - 1) / seconds


def saturation_phase(
    service: Service, standin: StandinServer, jobs: int, attempts: int, capacity: int
) -> dict[str, Any]:
    total = jobs * attempts
    standin.reset()
    standin.script([], default={"content": ANSWER})
    samples: list[dict[str, Any]] = []
    peak_clients = 0
    cpu_before = service.worker_cpu_s()
    with httpx.Client(base_url=service.gateway, timeout=60) as client:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda i: submit(client, i, attempts), range(jobs)))
        submitted_s = time.monotonic() - started
        while True:
            snap = standin.stats()
            samples.append(snap)
            peak_clients = max(peak_clients, service.redis_info()["clients"])
            if snap["served"] >= total:
                break
            if time.monotonic() - started > 600:
                raise SystemExit(f"only {snap['served']} of {total} generations after 600 s; logs in {service.workdir}")
            time.sleep(0.2)
        elapsed_s = time.monotonic() - started
        generate_ms = [
            a["timings"]["generate_ms"]
            for job_id in ids[:: max(1, jobs // 50)]
            for a in generated(client, job_id)
            if a.get("timings", {}).get("generate_ms") is not None
        ]
    # Steady state: from the first sample with every slot busy to the last with work queued behind them.
    steady = [s for s in samples if s["waiting"] > 0 or s["active"] >= capacity]
    steady_fraction = None
    if len(steady) >= 2:
        first, last = steady[0], steady[-1]
        window = last["now_s"] - first["now_s"]
        if window > 0:
            steady_fraction = (last["busy_slot_s"] - first["busy_slot_s"]) / (capacity * window)
    final = samples[-1]
    request_ids = collections.Counter(r["headers"].get("x-request-id") for r in standin.requests())
    return {
        "peak_clients": peak_clients,
        "worker_cpu_s": service.worker_cpu_s() - cpu_before,
        "requested_twice": sum(n - 1 for n in request_ids.values()),
        "generations": total,
        "submit_s": submitted_s,
        "elapsed_s": elapsed_s,
        "whole_fraction": final["busy_fraction"],
        "steady_fraction": steady_fraction,
        "steady_window_s": (steady[-1]["now_s"] - steady[0]["now_s"]) if len(steady) >= 2 else 0.0,
        "max_waiting": final["max_waiting"],
        "wait_mean_s": final["wait_mean_s"],
        "generate_ms_mean": statistics.mean(generate_ms) if generate_ms else None,
        "throughput": total / final["window_s"] if final["window_s"] else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=int, default=32, help="C: requests the stand-in serves at once")
    parser.add_argument("--latency-s", type=float, default=1.0, help="L: seconds each request takes")
    parser.add_argument("--workers", type=int, default=2, help="W: generate worker processes")
    parser.add_argument("--concurrency", type=int, default=64, help="N: generations in flight per worker")
    parser.add_argument("--jobs", type=int, default=160, help="J: proof jobs submitted at once")
    parser.add_argument("--attempts", type=int, default=4, help="k: chains per job")
    parser.add_argument("--light-jobs", type=int, default=10, help="jobs of the light-load phase")
    parser.add_argument("--quick", action="store_true", help="C=8, W=1 x N=16, J=40: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--service-root", type=Path, default=ROOT, help="run the service's processes from this checkout (A/B runs)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.capacity, args.latency_s, args.workers, args.concurrency, args.jobs, args.light_jobs = 8, 0.5, 1, 16, 40, 5

    workdir = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    standin = StandinServer(capacity=args.capacity, latency_s=args.latency_s)
    service = Service(workdir, standin.url, args.service_root.resolve())
    try:
        service.start_gateway()
        service.start_generate_workers(args.workers, args.concurrency)
        idle_commands = idle_phase(service)
        standin.script([], default={"content": ANSWER})
        light = light_phase(service, args.light_jobs, args.latency_s)
        heavy = saturation_phase(service, standin, args.jobs, args.attempts, args.capacity)
        problems = service.worker_log_problems()
    finally:
        service.close()
        standin.close()

    in_flight = args.workers * args.concurrency
    light_ms = sorted(x * 1000 for x in light)
    rows = [
        ("stand-in capacity C x latency L", f"{args.capacity} x {args.latency_s:g} s"),
        ("generate workers W x concurrency N", f"{args.workers} x {args.concurrency} = {in_flight} in flight"),
        ("jobs x chains (generations)", f"{args.jobs} x {args.attempts} = {heavy['generations']}"),
        ("busy fraction, steady (jobs plentiful)", _pct(heavy["steady_fraction"])),
        ("busy fraction, whole run (ramp + drain)", _pct(heavy["whole_fraction"])),
        ("steady window", f"{heavy['steady_window_s']:.1f} s of {heavy['elapsed_s']:.1f} s"),
        ("throughput", f"{heavy['throughput']:.1f} generations/s (ideal {args.capacity / args.latency_s:.1f})"),
        ("added latency per round, light load p50", f"{statistics.median(light_ms):.0f} ms"),
        ("added latency per round, light load max", f"{max(light_ms):.0f} ms"),
        ("queue wait at the stand-in, mean (saturated)", f"{heavy['wait_mean_s'] * 1000:.0f} ms"),
        ("client-side generate time, mean (saturated)", _ms(heavy["generate_ms_mean"])),
        ("submitting the jobs took", f"{heavy['submit_s']:.1f} s"),
        ("Redis connections, peak (all processes)", str(heavy["peak_clients"])),
        ("Redis commands/s, workers idle", f"{idle_commands:.0f}"),
        ("worker CPU during the saturated phase", f"{heavy['worker_cpu_s']:.1f} s"),
        ("generations requested more than once", str(heavy["requested_twice"])),
        ("worker log: Too many connections / Timeout reading / Traceback", " / ".join(map(str, problems.values()))),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\n| {'measure'.ljust(width)} | value |\n| {'-' * width} | --- |")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")
    target_met = heavy["steady_fraction"] is not None and heavy["steady_fraction"] >= 0.95
    print(f"\ntarget >= 95% busy while jobs are plentiful: {'met' if target_met else 'NOT met'}")
    if args.json:
        shown = vars(args) | {"json": str(args.json), "service_root": str(args.service_root)}
        args.json.write_text(
            json.dumps({"args": shown, "light_s": light, "idle_commands": idle_commands, "log": problems, **heavy})
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if target_met else 1


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


if __name__ == "__main__":
    raise SystemExit(main())
