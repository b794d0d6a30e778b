"""What the service adds to a round, where that time goes, and how the gateway holds up under load.

Everything runs here: a redis-server of its own, the gateway, one generate and one verify worker (the real
processes, started as tests/harness.py starts them), a zero-latency stand-in generator and the stand-in REPL with
zero check time (standins/: their answers are not the model's or Lean's). Rows:

* per round, service: a proof job of one chain and R rounds whose every attempt fails, so all R rounds run; its
  wall time (created -> finished) / R;
* per round, direct: the same R rounds in this process, no Redis, no RQ, no gateway: build the prompt with the
  same profile, call the same stand-in generator through the same client, extract, check with a warm
  `LeanChecker` on the same stand-in REPL; added = service - direct, and the ratio;
* where a service round's time goes, from the RQ records of its two steps (enqueued / started / ended) and the
  attempt's own timings: waiting in the queue (enqueue -> dequeue) per step, the step's own work outside the
  generator and Lean (store writes, prompt building, extraction, enqueueing the next step), the generator and
  Lean (stand-ins: ~0 here);
* gateway: `POST /v1/prove` throughput from C concurrent clients, and `GET /v1/prove/{id}` latency under C
  concurrent clients;
* end to end: N one-round jobs submitted at once, jobs/s until the last one ends.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import ServiceHarness, free_port  # noqa: E402 - after the path set-up above

STATEMENT = "theorem bench_latency (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n"
FAILING = f"```lean4\n{STATEMENT}  nlinarith [h] -- FAIL_ME\n```"
PASSING = f"```lean4\n{STATEMENT}  positivity -- PASS_ME\n```"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _between(earlier: Any, later: Any) -> float:
    """Milliseconds between two of an RQ job's timestamps (all set once the job has ended)."""
    assert earlier is not None and later is not None, "an RQ timestamp is missing"
    return float((later - earlier).total_seconds() * 1000)


class Service:
    """redis-server + ServiceHarness (gateway, workers, stand-ins) in a temp dir."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="oprover-bench-"))
        port = free_port()
        self.redis_process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
        )
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(self.redis_url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        client.close()
        self.harness = ServiceHarness(redis_url=self.redis_url, workdir=self.dir)
        self.harness.lean_rules([{"match": "PASS_ME", "outcome": "pass"}, {"match": "FAIL_ME", "outcome": "error"}])
        self.harness.generator.script(
            [{"match": "bench_e2e", "content": PASSING.replace("bench_latency", "bench_e2e")}],
            default={"content": FAILING},
        )
        self.url = self.harness.start_gateway()
        self.harness.start_worker("generate", concurrency=64)
        self.harness.start_worker("verify")

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds (user + system) each process of the service has used so far: the gateway, the two workers
        and Redis. A round's CPU time does not depend on the machine's load; its wall time does."""
        import psutil

        processes = {"gateway": self.harness.processes["gateway"].pid,
                     "generate worker": self.harness.processes["generate-worker"].pid,
                     "verify worker": self.harness.processes["verify-worker"].pid,
                     "redis-server": self.redis_process.pid}  # fmt: skip
        used = {}
        for name, pid in processes.items():
            times = psutil.Process(pid).cpu_times()
            used[name] = times.user + times.system
        return used

    def close(self) -> None:
        self.harness.close()
        self.redis_process.send_signal(signal.SIGTERM)
        self.redis_process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def service_rounds(service: Service, rounds: int, jobs: int) -> dict[str, Any]:
    """Per-round wall time of failing R-round jobs run one at a time, and where it goes."""
    from rq.job import Job

    per_round: list[float] = []
    names = ("gen wait", "gen step", "ver wait", "ver step", "generator", "Lean")
    parts: dict[str, list[float]] = {k: [] for k in names}
    conn = redis.Redis.from_url(service.redis_url)
    cpu_before = service.cpu_s()
    with httpx.Client(base_url=service.url, timeout=30) as client:
        for _ in range(jobs):
            job_id = client.post("/v1/prove", json={"formal_statement": STATEMENT, "rounds": rounds, "attempts": 1,
                                                    "top_k": 0}).json()["id"]  # fmt: skip
            job = service.harness.wait_job(job_id, timeout_s=120)
            per_round.append((job["finished_at"] - job["created_at"]) / rounds)
            for attempt in job["attempts"]:
                gen = Job.fetch(f"{job_id}-c0-r{attempt['round']}-gen", connection=conn)
                ver = Job.fetch(f"{job_id}-c0-r{attempt['round']}-ver", connection=conn)
                t = attempt["timings"]
                parts["gen wait"].append(_between(gen.enqueued_at, gen.started_at))
                parts["gen step"].append(_between(gen.started_at, gen.ended_at) - t["generate_ms"] - t["retrieve_ms"])
                parts["ver wait"].append(_between(ver.enqueued_at, ver.started_at))
                parts["ver step"].append(_between(ver.started_at, ver.ended_at) - t["verify_ms"])
                parts["generator"].append(t["generate_ms"])
                parts["Lean"].append(t["verify_ms"])
    cpu_after = service.cpu_s()
    conn.close()
    cpu_ms = {name: 1000 * (cpu_after[name] - cpu_before[name]) / (rounds * jobs) for name in cpu_after}
    return {"per_round_ms": [1000 * v for v in per_round], "parts": parts, "cpu_ms": cpu_ms}


def redis_cost(service: Service, rounds: int) -> dict[str, Any]:
    """Redis commands one service round sends (all processes), and one Redis round trip's latency here."""
    conn = redis.Redis.from_url(service.redis_url)

    def by_command() -> dict[str, int]:
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in conn.info("commandstats").items()}

    def calls() -> int:
        return sum(by_command().values())

    def reads() -> int:
        # Socket reads the server processed: one per round trip of a client (a pipeline arrives in one read),
        # whereas commandstats counts a pipeline's every command.
        return int(conn.info("stats")["total_reads_processed"])

    pings = []
    for _ in range(200):
        t0 = time.perf_counter()
        conn.ping()
        pings.append(1000 * (time.perf_counter() - t0))
    time.sleep(1.0)
    idle_before, idle_reads_before = by_command(), reads()
    time.sleep(2.0)
    idle_after, idle_reads_after = by_command(), reads()
    idle_reads_per_s = (idle_reads_after - idle_reads_before - 2) / 2.0  # less our own INFO calls
    idle = {k: (v - idle_before.get(k, 0)) / 2.0 for k, v in idle_after.items()}  # heartbeats, blocking dequeues
    idle_per_s = sum(idle.values()) - 0.5  # less our own INFO
    with httpx.Client(base_url=service.url, timeout=30) as client:
        before_by = by_command()
        before = sum(before_by.values())
        reads_before = reads()
        started = time.perf_counter()
        job_id = client.post("/v1/prove", json={"formal_statement": STATEMENT, "rounds": rounds, "attempts": 1,
                                                "top_k": 0}).json()["id"]  # fmt: skip
        polls = 0
        while conn.hget(f"oprover:job:{{{job_id}}}", "status") not in (b"failed", b"proved", b"error"):
            polls += 1
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        after_by = by_command()
        spent = sum(after_by.values()) - before - polls - 1 - 2  # our own polls and INFO calls
        trips = reads() - reads_before - polls - 1 - 2
    conn.close()
    top = {
        k: (after_by[k] - before_by.get(k, 0) - idle.get(k, 0) * elapsed - (polls if k == "hget" else 0)) / rounds
        for k in after_by
        if k != "info"
    }
    return {
        "top": ", ".join(f"{k} {v:.0f}" for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:10] if v >= 1),
        "ping_p50_ms": statistics.median(pings),
        "commands_per_round": (spent - idle_per_s * elapsed) / rounds,
        "round_trips_per_round": (trips - idle_reads_per_s * elapsed) / rounds,
        "idle_commands_per_s": idle_per_s,
    }


def direct_rounds(service: Service, rounds: int) -> dict[str, Any]:
    """The same rounds in this process over the same stand-ins: prompt, generate, extract, check."""
    from services.domain import PreviousAttempt, ProofTask, Sampling, Verdict
    from services.generation import GenerationClient, extract_code
    from services.lean import LeanChecker
    from services.prompts import load_profile
    from services.settings import load_settings

    saved = dict(os.environ)
    os.environ.update(service.harness.env)
    try:
        settings = load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    generator = GenerationClient(settings.generator)
    checker = LeanChecker(settings.lean)
    checker.start()
    profile = load_profile(settings.prompt.profile, extra_dir=settings.prompt.dir)
    times: dict[str, list[float]] = {"round": [], "prompt": [], "extract": [], "cpu": []}
    try:
        checker.check(STATEMENT + "  positivity -- PASS_ME\n", formal_statement=STATEMENT)  # warm
        previous = None
        cpu_started = time.process_time()
        for round_ in range(1, rounds + 1):
            started = time.perf_counter()
            task = ProofTask(formal_statement=STATEMENT, header=settings.lean.header, informal_statement=None,
                             retrieved=(), previous=previous, round=round_, extra={})  # fmt: skip
            messages = profile.messages(task)
            built = time.perf_counter()
            completion = generator.complete(messages, Sampling(temperature=0.6, top_p=0.95, max_tokens=1024,
                                            stop=profile.sampling.stop), request_id=f"direct-{round_}")  # fmt: skip
            got = time.perf_counter()
            extraction = extract_code(completion.content, completion.reasoning, finish_reason=completion.finish_reason,
                                      theorem_name="bench_latency", formal_statement=STATEMENT)  # fmt: skip
            extracted = time.perf_counter()
            result = checker.check(extraction.code or "", formal_statement=STATEMENT)
            times["round"].append(1000 * (time.perf_counter() - started))
            times["prompt"].append(1000 * (built - started))
            times["extract"].append(1000 * (extracted - got))
            previous = PreviousAttempt(code=extraction.code or "", feedback=result.feedback or "",
                                       verdict=Verdict(result.verdict.value))  # fmt: skip
        times["cpu"].append(1000 * (time.process_time() - cpu_started) / rounds)
    finally:
        checker.close()
        generator.close()
    return times


def gateway_load(service: Service, clients: int, submissions: int, get_s: float) -> dict[str, float]:
    body = {"formal_statement": STATEMENT, "rounds": 1, "attempts": 1, "top_k": 0}
    ids: list[str] = []
    with httpx.Client(base_url=service.url, timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            ids = list(pool.map(lambda _: client.post("/v1/prove", json=body).json()["id"], range(submissions)))
        submit_s = time.perf_counter() - started
        latencies: list[float] = []
        lock, stop = threading.Lock(), time.perf_counter() + get_s

        def getter(k: int) -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                assert client.get(f"/v1/prove/{ids[k % len(ids)]}").status_code == 200
                with lock:
                    latencies.append(1000 * (time.perf_counter() - t0))

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(getter, range(clients)))
    for job_id in ids:
        service.harness.wait_job(job_id, timeout_s=300)
    return {
        "submit_jobs_per_s": submissions / submit_s,
        "get_p50_ms": _pct(latencies, 0.5),
        "get_p99_ms": _pct(latencies, 0.99),
        "gets": len(latencies),
    }


def end_to_end(service: Service, jobs: int) -> dict[str, float]:
    body = {"formal_statement": STATEMENT.replace("bench_latency", "bench_e2e"), "rounds": 1, "attempts": 1,
            "top_k": 0}  # fmt: skip
    with httpx.Client(base_url=service.url, timeout=60) as client:
        started = time.perf_counter()
        ids = [client.post("/v1/prove", json=body).json()["id"] for _ in range(jobs)]
        finished = [service.harness.wait_job(job_id, timeout_s=300) for job_id in ids]
        elapsed = time.perf_counter() - started
    assert all(job["status"] == "proved" for job in finished), {job["status"] for job in finished}
    return {"jobs": jobs, "seconds": elapsed, "jobs_per_s": jobs / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="R: rounds of each timed job")
    parser.add_argument("--jobs", type=int, default=5, help="timed R-round jobs, one at a time")
    parser.add_argument("--clients", type=int, default=16, help="C: concurrent gateway clients")
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--get-s", type=float, default=5.0)
    parser.add_argument("--e2e-jobs", type=int, default=64, help="N: jobs submitted at once")
    parser.add_argument("--quick", action="store_true", help="fewer of everything: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.submissions, args.get_s, args.e2e_jobs = 2, 60, 2.0, 16
    service = Service()
    try:
        direct = direct_rounds(service, args.rounds * args.jobs)
        served = service_rounds(service, args.rounds, args.jobs)
        cost = redis_cost(service, args.rounds)
        load = gateway_load(service, args.clients, args.submissions, args.get_s)
        e2e = end_to_end(service, args.e2e_jobs)
    finally:
        service.close()
    s50, d50 = statistics.median(served["per_round_ms"]), statistics.median(direct["round"])
    print("### Latency the service adds per round (zero-latency stand-ins)\n")
    print("| measure | p50 ms |\n| --- | ---: |")
    print(f"| round through the service (job wall / {args.rounds} rounds, {args.jobs} jobs) | {s50:.1f} |")
    print(f"| round in-process, direct (same stand-ins, same client, warm checker) | {d50:.1f} |")
    print(f"| **added by the service** | **{s50 - d50:.1f}** (ratio {s50 / d50:.1f}x) |")
    cpu = served["cpu_ms"]
    print("\n### CPU time per round (ms; independent of the machine's load, unlike the wall times above)\n")
    print("| process | CPU ms per round |\n| --- | ---: |")
    for name, value in cpu.items():
        print(f"| {name} | {value:.1f} |")
    print(f"| **the service, all four** | **{sum(cpu.values()):.1f}** |")
    print(f"| the direct loop's process (prompt, client, extraction, checker) | {direct['cpu'][0]:.1f} |")
    print("\n### Where a service round's time goes (p50 per round, ms)\n")
    print("| part | p50 ms | p90 ms |\n| --- | ---: | ---: |")
    for name, values in served["parts"].items():
        print(f"| {name} | {statistics.median(values):.1f} | {_pct(values, 0.9):.1f} |")
    print(f"| prompt building (direct loop) | {statistics.median(direct['prompt']):.2f} | "
          f"{_pct(direct['prompt'], 0.9):.2f} |")  # fmt: skip
    print(f"| extraction (direct loop) | {statistics.median(direct['extract']):.2f} | "
          f"{_pct(direct['extract'], 0.9):.2f} |")  # fmt: skip
    print(f"| Redis commands per round, all processes (idle traffic of {cost['idle_commands_per_s']:.0f}/s "
          f"taken out) | {cost['commands_per_round']:.0f} | |")  # fmt: skip
    print(f"| Redis round trips per round, all processes (socket reads the server processed, idle taken out) | "
          f"{cost['round_trips_per_round']:.0f} | |")  # fmt: skip
    print(f"| one Redis round trip (PING) from this process | {cost['ping_p50_ms']:.2f} | |")
    print(f"| commands per round by name (top 10) | {cost['top']} | |")
    print("\n### Gateway under concurrent load\n")
    print("| measure | value |\n| --- | ---: |")
    print(f"| `POST /v1/prove` from {args.clients} clients ({args.submissions} jobs) | "
          f"{load['submit_jobs_per_s']:.0f} jobs/s |")  # fmt: skip
    print(f"| `GET /v1/prove/{{id}}` p50 / p99, {args.clients} clients, {load['gets']} requests | "
          f"{load['get_p50_ms']:.1f} / {load['get_p99_ms']:.1f} ms |")  # fmt: skip
    print(f"| end to end: {e2e['jobs']} one-round jobs at once | {e2e['jobs_per_s']:.1f} jobs/s "
          f"({e2e['seconds']:.1f} s) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
