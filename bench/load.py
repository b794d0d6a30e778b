"""Hundreds of concurrent proof jobs through `oprover up` at its shipped defaults, against stand-ins at real
latencies: errors, job latency against the stand-ins' floor, peak memory and Redis connections, nothing lost.

The service runs as a user starts it (tests/harness.py `OproverUp`: `oprover up` with only its parts pointed at;
it starts its own Redis with AOF on, the gateway, one generate and one verify worker). The parts are stand-ins
(standins/; their answers are never the model's or Lean's):

* the generator (standins/openai_server.py) answers each (theorem, round) after a delay drawn once, uniformly in
  `--gen-s` (default 5-30 s), from a seeded generator: the script's per-rule `delay_s`, so each job's floor is
  known exactly;
* the REPL (standins/fake_repl.py) spends a check time drawn in `--check-s` (default 2-10 s) on each proof;
* the kernel replay (standins/fake_replay.py) accepts what the REPL passed.

The theorems are of three kinds: proved in round 1, proved in round 2 after a failed round (the repair prompt
holds Lean's message), never proved (every one of the shipped `rounds` fails). Every job is submitted at once
(`POST /v1/prove`, httpx async, the request's defaults), each followed on its event stream to its end as
`oprover prove` does. Then nothing may be lost:

* every job ends, with the expected status and number of attempts;
* every proved job's proof is in the memory (opened after the service stopped);
* no RQ queue or registry (queued, started, scheduled, deferred, failed) holds anything;
* each job's Redis keys are consistent (a finished job's lifetime on its hash, events and attempts; one terminal
  event, the last; one generation recorded per attempt);
* the generator saw each round's request id once (duplicates are counted, and each is an error).

The floor: job j needs its rounds one after the other, so its latency is at least the sum of its drawn generation
and check times (a pass then also costs the kernel replay, and a check repeated in a fresh REPL when the first ran
in a used one: not in the floor). With G generation slots and V check slots (REPLs), the whole run takes at least
max(longest job floor, total generation time / G, total check time / V).

    python bench/load.py                      # 500 jobs, shipped settings (V = one REPL per core)
    python bench/load.py --verify-slots 32    # a Lean box with 32 REPLs (printed in the table)
    python bench/load.py --jobs 20 --gen-s 0.2,1 --check-s 0.1,0.5   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.domain import TERMINAL_STATUSES  # noqa: E402 - after the path set-up above
from services.settings import GeneratorSettings, LeanSettings, ProveSettings  # noqa: E402
from standins.fake_repl import lean_cmd, write_table  # noqa: E402
from standins.openai_server import StandinServer  # noqa: E402
from tests.harness import OproverUp, free_port  # noqa: E402

TERMINAL = {status.value for status in TERMINAL_STATUSES}
TERMINAL_EVENTS = {f"job.{status}" for status in TERMINAL}
KINDS = ("round 1", "round 2", "never")  # when a theorem's proof passes
# Lines a healthy service never logs (what redis-py's default timeouts and pool caps print under load, crashes).
BAD_LINE = re.compile(r"Too many connections|Timeout reading|Traceback|\bERROR\b|\bCRITICAL\b")


# --- the workload --------------------------------------------------------------------------------------------------
@dataclass
class Theorem:
    index: int
    kind: str
    gen_s: list[float]  # per round run
    check_s: list[float]

    @property
    def name(self) -> str:
        return f"load_{self.index:04d}"

    @property
    def statement(self) -> str:
        # Each body differs (its own constant): the memory keys proofs by the statement's body, not its name.
        n = self.index + 1
        return f"theorem {self.name} (a b : ℕ) (h : a + {n} = b) : b = a + {n} := by sorry"

    def token(self, round_: int) -> str:
        """What the round's proof holds: the REPL judges it by this, the next round's prompt shows it."""
        return f"L{self.index:04d}R{round_}"

    def proof(self, round_: int) -> str:
        return self.statement.removesuffix("sorry") + f"\n  exact {self.token(round_)} h"

    @property
    def rounds(self) -> int:
        return len(self.gen_s)

    @property
    def floor_s(self) -> float:
        return sum(self.gen_s) + sum(self.check_s)


def workload(
    jobs: int, rounds: int, gen_s: tuple[float, float], check_s: tuple[float, float], seed: int
) -> list[Theorem]:
    """Half proved in round 1, a quarter in round 2, a quarter never; latencies drawn per (theorem, round)."""
    rng = random.Random(seed)
    theorems = []
    for index in range(jobs):
        kind = KINDS[0] if index % 4 in (0, 2) else KINDS[1] if index % 4 == 1 and rounds > 1 else KINDS[2]
        run = {KINDS[0]: 1, KINDS[1]: 2, KINDS[2]: rounds}[kind]
        theorems.append(
            Theorem(
                index=index,
                kind=kind,
                gen_s=[round(rng.uniform(*gen_s), 2) for _ in range(run)],
                check_s=[round(rng.uniform(*check_s), 1) for _ in range(run)],
            )
        )
    return theorems


def passes(theorem: Theorem) -> bool:
    return theorem.kind != KINDS[2]


def generator_rules(theorems: list[Theorem]) -> list[dict[str, Any]]:
    """Repair rounds first (their prompt holds the previous attempt's token, which only a failed proof carries, so
    no retrieved proof can match it), then first rounds (the target ends in `sorry`: no retrieved proof does)."""

    def answer(theorem: Theorem, round_: int) -> dict[str, Any]:
        content = f"Plan: rewrite with the hypothesis.\n\n```lean4\n{theorem.proof(round_)}\n```\n"
        return {"content": content, "delay_s": theorem.gen_s[round_ - 1]}

    repairs = [
        {"match": theorem.token(round_ - 1), **answer(theorem, round_)}
        for theorem in theorems
        for round_ in range(2, theorem.rounds + 1)
    ]
    firsts = [{"match": theorem.statement, **answer(theorem, 1)} for theorem in theorems]
    return repairs + firsts


def repl_rules(theorems: list[Theorem]) -> list[dict[str, Any]]:
    rules = []
    for theorem in theorems:
        for round_ in range(1, theorem.rounds + 1):
            last = round_ == theorem.rounds
            outcome = "pass" if last and passes(theorem) else "error"
            rules.append({"match": theorem.token(round_), "outcome": outcome, "check_s": theorem.check_s[round_ - 1]})
    return rules


# --- watching the processes ----------------------------------------------------------------------------------------
def _role(process: psutil.Process) -> str | None:
    with contextlib.suppress(psutil.Error):
        cmdline = process.cmdline()
        text = " ".join(cmdline)
        if "redis-server" in text:
            return "Redis server"
        if " serve " in f"{text} ":
            return "gateway"
        if "worker generate" in text:
            return "generate worker"
        if "worker verify" in text:
            return "verify worker"
    return None


@dataclass
class Peaks:
    rss_mb: Counter[str] = field(default_factory=Counter)
    processes: Counter[str] = field(default_factory=Counter)
    redis_connections: Counter[str] = field(default_factory=Counter)
    connected_clients: int = 0
    samples: int = 0


class Sampler:
    """Once a second: resident memory of each part's process tree (children included: a verify worker's REPLs
    and replays), its TCP connections to Redis, and Redis's own connected_clients; keeps the peaks."""

    def __init__(self, up_pid: int, redis_url: str, interval_s: float = 1.0) -> None:
        self.up = psutil.Process(up_pid)
        self.redis_port = redis.connection.parse_url(redis_url).get("port", 6379)
        self.redis = redis.Redis.from_url(redis_url)
        self.interval_s = interval_s
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Peaks:
        self._stop.set()
        self._thread.join(timeout=30)
        self.redis.close()
        return self.peaks

    def sample(self) -> None:
        rss: Counter[str] = Counter()
        count: Counter[str] = Counter()
        connections: Counter[str] = Counter()
        owner: dict[int, str] = {}  # pid -> role, for the connections below
        with contextlib.suppress(psutil.Error):
            for child in self.up.children():
                role = _role(child)
                if role is None:
                    continue
                tree = [child]
                with contextlib.suppress(psutil.Error):
                    tree += child.children(recursive=True)
                for process in tree:
                    with contextlib.suppress(psutil.Error):
                        rss[role] += process.memory_info().rss
                        count[role] += 1
                        owner[process.pid] = role
        # One read of the machine's TCP table (not one per process): who holds connections to Redis's port.
        with contextlib.suppress(psutil.Error):
            for conn in psutil.net_connections(kind="tcp"):
                role = owner.get(conn.pid or 0)
                if role and role != "Redis server" and conn.raddr and conn.raddr.port == self.redis_port:
                    connections[role] += conn.status == psutil.CONN_ESTABLISHED
        for role, value in rss.items():
            self.peaks.rss_mb[role] = max(self.peaks.rss_mb[role], round(value / 2**20))
            self.peaks.processes[role] = max(self.peaks.processes[role], count[role])
        for role, value in connections.items():
            self.peaks.redis_connections[role] = max(self.peaks.redis_connections[role], value)
        with contextlib.suppress(redis.RedisError):
            clients = int(self.redis.info("clients")["connected_clients"])
            self.peaks.connected_clients = max(self.peaks.connected_clients, clients)
        self.peaks.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)


# --- the clients ---------------------------------------------------------------------------------------------------
@dataclass
class Followed:
    theorem: Theorem
    job_id: str | None = None
    submit_status: int | None = None
    job: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)
    http_errors: list[str] = field(default_factory=list)
    reconnects: int = 0

    def error(self, t0: float, what: str) -> None:
        """An HTTP error, with when (seconds after the first submission) and whose, to line it up with the log."""
        self.http_errors.append(f"t+{time.monotonic() - t0:.0f} s {self.theorem.name} ({self.job_id}) {what}")


async def follow_one(client: httpx.AsyncClient, followed: Followed, deadline: float, t0: float) -> None:
    """Submit one job and read its event stream to the terminal event (resuming after a cut), then read it."""
    try:
        reply = await client.post("/v1/prove", json={"formal_statement": followed.theorem.statement})
    except httpx.HTTPError as exc:
        followed.error(t0, f"POST: {type(exc).__name__}: {exc}")
        return
    followed.submit_status = reply.status_code
    if reply.status_code != 202:
        followed.error(t0, f"POST: {reply.status_code} {reply.text[:200]}")
        return
    followed.job_id = job_id = reply.json()["id"]
    last_id: str | None = None
    ended = False
    while not ended and time.monotonic() < deadline:
        headers = {"last-event-id": last_id} if last_id else {}
        try:
            async with client.stream("GET", f"/v1/prove/{job_id}/events", headers=headers) as stream:
                if stream.status_code != 200:
                    followed.error(t0, f"events: {stream.status_code}")
                    await asyncio.sleep(1)
                    continue
                async for line in stream.aiter_lines():
                    if line.startswith("id:"):
                        last_id = line[3:].strip()
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                        followed.events.append(event)
                        ended = ended or event in TERMINAL_EVENTS
        except httpx.HTTPError as exc:
            followed.reconnects += 1
            followed.error(t0, f"events ({len(followed.events)} read): {type(exc).__name__}: {exc}")
            await asyncio.sleep(1)
    try:
        reply = await client.get(f"/v1/prove/{job_id}")
        if reply.status_code == 200:
            followed.job = reply.json()
        else:
            followed.error(t0, f"GET: {reply.status_code} {reply.text[:200]}")
    except httpx.HTTPError as exc:
        followed.error(t0, f"GET: {type(exc).__name__}: {exc}")


async def run_clients(url: str, theorems: list[Theorem], deadline: float) -> tuple[list[Followed], float]:
    followed = [Followed(theorem) for theorem in theorems]
    # One connection per job: every stream stays open until its job ends. A 60 s read limit: an open stream
    # carries an event or a keep-alive comment at least every 15 s.
    limits = httpx.Limits(max_connections=len(theorems) + 16, max_keepalive_connections=len(theorems) + 16)
    timeout = httpx.Timeout(60.0, connect=30.0, pool=60.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        started = time.monotonic()
        await asyncio.gather(*(follow_one(client, f, deadline, started) for f in followed))
    return followed, time.monotonic() - started


# --- nothing lost --------------------------------------------------------------------------------------------------
def check_jobs(followed: list[Followed]) -> list[str]:
    """Each job ended as its theorem says, with one attempt per round run and the passing proof."""
    problems = []
    for f in followed:
        t, job = f.theorem, f.job
        if job is None:
            problems.append(f"{t.name}: no final job record ({f.job_id})")
            continue
        want = "proved" if passes(t) else "failed"
        if job["status"] != want:
            problems.append(f"{t.name} ({f.job_id}): {job['status']}, expected {want} ({job.get('error')})")
            continue
        verdicts = [a["verdict"] for a in job["attempts"]]
        expected = ["fail"] * (t.rounds - 1) + ["pass" if passes(t) else "fail"]
        if verdicts != expected:
            why = "; ".join(
                f"round {a['round']} {a['verdict']}: " + " ".join(str(a.get("feedback") or "").split())[:300]
                for a in job["attempts"]
                if a["verdict"] not in ("pass", "fail")
            )
            problems.append(
                f"{t.name} ({f.job_id}): attempts {verdicts}, expected {expected}" + (f" ({why})" if why else "")
            )
        if passes(t) and t.token(t.rounds) not in (job.get("proof") or ""):
            problems.append(f"{t.name} ({f.job_id}): proof {job.get('proof')!r} lacks {t.token(t.rounds)}")
        if not any(e in TERMINAL_EVENTS for e in f.events):
            problems.append(f"{t.name} ({f.job_id}): its event stream never showed its end")
    return problems


def check_redis(redis_url: str, followed: list[Followed], job_ttl_s: int) -> tuple[list[str], dict[str, int]]:
    """Queues and registries empty; each job's keys consistent with a finished job."""
    from rq import Queue

    from services import keys

    problems: list[str] = []
    conn = redis.Redis.from_url(redis_url)
    try:
        queues: dict[str, int] = {}
        for queue in Queue.all(connection=conn):
            held = {
                "queued": queue.count,
                "started": queue.started_job_registry.get_job_count(),
                "scheduled": queue.scheduled_job_registry.get_job_count(),
                "deferred": queue.deferred_job_registry.get_job_count(),
                "failed": queue.failed_job_registry.get_job_count(),
            }
            queues[queue.name] = queue.finished_job_registry.get_job_count()
            for what, count in held.items():
                if count:
                    problems.append(f"RQ queue {queue.name}: {count} {what}")
        for f in followed:
            if f.job_id is None or f.job is None:
                continue
            job_key, events_key, attempts_key = (
                keys.job_key(f.job_id),
                keys.events_key(f.job_id),
                keys.attempts_key(f.job_id),
            )
            with conn.pipeline() as pipe:
                pipe.ttl(job_key)
                pipe.ttl(events_key)
                pipe.ttl(attempts_key)
                pipe.hget(job_key, "generations")
                pipe.hlen(attempts_key)
                pipe.xrange(events_key)
                ttl_job, ttl_events, ttl_attempts, generations, attempts, events = pipe.execute()
            for name, ttl in (("job", ttl_job), ("events", ttl_events), ("attempts", ttl_attempts)):
                if not 0 < ttl <= job_ttl_s:
                    problems.append(f"{f.job_id}: {name} key TTL {ttl}, expected a finished job's (<= {job_ttl_s})")
            if int(generations or 0) != attempts or attempts != f.theorem.rounds:
                problems.append(
                    f"{f.job_id}: {attempts} attempts, {generations} generations, {f.theorem.rounds} rounds"
                )
            types = [fields[b"type"].decode() for _, fields in events]
            ends = [t for t in types if t in TERMINAL_EVENTS]
            if len(ends) != 1 or types[-1] != ends[0] or ends[0] != f"job.{f.job['status']}":
                problems.append(
                    f"{f.job_id}: terminal events {ends}, last event {types[-1:]}, status {f.job['status']}"
                )
        return problems, queues
    finally:
        conn.close()


def check_generator(requests: list[dict[str, Any]], followed: list[Followed]) -> tuple[list[str], int, int]:
    """Each round's generation was requested once: the request id is `<job>-c<chain>-r<round>`."""
    seen = Counter(r["headers"].get("x-request-id") for r in requests)
    expected = {f"{f.job_id}-c0-r{k}" for f in followed if f.job_id for k in range(1, f.theorem.rounds + 1)}
    duplicates = {rid: n for rid, n in seen.items() if n > 1}
    problems = [f"generation {rid} requested {n} times" for rid, n in sorted(duplicates.items())[:20]]
    missing = expected - set(seen)
    unexpected = set(seen) - expected
    if missing:
        problems.append(f"{len(missing)} rounds never requested, e.g. {sorted(missing)[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected request ids, e.g. {sorted(map(str, unexpected))[:5]}")
    unfinished = Counter(r["outcome"] for r in requests if r["outcome"] != "completed")
    if unfinished:
        problems.append(f"generator requests not completed: {dict(unfinished)}")
    return problems, len(requests), sum(n - 1 for n in duplicates.values())


def check_memory(qdrant_path: Path, followed: list[Followed]) -> tuple[list[str], int]:
    """Every proved job's proof is in the memory, under its job id (read after the service stopped)."""
    from services.memory import ProofMemory
    from services.settings import QdrantSettings

    memory = ProofMemory(QdrantSettings(path=qdrant_path), take_handoffs=False)
    try:
        stored: dict[str, set[str]] = {}
        for proof in memory.iter_proofs():
            stored.setdefault(proof.job_id or "", set()).add(proof.proof)
        count = memory.count()
    finally:
        memory.close()
    problems = []
    for f in followed:
        if f.job is None or f.job["status"] != "proved":
            continue
        if f.job["proof"] not in stored.get(f.job_id or "", set()):
            problems.append(f"{f.job_id} ({f.theorem.name}): its proof is not in the memory")
    return problems, count


def wait_memory_drained(redis_url: str, timeout_s: float) -> None:
    """Proved jobs hand their proofs to the `memory` queue: wait until the generate worker took them all in."""
    from rq import Queue

    from services import keys

    conn = redis.Redis.from_url(redis_url)
    queue = Queue(keys.MEMORY_QUEUE, connection=conn)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if queue.count == 0 and queue.started_job_registry.get_job_count() == 0:
                return
            time.sleep(0.5)
    finally:
        conn.close()


# --- the report ----------------------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


@dataclass
class Plan:
    """What the run asks of the service, and the floors that follow from the drawn latencies."""

    theorems: list[Theorem]
    rounds: int
    generate_slots: int  # G
    verify_slots: int  # V
    shipped_verify_slots: int

    @property
    def total_gen_s(self) -> float:
        return sum(sum(t.gen_s) for t in self.theorems)

    @property
    def total_check_s(self) -> float:
        return sum(sum(t.check_s) for t in self.theorems)

    def makespan_floor(self, verify_slots: int) -> float:
        """No schedule ends sooner: the longest job's own chain, or all generations on G slots, or all checks on V."""
        return max(
            max(t.floor_s for t in self.theorems),
            self.total_gen_s / self.generate_slots,
            self.total_check_s / verify_slots,
        )


@dataclass
class Outcome:
    workdir: Path  # up.log and the stand-ins' tables: kept when something went wrong
    followed: list[Followed]
    problems: dict[str, list[str]]
    peaks: Peaks
    generations: int
    duplicates: int
    memory_count: int
    finished_rq: dict[str, int]
    bad_lines: list[str]
    ready_s: float
    run_s: float
    total_s: float
    load_before: str
    load_after: str

    @property
    def http_errors(self) -> list[str]:
        return [e for f in self.followed for e in f.http_errors]

    @property
    def statuses(self) -> Counter[str]:
        return Counter(f.job["status"] if f.job else "unknown" for f in self.followed)

    def latencies(self, kind: str | None = None) -> list[float]:
        return [
            f.job["finished_at"] - f.job["created_at"]
            for f in self.followed
            if f.job and f.job.get("finished_at") and kind in (None, f.theorem.kind)
        ]

    @property
    def failed(self) -> bool:
        return bool(self.http_errors or self.statuses.get("error") or self.bad_lines or any(self.problems.values()))


def time_split(plan: Plan, out: Outcome) -> list[tuple[str, str]]:
    """Where a job's time went beyond its floor, from each attempt's own timings (the workers measure them)."""
    gen_extra, waits = [], []
    checks: dict[str, list[float]] = {"fail": [], "pass": []}
    drawn: dict[str, list[float]] = {"fail": [], "pass": []}
    for f in out.followed:
        if f.job is None or not f.job.get("finished_at"):
            continue
        busy = 0.0
        for attempt in f.job["attempts"]:
            timings, k = attempt.get("timings") or {}, attempt["round"] - 1
            busy += sum(timings.get(name, 0) for name in ("retrieve_ms", "generate_ms", "verify_ms")) / 1000
            if k < f.theorem.rounds and "generate_ms" in timings:
                gen_extra.append(timings["generate_ms"] / 1000 - f.theorem.gen_s[k])
            if k < f.theorem.rounds and "verify_ms" in timings and attempt["verdict"] in checks:
                checks[attempt["verdict"]].append(timings["verify_ms"] / 1000)
                drawn[attempt["verdict"]].append(f.theorem.check_s[k])
        waits.append(f.job["finished_at"] - f.job["created_at"] - busy)
    all_checks = checks["fail"] + checks["pass"]
    return [
        (
            "a generation as the generate worker timed it, minus its drawn time, p50 / p99",
            f"{_pct(gen_extra, 0.5):.1f} / {_pct(gen_extra, 0.99):.1f} s",
        ),
        (
            "a failing check as the verify worker timed it, p50 / p99 (drawn: p50)",
            f"{_pct(checks['fail'], 0.5):.1f} / {_pct(checks['fail'], 0.99):.1f} s ({_pct(drawn['fail'], 0.5):.1f} s)",
        ),
        (
            "a passing check as the verify worker timed it (re-check in an unused REPL, kernel replay), p50 / p99 "
            "(drawn: p50)",
            f"{_pct(checks['pass'], 0.5):.1f} / {_pct(checks['pass'], 0.99):.1f} s ({_pct(drawn['pass'], 0.5):.1f} s)",
        ),
        (
            "a job's time in queues (its latency minus its rounds' retrieval, generation and check times), p50 / p99",
            f"{_pct(waits, 0.5):.1f} / {_pct(waits, 0.99):.1f} s",
        ),
        (
            f"the checks as they ran: their total time / V {plan.verify_slots}",
            f"{sum(all_checks):.0f} s / {plan.verify_slots} = {sum(all_checks) / plan.verify_slots:.0f} s",
        ),
    ]


def table_rows(plan: Plan, out: Outcome, changed: str) -> list[tuple[str, str]]:
    floors = [t.floor_s for t in plan.theorems]
    latencies = out.latencies()
    ratios = [
        (f.job["finished_at"] - f.job["created_at"]) / f.theorem.floor_s
        for f in out.followed
        if f.job and f.job.get("finished_at")
    ]
    redis_problems = out.problems["Redis"]
    rq_lost = sum(1 for p in redis_problems if p.startswith("RQ"))
    statuses = out.statuses
    rows = [
        ("settings changed from the shipped defaults", changed),
        (
            "**errors**: HTTP errors / jobs ended `error` / jobs not ended as their theorem says",
            f"**{len(out.http_errors)} / {statuses.get('error', 0)} / {len(out.problems['jobs'])}**",
        ),
        (
            "**lost**: RQ (queued, started, scheduled, deferred, failed) / job keys / generator / memory",
            f"**{rq_lost} / {len(redis_problems) - rq_lost} / {len(out.problems['generator'])} / "
            f"{len(out.problems['memory'])}**",
        ),
        ("jobs ended", ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))),
        ("generations requested (duplicates)", f"{out.generations} ({out.duplicates})"),
        ("proofs in the memory after the run", f"{out.memory_count} (proved jobs: {statuses.get('proved', 0)})"),
        (
            "RQ jobs in the finished registries at the end",
            ", ".join(f"{q} {n}" for q, n in sorted(out.finished_rq.items())),
        ),
        (
            "job latency p50 / p99 / max (created → finished)",
            f"{_pct(latencies, 0.5):.1f} / {_pct(latencies, 0.99):.1f} / {max(latencies, default=float('nan')):.1f} s",
        ),
        (
            "its floor p50 / p99 / max (the job's own drawn generation + check times)",
            f"{_pct(floors, 0.5):.1f} / {_pct(floors, 0.99):.1f} / {max(floors):.1f} s",
        ),
        ("job latency / its own floor, p50 / p99", f"{_pct(ratios, 0.5):.2f} / {_pct(ratios, 0.99):.2f}"),
    ]
    for kind in KINDS:
        mine = out.latencies(kind)
        kind_floors = [t.floor_s for t in plan.theorems if t.kind == kind]
        what = f"proved in {kind}" if kind != KINDS[2] else f"never proved ({plan.rounds} rounds)"
        if mine:
            rows.append(
                (
                    f"latency p50 of jobs {what}, against their floor's p50",
                    f"{_pct(mine, 0.5):.1f} s against {_pct(kind_floors, 0.5):.1f} s",
                )
            )
    rows += time_split(plan, out)
    rows += [
        ("all jobs ended after (first submission → last end)", f"{out.run_s:.0f} s"),
        (
            f"its floor: max(longest job {max(floors):.0f} s, generations {plan.total_gen_s:.0f} s / G "
            f"{plan.generate_slots}, checks {plan.total_check_s:.0f} s / V {plan.verify_slots})",
            f"{plan.makespan_floor(plan.verify_slots):.0f} s",
        ),
    ]
    if plan.verify_slots != plan.shipped_verify_slots:
        rows.append(
            (
                f"the same floor at the shipped V = {plan.shipped_verify_slots}",
                f"{plan.makespan_floor(plan.shipped_verify_slots):.0f} s (checks {plan.total_check_s:.0f} s / "
                f"{plan.shipped_verify_slots})",
            )
        )
    for role in ("gateway", "generate worker", "verify worker", "Redis server"):
        rows.append(
            (
                f"peak RSS, {role} (its process tree: up to {out.peaks.processes[role]} processes)",
                f"{out.peaks.rss_mb[role]} MB",
            )
        )
    for role in ("gateway", "generate worker", "verify worker"):
        rows.append((f"peak Redis connections, {role}", str(out.peaks.redis_connections[role])))
    rows += [
        ("peak Redis `connected_clients` (all; this bench's sampler is 1)", str(out.peaks.connected_clients)),
        ("log lines of `oprover up`: Traceback, ERROR, Too many connections, Timeout reading", str(len(out.bad_lines))),
        (
            "whole run (start, submit, follow, check, stop)",
            f"{out.total_s:.0f} s (service ready after {out.ready_s:.0f} s; {out.peaks.samples} samples of 1 s)",
        ),
        ("load average (1 / 5 / 15 min) before → after, 2 cores shared", f"{out.load_before} → {out.load_after}"),
    ]
    return rows


def run(plan: Plan, args: argparse.Namespace) -> Outcome:
    """Start the stand-ins and `oprover up`, run the clients, check that nothing was lost, stop everything."""
    workdir = Path(tempfile.mkdtemp(prefix="oprover-load-"))
    load_before = _load()
    started = time.monotonic()
    generator = StandinServer()
    up: OproverUp | None = None
    sampler: Sampler | None = None
    try:
        rules = generator_rules(plan.theorems)
        generator.script(rules, default={"content": "[standin] no rule for this prompt (a bench bug)"})
        table = write_table(
            workdir / "repl-table.json", repl_rules(plan.theorems), default="error", import_s=args.import_s
        )
        redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nobody serves it: `up` starts Redis, as for a user
        up = OproverUp(redis_url=redis_url, workdir=workdir, generator_url=generator.url, lean_cmd=lean_cmd(table))
        if args.verify_slots:
            up.env["OPROVER_LEAN_POOL_SIZE"] = str(args.verify_slots)
        up.start(ready_timeout_s=180)
        assert up.process is not None
        ready_s = time.monotonic() - started
        sampler = Sampler(up.process.pid, redis_url)
        sampler.start()
        followed, run_s = asyncio.run(run_clients(up.url, plan.theorems, time.monotonic() + args.time_limit_s))
        wait_memory_drained(redis_url, timeout_s=120)
        sampler.sample()
        peaks = sampler.stop()
        sampler = None
        problems = {"jobs": check_jobs(followed)}
        problems["Redis"], finished_rq = check_redis(redis_url, followed, ProveSettings().job_ttl_s)
        problems["generator"], generations, duplicates = check_generator(generator.requests(), followed)
        up.stop()
        log = up.log()
        up = None
        problems["memory"], memory_count = check_memory(workdir / "qdrant", followed)
    finally:
        if sampler is not None:
            sampler.stop()
        if up is not None:
            up.stop()
        generator.close()
    return Outcome(
        workdir=workdir,
        followed=followed,
        problems=problems,
        peaks=peaks,
        generations=generations,
        duplicates=duplicates,
        memory_count=memory_count,
        finished_rq=finished_rq,
        bad_lines=[line for line in log.splitlines() if BAD_LINE.search(line)],
        ready_s=ready_s,
        run_s=run_s,
        total_s=time.monotonic() - started,
        load_before=load_before,
        load_after=_load(),
    )


def _range(text: str) -> tuple[float, float]:
    low, high = (float(v) for v in text.split(","))
    if not 0 <= low <= high:
        raise ValueError(text)
    return low, high


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="proof jobs submitted at once (default: 500)")
    parser.add_argument("--gen-s", default="5,30", help="MIN,MAX seconds of one generation (default: 5,30)")
    parser.add_argument("--check-s", default="2,10", help="MIN,MAX seconds of one Lean check (default: 2,10)")
    parser.add_argument("--import-s", type=float, default=1.0, help="seconds a stand-in REPL takes to start (1)")
    parser.add_argument(
        "--verify-slots",
        type=int,
        default=0,
        help="OPROVER_LEAN_POOL_SIZE of the verify worker, REPLs checking at once (default: 0 = unchanged: the "
        "shipped one per core); any other value is printed in the table as a changed setting",
    )
    parser.add_argument("--seed", type=int, default=13, help="seed of the drawn kinds and latencies (default: 13)")
    parser.add_argument(
        "--time-limit-s",
        type=float,
        default=1200,
        help="jobs not ended this long after submission are reported, and a run whose floor is longer is refused "
        "(default: 1200)",
    )
    args = parser.parse_args(argv)
    try:
        gen_range, check_range = _range(args.gen_s), _range(args.check_s)
    except ValueError:
        parser.error("--gen-s and --check-s take MIN,MAX in seconds, 0 <= MIN <= MAX")
    if args.jobs < 1 or args.verify_slots < 0:
        parser.error("--jobs must be at least 1 and --verify-slots at least 0")

    shipped_pool = LeanSettings().pool_size
    shipped_v = shipped_pool or os.cpu_count() or 1
    rounds = ProveSettings().rounds  # the shipped default: the requests leave `rounds` out
    plan = Plan(
        theorems=workload(args.jobs, rounds, gen_range, check_range, args.seed),
        rounds=rounds,
        generate_slots=GeneratorSettings().concurrency,
        verify_slots=args.verify_slots or shipped_v,
        shipped_verify_slots=shipped_v,
    )
    if plan.makespan_floor(plan.verify_slots) > args.time_limit_s:
        print(
            f"not starting: with V = {plan.verify_slots} checks at once the run takes at least "
            f"{plan.makespan_floor(plan.verify_slots):.0f} s (its checks alone: {plan.total_check_s:.0f} s / "
            f"{plan.verify_slots}), over --time-limit-s {args.time_limit_s:.0f}; raise --verify-slots (printed in "
            "the table) or lower --jobs",
            file=sys.stderr,
        )
        return 2
    # SIGTERM (a test's timeout, a CI runner) ends the run like Ctrl-C: the `finally` blocks stop `oprover up` and
    # the stand-in generator, which run in sessions of their own and would otherwise outlive this process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (SIG_IGN)
    out = run(plan, args)

    changed = (
        f"**OPROVER_LEAN_POOL_SIZE={args.verify_slots}** (`--verify-slots`; shipped: {shipped_pool} = one REPL per "
        f"core = {shipped_v} here)"
        if args.verify_slots
        else f"none (OPROVER_LEAN_POOL_SIZE={shipped_pool}: one REPL per core = {shipped_v} here)"
    )
    kinds = ", ".join(f"{sum(1 for t in plan.theorems if t.kind == k)} proved in {k}" for k in KINDS[:2])
    never = sum(1 for t in plan.theorems if t.kind == KINDS[2])
    print(
        f"{args.jobs} jobs submitted at once to `oprover up` (shipped settings: {rounds} rounds, 1 attempt, "
        f"G = {plan.generate_slots} generations in flight, V = {plan.verify_slots} checks at once), each followed "
        f"on its event stream; {kinds}, {never} never proved. Stand-ins: generation {gen_range[0]:g}-"
        f"{gen_range[1]:g} s, check {check_range[0]:g}-{check_range[1]:g} s per round (drawn per theorem and "
        f"round, seed {args.seed}), REPL start {args.import_s:g} s.\n"
    )
    print("| measure | value |\n| --- | --- |")
    for label, value in table_rows(plan, out, changed):
        print(f"| {label} | {value} |")
    failures = [*out.http_errors[:10], *(p for v in out.problems.values() for p in v[:10]), *out.bad_lines[:10]]
    if failures:
        print("\nWhat went wrong (the first ones of each kind):\n")
        for line in failures:
            print(f"- {line}")
    if out.failed:
        print(f"\n`oprover up`'s log and the stand-ins' tables are kept in {out.workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(out.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
