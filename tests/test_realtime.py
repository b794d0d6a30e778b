"""The realtime tier: `oprover up` exactly as shipped, against stand-ins that cost what the real parts cost.

Every other test runs its stand-ins in milliseconds and most lower the service's concurrency and intervals. Here the
service runs as a user gets it: `oprover up` with its defaults (a generate worker at OPROVER_GENERATOR_CONCURRENCY=64,
a verify worker with one REPL per core, the shipped timeouts and intervals), only pointed at its parts. The stand-in
generator takes 8 s per completion and the stand-in REPL 7 s per check (real ones take 10 s to several minutes).
What breaks only at such latencies: a client socket timeout shorter than a blocking read, a connection pool capped
below the number of threads that block on it, a stream that dies when nothing happens for a minute, a generation
requested twice because in-flight streams failed together.

The stand-ins are the test's (standins/), never the model's or Lean's. One `oprover up` serves the module
(database 14 of the session's Redis). The tests run one after another, each with theorems of its own (the stand-ins
answer by statement), and each reads the log lines `up` and its children wrote while it ran; only the quiet minute
of the event-stream test, a wait on Lean, passes in the background while the load tests keep the generate worker
busy. `pytest -m realtime`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from standins.fake_repl import lean_cmd, write_table
from standins.openai_server import StandinServer
from tests.harness import TERMINAL, OproverUp

pytestmark = [pytest.mark.realtime, pytest.mark.slow]

GENERATION_S = 8.0  # the stand-in generator, per completion
CHECK_S = 7.0  # the stand-in REPL, per check
IMPORT_S = 3.0  # the stand-in REPL, per start (importing the header)
QUIET_S = 66.0  # one check that long: more than a minute without an event on the job's stream
QUIET_MESSAGE = "linarith failed after a long search"  # what that check answers; the repair round reads it
SHIPPED_CONCURRENCY = 64  # OPROVER_GENERATOR_CONCURRENCY's default, which `oprover up` uses
REDIS_DB = 14  # tests/conftest.py keeps 13-15 for module-scoped services

# Lines that must never appear in the log of a healthy service. The first two are what redis-py 8's defaults
# (5 s socket timeout, 100-connection pool cap) print at these latencies.
_BAD_LINE = re.compile(r"Too many connections|Timeout reading|Traceback|\bERROR\b|\bCRITICAL\b")


# --- the theorems and how the stand-ins answer them -------------------------------------------------------------------
def _statement(name: str) -> str:
    return f"theorem {name} (a b : ℕ) (h : a + 1 = b) : b = a + 1 := by sorry"


def _target(statement: str) -> str:
    """How the statement appears as the task in a prompt (and only there: retrieved proofs end in a real proof)."""
    return statement


def _proof(statement: str, tactic: str) -> str:
    return statement.removesuffix("sorry") + "\n  " + tactic


def _completion(code: str) -> str:
    return f"Plan: use the hypothesis backwards.\n\n```lean4\n{code}\n```\n"


WAIT = _statement("rt_wait_proved")
QUIET = _statement("rt_quiet_stream")
CANCEL = _statement("rt_cancel_long_generation")
VERIFY_PASS = _proof(_statement("rt_verify_pass"), "exact REALTIME_PASS h")
VERIFY_FAIL = _proof(_statement("rt_verify_fail"), "exact REALTIME_FAIL h")
LOAD_MARK = "rt_load_"  # theorems that never get a proof: their completions hold no Lean code (verdict no_code)
# The 64-in-flight test submits 16 jobs: on a loaded machine that takes seconds, so its generations last long
# enough that all 64 overlap however slowly they arrive.
CHAINS_MARK, CHAINS_GENERATION_S = f"{LOAD_MARK}chains_", 20.0

LEAN_RULES: list[dict[str, Any]] = [
    {"match": "QUIET_MINUTE", "outcome": "error", "message": QUIET_MESSAGE, "check_s": QUIET_S},
    {"match": "REALTIME_PASS", "outcome": "pass"},
    {"match": "REALTIME_FAIL", "outcome": "error", "message": "linarith failed to find a contradiction"},
]
GENERATOR_RULES: list[dict[str, Any]] = [
    {"match": _target(WAIT), "content": _completion(_proof(WAIT, "exact REALTIME_PASS h")), "delay_s": GENERATION_S},
    # The quiet job: round 1 fails after a long check; the repair round (its prompt holds Lean's message) passes.
    {"match": QUIET_MESSAGE, "content": _completion(_proof(QUIET, "exact REALTIME_PASS h")), "delay_s": GENERATION_S},
    {"match": _target(QUIET), "content": _completion(_proof(QUIET, "exact QUIET_MINUTE h")), "delay_s": GENERATION_S},
    # Long enough that only an abort ends it within the test.
    {"match": _target(CANCEL), "content": _completion(_proof(CANCEL, "exact REALTIME_PASS h")), "delay_s": 900},
    # The load tests: a plan without code, so the round ends without Lean and the next round is generated.
    {"match": CHAINS_MARK, "content": "I could not find a proof of this one yet.", "delay_s": CHAINS_GENERATION_S},
    {"match": LOAD_MARK, "content": "I could not find a proof of this one yet.", "delay_s": GENERATION_S},
]


# --- the service ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generator() -> Iterator[StandinServer]:
    with StandinServer() as server:
        server.script(
            GENERATOR_RULES, default={"content": "[standin] no rule for this prompt", "delay_s": GENERATION_S}
        )
        yield server


@pytest.fixture(scope="module")
def service(
    redis_server: str, generator: StandinServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OproverUp]:
    url = f"{redis_server}/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    workdir = tmp_path_factory.mktemp("realtime")
    table = write_table(workdir / "repl-table.json", LEAN_RULES, default="error", check_s=CHECK_S, import_s=IMPORT_S)
    up = OproverUp(redis_url=url, workdir=workdir, generator_url=generator.url, lean_cmd=lean_cmd(table))
    try:
        up.start()
        yield up
    finally:
        up.stop()
        client.flushdb()
        client.close()


@pytest.fixture
def log_since(service: OproverUp) -> Callable[[], str]:
    """The log lines written since this test started."""
    mark = service.log_mark()
    return lambda: service.log(since=mark)


class QuietStream:
    """The quiet job's event stream, read raw in a thread from submission to its end.

    The quiet minute is a minute of waiting on Lean, so it runs while the load tests keep the generate worker busy
    (it would otherwise add a minute and a half to the tier); only its own assertions are about it.
    """

    def __init__(self, service: OproverUp) -> None:
        self.service = service
        self.job_id: str | None = None
        self.lines: list[tuple[float, str]] = []  # (arrival, raw line)
        self.broken: Exception | None = None
        self.thread = threading.Thread(target=self._read, name="quiet-stream", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            self.job_id = _submit(self.service, {"formal_statement": QUIET})["id"]
            # A read timeout of 30 s: the stream must carry something (an event or a keep-alive) at least that often.
            with (
                self.service.client(timeout=httpx.Timeout(30.0)) as client,
                client.stream("GET", f"/v1/prove/{self.job_id}/events") as response,
            ):
                self.lines.append((time.monotonic(), f"HTTP {response.status_code} {response.headers['content-type']}"))
                for line in response.iter_lines():
                    self.lines.append((time.monotonic(), line))
        except Exception as exc:  # reported by the test
            self.broken = exc

    def close(self) -> None:
        if self.job_id is not None:
            _cancel_unfinished(self.service, [self.job_id])
        self.thread.join(timeout=60)


@pytest.fixture(scope="module")
def quiet_stream(service: OproverUp) -> Iterator[QuietStream]:
    stream = QuietStream(service)
    try:
        yield stream
    finally:
        stream.close()


def _bad_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if _BAD_LINE.search(line)]


def _assert_clean(log: str) -> None:
    bad = _bad_lines(log)
    named = Counter(found.group(0) for line in bad if (found := _BAD_LINE.search(line)))
    examples = [line for line in bad if not line.lstrip().startswith("Traceback")][:12]
    assert not bad, f"error lines in the log of `oprover up` {dict(named)}, e.g.:\n" + "\n".join(examples)


# --- helpers ----------------------------------------------------------------------------------------------------------
def _submit(service: OproverUp, body: dict[str, Any]) -> dict[str, Any]:
    with service.client() as client:
        reply = client.post("/v1/prove", json=body)
    assert reply.status_code == 202, reply.text
    return reply.json()


def _wait_all(service: OproverUp, job_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    jobs: dict[str, dict[str, Any]] = {}
    with service.client() as client:
        while True:
            for job_id in job_ids:
                if jobs.get(job_id, {}).get("status") not in TERMINAL:
                    jobs[job_id] = client.get(f"/v1/prove/{job_id}").json()
            if all(job["status"] in TERMINAL for job in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                return jobs  # the caller's assertions say which did not finish
            time.sleep(2)  # not more often: polling 80 jobs is load of the test's own making


def _cancel_unfinished(service: OproverUp, job_ids: list[str]) -> None:
    """Leave nothing running for the next test, whatever this one found."""
    with service.client() as client:
        for job_id in job_ids:
            with contextlib.suppress(httpx.HTTPError):
                client.delete(f"/v1/prove/{job_id}")


def _prompt(request: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content", "")) for m in request["body"]["messages"])


def _peak_in_flight(requests: list[dict[str, Any]]) -> int:
    """Most requests the stand-in held at once (a request is in flight from arrival until its answer is out)."""
    now = time.time()
    edges = []
    for request in requests:
        edges.append((request["received_at"], 1))
        edges.append((request["finished_at"] or now, -1))
    peak = current = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):  # an end before a start at the same instant
        current += step
        peak = max(peak, current)
    return peak


def _load_statement(tag: str, index: int) -> str:
    return f"theorem {LOAD_MARK}{tag}_{index} (n : ℕ) (h : {index} < n) : {index} ≤ n := by sorry"


def _run_load(
    service: OproverUp, generator: StandinServer, bodies: list[dict[str, Any]], timeout_s: float
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Submit every body at once (8 clients), wait for all jobs, return them and the generations they caused."""
    job_ids: list[str] = []
    try:
        with ThreadPoolExecutor(8) as pool:
            job_ids = [job["id"] for job in pool.map(lambda body: _submit(service, body), bodies)]
        jobs = _wait_all(service, job_ids, timeout_s)
    finally:
        _cancel_unfinished(service, job_ids)
    statements = {body["formal_statement"] for body in bodies}
    requests = [r for r in generator.requests() if any(s in _prompt(r) for s in statements)]
    return jobs, requests


def _assert_each_generation_requested_once(
    jobs: dict[str, dict[str, Any]], requests: list[dict[str, Any]], expected: int
) -> None:
    ids = Counter(r["headers"].get("x-request-id") for r in requests)
    repeated = {rid: n for rid, n in ids.items() if n > 1}
    assert not repeated, f"generations requested more than once: {dict(list(repeated.items())[:10])}"
    retried = [rid for rid in ids if rid is None or "~" in rid]  # `~N`: the client's own retry of a request
    assert not retried, f"generations requested again after a failure: {retried[:10]}"
    recorded = Counter(a["request_id"] for job in jobs.values() for a in job["attempts"])
    assert set(ids) == set(recorded), "the generator saw other requests than the jobs recorded"
    assert len(requests) == expected


# --- the tests --------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(240)  # includes starting `oprover up` for the module
def test_cancel_during_a_long_generation_aborts_it(
    service: OproverUp, generator: StandinServer, log_since: Callable[[], str]
) -> None:
    """The first thing a user does with the fresh service: start a pass@4 job, then think better of it."""
    chains = 4  # every chain's generation must be aborted
    job = _submit(service, {"formal_statement": CANCEL, "attempts": chains})

    def generations() -> list[dict[str, Any]]:
        return [r for r in generator.requests() if _target(CANCEL) in _prompt(r)]

    try:
        deadline = time.monotonic() + 30
        while len(generations()) < chains:
            assert time.monotonic() < deadline, f"{len(generations())} of {chains} generations reached the generator"
            time.sleep(0.2)
        time.sleep(3)  # well into generations that would take 15 minutes
        assert [r["outcome"] for r in generations()] == [None] * chains

        asked = time.time()
        with service.client() as client:
            reply = client.delete(f"/v1/prove/{job['id']}")
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "cancelled"

        deadline = time.monotonic() + 15
        while any(r["outcome"] is None for r in generations()) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # room for a generation sent again, which must not come
    finally:
        _cancel_unfinished(service, [job["id"]])
    requests = generations()
    outcomes = [r["outcome"] for r in requests]
    assert outcomes == ["closed_by_client"] * chains, f"generations of a cancelled job not aborted: {outcomes}"
    assert all(r["finished_at"] - asked < 10 for r in requests)
    with service.client() as client:
        final = client.get(f"/v1/prove/{job['id']}").json()
    assert final["status"] == "cancelled" and final["attempts"] == []
    _assert_clean(log_since())


@pytest.mark.timeout(150)
def test_verify_returns_the_verdict_of_a_check_longer_than_a_socket_timeout(
    service: OproverUp, log_since: Callable[[], str]
) -> None:
    def verify(code: str) -> httpx.Response:
        with service.client(timeout=120) as client:
            return client.post("/v1/verify", json={"code": code})

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # one per REPL of the default pool (one per core)
        passing, failing = pool.map(verify, [VERIFY_PASS, VERIFY_FAIL])

    assert passing.status_code == 200, passing.text
    assert failing.status_code == 200, failing.text
    assert passing.json()["verdict"] == "pass"
    assert failing.json()["verdict"] == "fail"
    assert "linarith failed" in json.dumps(failing.json()["messages"])
    for reply in (passing, failing):
        assert reply.json()["time_ms"] >= CHECK_S * 1000  # the check really took the stand-in's 7 s
    assert time.monotonic() - started < 60
    _assert_clean(log_since())


@pytest.mark.timeout(150)
def test_prove_with_wait_returns_the_finished_job(service: OproverUp, log_since: Callable[[], str]) -> None:
    with service.client(timeout=150) as client:
        reply = client.post("/v1/prove", params={"wait": 120}, json={"formal_statement": WAIT})

    assert reply.status_code == 200, reply.text
    job = reply.json()
    assert job["status"] == "proved", job
    assert [a["verdict"] for a in job["attempts"]] == ["pass"]
    assert "REALTIME_PASS" in job["proof"]
    timings = job["attempts"][0]["timings"]
    assert timings["generate_ms"] >= GENERATION_S * 1000 and timings["verify_ms"] >= CHECK_S * 1000
    assert reply.headers["location"] == f"/v1/prove/{job['id']}"
    _assert_clean(log_since())


@pytest.mark.timeout(150)
def test_a_generate_worker_holds_64_generations_in_flight_each_requested_once(
    service: OproverUp, generator: StandinServer, quiet_stream: QuietStream, log_since: Callable[[], str]
) -> None:
    # 16 jobs of 4 chains: 64 first-round generations at once (4-chain jobs are where duplicates showed up).
    bodies = [{"formal_statement": _load_statement("chains", i), "attempts": 4, "rounds": 1} for i in range(16)]

    jobs, requests = _run_load(service, generator, bodies, timeout_s=90)
    peak = _peak_in_flight(generator.requests())  # the worker's: the quiet job's generations count too
    print(f"16 jobs x 4 chains: {len(requests)} generation requests, peak {peak} in flight")

    unfinished = {job_id: job["status"] for job_id, job in jobs.items() if job["status"] != "failed"}
    assert not unfinished, f"jobs that did not end `failed` (no code in any completion): {unfinished}"
    assert all(len(job["attempts"]) == 4 for job in jobs.values())
    assert all(a["verdict"] == "no_code" for job in jobs.values() for a in job["attempts"])
    _assert_each_generation_requested_once(jobs, requests, expected=64)
    assert peak == SHIPPED_CONCURRENCY
    _assert_clean(log_since())


@pytest.mark.timeout(300)
def test_done_when_80_jobs_keep_64_generations_in_flight_each_requested_once_with_a_clean_log(
    service: OproverUp, generator: StandinServer, quiet_stream: QuietStream, log_since: Callable[[], str]
) -> None:
    """The issue's acceptance run: 80 jobs with the default rounds (4) and attempts (1), 320 generations."""
    bodies = [{"formal_statement": _load_statement("jobs", i)} for i in range(80)]

    started = time.monotonic()
    jobs, requests = _run_load(service, generator, bodies, timeout_s=200)
    ids = Counter(r["headers"].get("x-request-id") for r in requests)
    window = [r for r in generator.requests() if (r["finished_at"] or time.time()) >= requests[0]["received_at"]]
    peak = _peak_in_flight(window)  # the worker's: the quiet job's generations count too
    print(  # the measurement, for `pytest -rP`
        f"80 jobs in {time.monotonic() - started:.0f} s: {len(requests)} generation requests, {len(ids)} distinct ids, "
        f"peak {peak} in flight, {len(_bad_lines(service.log()))} error lines in the log"
    )

    unfinished = {job_id: job["status"] for job_id, job in jobs.items() if job["status"] != "failed"}
    assert not unfinished, f"jobs that did not end `failed` (no code in any completion): {unfinished}"
    assert all([a["round"] for a in job["attempts"]] == [1, 2, 3, 4] for job in jobs.values())
    _assert_each_generation_requested_once(jobs, requests, expected=320)
    # Exactly the shipped concurrency at peak: all 64 slots busy, and never a 65th (a duplicate or a lost cap).
    assert peak == SHIPPED_CONCURRENCY
    _assert_clean(log_since())
    _assert_clean(service.log())  # and nothing of the kind since `oprover up` started


@pytest.mark.timeout(240)
def test_event_stream_stays_open_through_a_quiet_minute_and_delivers_the_terminal_event(
    service: OproverUp, quiet_stream: QuietStream
) -> None:
    """The quiet job was submitted and its stream opened before the load tests (see `QuietStream`)."""
    quiet_stream.thread.join(timeout=200)
    lines = quiet_stream.lines
    events: list[tuple[float, str]] = []  # (arrival, event type)
    comments: list[float] = []
    for at, line in lines:
        if line.startswith(":"):
            comments.append(at)
        elif line.startswith("event:"):
            events.append((at, line.partition(":")[2].strip()))
    kinds = [kind for _, kind in events]
    broken = quiet_stream.broken
    assert not quiet_stream.thread.is_alive(), f"the stream is still open after {kinds}"
    assert broken is None, f"the stream broke ({type(broken).__name__}: {broken}) after {kinds}"
    assert lines[0][1].startswith("HTTP 200 text/event-stream"), lines[0]
    assert kinds[-1:] == ["job.proved"], f"the stream ended after {kinds}, without the terminal event"
    assert kinds == [
        "job.created",
        "job.running",
        "attempt.generated",
        "attempt.verified",  # round 1: fail, after the long check
        "attempt.generated",
        "attempt.verified",  # round 2: pass
        "job.proved",
    ], kinds

    # The quiet period: round 1's Lean check of QUIET_S seconds, between attempt.generated and attempt.verified.
    start, end = events[2][0], events[3][0]
    assert end - start > 60, f"no quiet minute on the stream: round 1's check took {end - start:.1f} s"
    pings = [at for at in comments if start < at < end]
    assert len(pings) >= 3, f"{len(pings)} keep-alive comments in a quiet period of {end - start:.0f} s"
    arrivals = [at for at, line in lines if line]
    silent = max(b - a for a, b in itertools.pairwise(arrivals))
    assert silent < 25, f"the stream carried nothing for {silent:.0f} s (a proxy would close it)"
    with service.client() as client:
        final = client.get(f"/v1/prove/{quiet_stream.job_id}").json()
    assert [(a["round"], a["verdict"]) for a in final["attempts"]] == [(1, "fail"), (2, "pass")]
    assert final["attempts"][0]["timings"]["verify_ms"] >= QUIET_S * 1000
    _assert_clean(service.log())


def test_the_service_ran_with_its_shipped_defaults(service: OproverUp) -> None:
    """Guards the tier itself: nothing was configured but where the parts are."""
    configured = {key for key in service.env if key.startswith("OPROVER_")}
    where_the_parts_are = {
        "OPROVER_REDIS_URL",
        "OPROVER_GENERATOR_URL",
        "OPROVER_LEAN_CMD",
        "OPROVER_LEAN_CWD",
        "OPROVER_LEAN_REPLAY_CMD",  # the kernel replay's command, where the checker has one
        "OPROVER_QDRANT_PATH",
    }
    assert configured <= where_the_parts_are, configured - where_the_parts_are
    assert not (Path(service.workdir) / ".env").exists()
