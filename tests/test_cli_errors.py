"""The `oprover` client commands, run as a user runs them (a subprocess), turn every expected failure into one
line on stderr and a non-zero exit: a missing file, a gateway that is not there, a bad benchmark line, Ctrl-C, a
gateway that goes away while a proof is followed. No traceback, ever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.harness import ROOT, ServiceHarness

STATEMENT = "theorem t (x : ℕ) (h : x = 1) : x + 1 = 2 := by sorry"
TERMINAL = {"proved", "failed", "cancelled", "error"}


def oprover(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_oprover(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def job_ids(harness: ServiceHarness) -> list[str]:
    """The proof jobs in the test's Redis (their records, not their attempts or events)."""
    found = []
    for key in harness.redis.scan_iter("oprover:job:*"):
        name = key.decode()
        if name.endswith("}"):
            found.append(name[name.index("{") + 1 : -1])
    return found


def wait_for(predicate, what: str, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.1)


@pytest.fixture
def theorem(tmp_path: Path) -> Path:
    path = tmp_path / "t.lean"
    path.write_text("import Mathlib\n\n" + STATEMENT + "\n")
    return path


# --- before any request -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["prove", "verify", "eval"])
def test_a_missing_file_is_one_line(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.lean"
    run = oprover(command, str(missing), "--url", f"http://127.0.0.1:{free_port()}")
    assert run.returncode == 2
    assert one_line(run.stderr) == f"oprover {command}: {missing}: no such file"


def test_a_directory_or_a_binary_file_is_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "t.lean"
    binary.write_bytes(b"\xff\xfe\x00theorem")
    run = oprover("verify", str(binary))
    assert run.returncode == 2 and "is not UTF-8 text" in one_line(run.stderr)
    run = oprover("prove", str(tmp_path))
    assert run.returncode == 2 and one_line(run.stderr) == f"oprover prove: {tmp_path}: is a directory, not a file"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"name": "no_statement", "informal_statement": "x"}', "has no formal_statement"),
        ('{"name": "empty", "formal_statement": "  "}', "has no formal_statement"),
        ('{"name": "cut off", "formal_statement": "theorem', "is not JSON"),
        ('["a list"]', "is not a JSON object"),
    ],
)
def test_a_bad_benchmark_line_is_named_before_anything_is_submitted(tmp_path: Path, line: str, problem: str) -> None:
    bench = tmp_path / "bench.jsonl"
    good = json.dumps({"name": "ok", "formal_statement": STATEMENT})
    bench.write_text(f"{good}\n\n{good}\n{line}\n")
    # The gateway is not even there: the file is checked first, so nothing is half submitted.
    run = oprover("eval", str(bench), "--url", f"http://127.0.0.1:{free_port()}")
    assert run.returncode == 2
    assert one_line(run.stderr).startswith(f"oprover eval: {bench} line 4 {problem}")


# --- the gateway is not there -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["prove", "verify", "eval"])
def test_an_unreachable_gateway_asks_whether_the_service_runs(command: str, theorem: Path, tmp_path: Path) -> None:
    target = str(theorem)
    if command == "eval":
        target = str(tmp_path / "bench.jsonl")
        Path(target).write_text(json.dumps({"name": "t", "formal_statement": STATEMENT}) + "\n")
    url = f"http://127.0.0.1:{free_port()}"
    run = oprover(command, target, "--url", url)
    assert run.returncode == 2
    line = one_line(run.stderr)
    assert line.startswith(f"oprover {command}: cannot reach the gateway at {url} (")
    assert f"is the service running at {url}?" in line


def test_an_http_error_is_one_line_naming_the_field(harness: ServiceHarness, tmp_path: Path) -> None:
    url = harness.start_gateway()
    bad = tmp_path / "bad.lean"
    bad.write_text("def f : ℕ := 1\n")
    run = oprover("prove", str(bad), "--url", url)
    assert run.returncode == 2
    assert one_line(run.stderr).startswith("error 400: ") and "(param: formal_statement)" in run.stderr


# --- Ctrl-C -------------------------------------------------------------------------------------------------------
def test_ctrl_c_of_eval_cancels_its_jobs_and_exits_130(harness: ServiceHarness, tmp_path: Path) -> None:
    url = harness.start_gateway()  # no workers: the jobs stay queued until cancelled
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"name": f"p{k}", "formal_statement": STATEMENT}) + "\n" for k in range(3)))
    evaluation = start_oprover("eval", str(bench), "--url", url, "--poll-s", "0.2")
    try:
        wait_for(lambda: len(job_ids(harness)) == 3, "three submissions")
        time.sleep(0.5)  # into the polling loop
        evaluation.send_signal(signal.SIGINT)
        _, stderr = evaluation.communicate(timeout=30)
    finally:
        if evaluation.poll() is None:
            evaluation.kill()
    assert evaluation.returncode == 130
    assert one_line(stderr) == "oprover eval: interrupted; cancelled 3 of 3 unfinished job(s)"
    with httpx.Client(base_url=url) as client:
        assert {client.get(f"/v1/prove/{job}").json()["status"] for job in job_ids(harness)} == {"cancelled"}


def test_ctrl_c_of_prove_cancels_its_job_and_exits_130(harness: ServiceHarness, theorem: Path) -> None:
    url = harness.start_gateway()
    prove = start_oprover("prove", str(theorem), "--url", url)
    try:
        wait_for(lambda: len(job_ids(harness)) == 1, "the submission")
        time.sleep(0.5)
        prove.send_signal(signal.SIGINT)
        _, stderr = prove.communicate(timeout=30)
    finally:
        if prove.poll() is None:
            prove.kill()
            prove.communicate()
    assert prove.returncode == 130
    assert "Traceback" not in stderr
    [job] = job_ids(harness)
    assert stderr.strip().splitlines()[-1] == f"job {job}: cancelled"


# --- the gateway goes away while a proof is followed -------------------------------------------------------------
@pytest.mark.timing  # --timeout 25 ends the CLI within 45 s, two gateway starts included
def test_prove_says_it_retries_while_the_gateway_is_down_and_gives_up_at_its_timeout(
    harness: ServiceHarness, theorem: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    harness._spawn("gateway", "serve", "--port", str(port))
    wait_for(lambda: _answers(url), "the gateway")
    prove = start_oprover("prove", str(theorem), "--url", url, "--timeout", "25")
    started = time.monotonic()
    try:
        wait_for(lambda: len(job_ids(harness)) == 1, "the submission")
        time.sleep(1)
        harness.kill("gateway")
        time.sleep(5)  # the CLI notices and retries
        harness._spawn("gateway-again", "serve", "--port", str(port))
        wait_for(lambda: _answers(url), "the gateway, again")
        _, stderr = prove.communicate(timeout=60)
    finally:
        if prove.poll() is None:
            prove.kill()
            prove.communicate()  # reap it and close its pipes, so a failure here does not leak into later tests
    assert prove.returncode == 2
    assert "Traceback" not in stderr
    [job] = job_ids(harness)
    assert f"the gateway at {url} does not answer (" in stderr and "; retrying every 2 s" in stderr
    assert stderr.count("does not answer") == 1, stderr  # said once per outage, not once per retry
    assert f"the gateway at {url} answers again" in stderr
    assert f"job {job}: no result within --timeout 25 s" in stderr
    assert stderr.strip().splitlines()[-1] == f"job {job}: cancelled"
    assert 24 < time.monotonic() - started < 45
    with httpx.Client(base_url=url) as client:
        assert client.get(f"/v1/prove/{job}").json()["status"] == "cancelled"


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# --- a dependency is down --------------------------------------------------------------------------------------------
def test_a_worker_whose_dependency_is_down_says_so_in_one_line_naming_its_url(redis_url: str) -> None:
    qdrant = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = oprover(
        "worker",
        "generate",
        "--concurrency",
        "1",
        timeout=120,
        OPROVER_REDIS_URL=redis_url,
        OPROVER_GENERATOR_URL=f"http://127.0.0.1:{free_port()}/v1",
        OPROVER_QDRANT_URL=qdrant,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    [line] = [line for line in run.stderr.splitlines() if "not starting" in line]
    assert "oprover worker generate: not starting: memory: " in line and f"Qdrant at {qdrant}" in line


def test_memory_with_its_server_down_says_so_in_one_line_naming_its_url(tmp_path: Path) -> None:
    qdrant = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = oprover("memory", "stats", timeout=120, OPROVER_QDRANT_URL=qdrant)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("oprover memory: memory: ") and last.endswith(f"(Qdrant at {qdrant})")
