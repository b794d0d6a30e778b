"""`oprover up --demo` as a newcomer runs it: one real `up` process, the demo's own shipped latencies.

The demo starts the stand-in model, the stand-in REPL and replay, its own Redis and memory, with a scripted sample
of MiniF2F statements (api/demo.py, standins/demo/). These tests use it as the README tells a newcomer to: the CLI,
curl-like HTTP, the event stream, /metrics; and check that everything says "demo", that nothing outside the sample
is ever proved, and that Ctrl-C leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from api.demo import ACCEPTED, BANNER, DEMO_MODEL, GENERATE_S, SCRIPTED, Demo, load_sample, model_script
from api.launch import LaunchError
from services.domain import PreviousAttempt, ProofTask, RetrievedProof, Verdict
from services.prompts.loader import load_profile
from standins.openai_server import StandinState, parse_script
from tests.harness import ServiceHarness, free_port, stop_up

ROUNDS = 4  # the shipped default (OPROVER_PROVE_ROUNDS): the demo changes no setting of the loop


class DemoUp:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port(3)  # `up` serves the workers' /metrics on the next two
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.port + 1}"
        self.log_path = workdir / "up.log"
        # What a newcomer's shell may hold: settings of a real deployment. The demo must use none of them.
        (workdir / ".env").write_text("OPROVER_API_KEYS=a-key-of-the-real-deployment\n")
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("OPROVER_")}
        self.client_env = dict(self.env)
        self.env.update(
            OPROVER_REDIS_URL="redis://127.0.0.1:1/0",  # nobody serves it
            OPROVER_GENERATOR_URL="http://127.0.0.1:1/v1",
            OPROVER_LEAN_CMD="/nonexistent/repl",
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "up", "--demo", "--port", str(self.port)],
                cwd=workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"oprover up --demo exited:\n{self.log()[-4000:]}"
            if "Ready on" in self.log():
                return
            time.sleep(0.3)
        raise AssertionError(f"oprover up --demo not ready after {timeout_s} s:\n{self.log()[-4000:]}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args, "--url", self.url],
            cwd=self.workdir,
            env=self.client_env,
            capture_output=True,
            text=True,
            timeout=90,
        )

    def memory_size(self) -> float:
        text = httpx.get(f"{self.metrics_url}/metrics", timeout=10).text
        found = re.search(r"^oprover_memory_proofs (\S+)$", text, re.M)
        assert found, text[-2000:]
        return float(found.group(1))

    def close(self) -> None:
        """Whatever a test did, leave nothing running."""
        stop_up(self.process)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUp]:
    service = DemoUp(tmp_path_factory.mktemp("demo"))
    try:
        service.wait_ready()
        yield service
    finally:
        service.close()


def _problem(name: str) -> Any:
    return next(problem for problem in load_sample() if problem.name == name)


def _statement(name: str) -> str:
    return _problem(name).formal_statement


def _finished(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/prove/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.5)


def _job_id(stderr: str) -> str:
    found = re.search(r"job (prf_\w+)", stderr)
    assert found, stderr
    return found.group(1)


def _prompt(task: ProofTask) -> str:
    """What the stand-in model matches on: the messages' contents joined (standins/openai_server.py)."""
    return "\n".join(message["content"] for message in load_profile("oprover").messages(task))


def test_the_script_answers_the_target_never_a_retrieved_proof_of_another_sample_theorem() -> None:
    state = StandinState(model=DEMO_MODEL, capacity=None, latency_s=0.0)
    state.rules, state.default = parse_script(model_script(load_sample()))
    solved, target = _problem("mathd_algebra_455"), _problem("mathd_algebra_48")
    # once the demo proved mathd_algebra_455, its proof (name and all) is retrieved into other prompts
    retrieved = (RetrievedProof("1", solved.formal_statement, solved.formal_statement.rstrip() + "\n  linarith"),)
    first = ProofTask(formal_statement=target.formal_statement, header=target.header, retrieved=retrieved)
    assert "norm_num [h₀]" in state.pick(_prompt(first)).content
    failed = state.pick(_prompt(first)).content.split("```lean4\n")[1].split("```")[0]
    repair = ProofTask(
        formal_statement=target.formal_statement,
        header=target.header,
        retrieved=retrieved,
        previous=PreviousAttempt(code=failed, feedback="unsolved goals", verdict=Verdict.FAIL),
        round=2,
    )
    assert "rw [h₀, h₁]\n  ring" in state.pick(_prompt(repair)).content
    outside = ProofTask(formal_statement="theorem t (x : ℕ) : x = x := by sorry", header="", retrieved=retrieved)
    assert state.pick(_prompt(outside)) is state.default


def test_the_demo_directory_is_its_own_emptied_at_each_start_and_never_shared(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not the demo's")
    with pytest.raises(LaunchError, match="did not write"):
        Demo.prepare(foreign)
    assert (foreign / "notes.txt").exists()

    first = Demo.prepare(tmp_path / "demo")
    (first.directory / "left-over").write_text("from the last demo")
    with pytest.raises(LaunchError, match="another demo runs"):  # while the first one's `up` holds it
        Demo.prepare(tmp_path / "demo")
    first._lock.close()  # that `up` exited
    second = Demo.prepare(tmp_path / "demo")
    assert not (second.directory / "left-over").exists()
    assert sorted(p.name for p in (second.directory / "sample").iterdir()) == sorted(
        f"{problem.name}.lean" for problem in load_sample()
    )
    second._lock.close()


def test_the_readme_section_shows_the_sample_as_scripted() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Try it without a GPU (demo)")[1].split("\n## ")[0]
    rows = {line.split("|")[1]: line.split("|")[2] for line in section.splitlines() if line.startswith("| `")}
    for problem in load_sample():
        row = next(outcome for names, outcome in rows.items() if f"`{problem.name}`" in names)
        expected = {"proved in round 1": "proved in round 1", "proved after a failed round": "repair round"}
        assert expected.get(problem.outcome, "never proved") in row, (problem.name, row)
    assert (
        "make demo" in section and DEMO_MODEL in section and "no result of the demo is a real proof" in section.lower()
    )


@pytest.mark.slow
def test_every_part_says_it_is_a_demo_and_the_callers_settings_are_not_used(demo: DemoUp) -> None:
    log = demo.log()
    assert log.lstrip().startswith("=" * 100) and BANNER in log.split("started redis-server")[0]  # before anything
    with demo.client() as client:  # no key: the `.env` of the directory with OPROVER_API_KEYS was not read
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        report = ready.json()
        assert report["demo"] is True and report["banner"] == BANNER
        assert report["checks"]["lean"]["workers"][0]["lean"].endswith("-standin")
        assert report["checks"]["generator"]["url"] != "http://127.0.0.1:1/v1"  # the caller's was not used
        models = client.get("/v1/models").json()["data"]
    loop = next(entry for entry in models if entry["id"] == "oprover")
    assert loop["generator_model"] == DEMO_MODEL and DEMO_MODEL.startswith("standin-")
    assert loop["default_lean_version"].endswith("-standin")
    assert all(version.endswith("-standin") for version in loop["lean"])
    raw = [entry["id"] for entry in models if entry.get("oprover_kind") == "raw_generator"]
    assert raw == [DEMO_MODEL]
    # its state is its own: the demo directory under where `up` runs, Redis not on the caller's port
    assert (demo.workdir / "data" / "demo" / "redis").is_dir() and not (demo.workdir / "data" / "redis").exists()


@pytest.mark.slow
def test_the_cli_proves_a_sample_theorem_after_a_failed_round(demo: DemoUp) -> None:
    started = time.monotonic()
    result = demo.cli("prove", "data/demo/sample/mathd_algebra_455.lean")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "x = 3 := by\n  linarith" in result.stdout
    assert "chain 0 round 1: fail" in result.stderr and "chain 0 round 2: pass" in result.stderr
    assert took > 2 * GENERATE_S  # two generations at the demo's latency, not instant answers
    # the banner sits right above the result, so no copy of "proved" loses it
    banner, proved = result.stderr.strip().splitlines()[-2:]
    assert BANNER in banner and "proved after 2 generation(s)" in proved, result.stderr

    with demo.client() as client:
        job = client.get(f"/v1/prove/{_job_id(result.stderr)}").json()
    assert job["status"] == "proved" and job["lean"]["lean"].endswith("-standin") and job["demo"] is True
    first, second = job["attempts"]
    assert first["verdict"] == "fail" and "omega could not prove the goal" in first["feedback"]
    assert SCRIPTED + "omega could not prove the goal" in first["feedback"]  # not worded as Lean's own error
    assert second["verdict"] == "pass" and second["model"] == DEMO_MODEL
    assert first["retrieved"], "the seeded memory gave the prompt related proofs"


@pytest.mark.slow
def test_http_prove_and_its_events_show_the_failed_round_then_the_proof(demo: DemoUp) -> None:
    problem = _problem("algebra_apb4leq8ta4pb4")
    with demo.client() as client:
        created = client.post("/v1/prove", json={"formal_statement": problem.formal_statement})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        events = []
        with client.stream("GET", f"/v1/prove/{job_id}/events", timeout=httpx.Timeout(60, read=60)) as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind:
                    events.append((kind, json.loads(line.split(":", 1)[1])))
                    if kind.startswith("job.") and kind not in ("job.created", "job.running"):
                        break
        job = client.get(f"/v1/prove/{job_id}").json()
    verified = [(data["round"], data["verdict"]) for kind, data in events if kind == "attempt.verified"]
    assert verified == [(1, "fail"), (2, "pass")], events
    assert events[-1][0] == "job.proved"
    assert job["status"] == "proved" and "mul_pos h₀.1 h₀.2" in job["proof"]
    assert "linarith failed to find a contradiction" in job["attempts"][0]["feedback"]
    assert job["lean"]["lean"].endswith("-standin")


@pytest.mark.slow
def test_a_verdict_of_the_demo_says_no_lean_ran(demo: DemoUp) -> None:
    """`oprover verify` and /v1/verify of a sample's scripted proof: a pass, labelled as the stand-in's."""
    problem = _problem("mathd_algebra_182")
    statement = problem.formal_statement.rstrip().removesuffix("sorry").rstrip()
    proof = next(answer["proof"] for answer in problem.answers if answer["lean"] == "pass")
    code = statement + "\n" + "\n".join("  " + line for line in proof.splitlines()) + "\n"
    (demo.workdir / "scripted.lean").write_text(problem.header + code, encoding="utf-8")
    result = demo.cli("verify", "scripted.lean")
    assert result.returncode == 0 and "verdict: pass" in result.stdout, result.stdout + result.stderr
    assert BANNER in result.stderr and ACCEPTED in result.stdout  # the banner, and the stand-in's own message
    with demo.client() as client:
        response = client.post("/v1/verify", json={"code": code, "formal_statement": problem.formal_statement})
    assert response.status_code == 200, response.text
    verdict = response.json()
    assert verdict["verdict"] == "pass" and verdict["demo"] is True
    assert [m["data"] for m in verdict["messages"] if m["severity"] == "info"] == [ACCEPTED]


@pytest.mark.slow
def test_off_the_demo_no_result_carries_the_demo_label(harness: ServiceHarness) -> None:
    """The label is the demo's alone: without OPROVER_API_DEMO a job object and a verdict have no `demo` field and
    the CLI prints no banner."""
    url = harness.start_gateway()
    harness.start_worker("verify")
    code = "theorem off_demo (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  PASS_ME\n"
    with harness.client() as client:
        created = client.post("/v1/prove", json={"formal_statement": "theorem t : 1 + 1 = 2 := by sorry"})
        assert created.status_code == 202, created.text
        cancelled = client.delete(f"/v1/prove/{created.json()['id']}")
        verdict = client.post("/v1/verify", json={"code": code})
    assert verdict.status_code == 200 and verdict.json()["verdict"] == "pass", verdict.text
    assert "demo" not in created.json() and "demo" not in cancelled.json() and "demo" not in verdict.json()
    (harness.workdir / "off_demo.lean").write_text(code, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPROVER_")}
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "verify", str(harness.workdir / "off_demo.lean"), "--url", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0 and "verdict: pass" in result.stdout, result.stdout + result.stderr
    assert BANNER not in result.stderr and "demo" not in result.stdout.lower()


@pytest.mark.slow
def test_a_never_proved_sample_theorem_ends_not_found_with_its_attempts(demo: DemoUp) -> None:
    result = demo.cli("prove", "data/demo/sample/imo_1987_p4.lean")
    assert result.returncode == 1, result.stderr  # answered, negative
    assert "failed after 4 generation(s)" in result.stderr
    with demo.client() as client:
        job = client.get(f"/v1/prove/{_job_id(result.stderr)}").json()
    assert job["status"] == "failed" and job["proof"] is None
    assert [a["round"] for a in job["attempts"]] == list(range(1, ROUNDS + 1))
    assert all(a["verdict"] == "fail" and a["lean"]["lean"].endswith("-standin") for a in job["attempts"])
    assert "unsolved goals" in job["attempts"][0]["feedback"]
    assert "linarith failed" in job["attempts"][1]["feedback"]


@pytest.mark.slow
def test_nothing_outside_the_sample_is_ever_proved(demo: DemoUp) -> None:
    outside = "theorem not_in_the_sample (x : ℝ) (h : 2 * x = 4) : x = 2 := by sorry"
    # a sample statement under another name, and a sample name with another (false) statement
    renamed = _statement("mathd_algebra_455").replace("mathd_algebra_455", "my_copy_of_455")
    false_twin = "theorem mathd_algebra_455 (x : ℝ) (h₀ : 2 * (2 * (2 * (2 * x))) = 48) : x = 4 := by sorry"
    with demo.client() as client:
        jobs = []
        for statement in (outside, renamed, false_twin):
            created = client.post("/v1/prove", json={"formal_statement": statement})
            assert created.status_code == 202, created.text
            jobs.append(created.json()["id"])
        # the scripted passing proof, checked directly against a statement it was not scripted for
        verdict = client.post(
            "/v1/verify",
            json={"code": false_twin.replace("sorry", "linarith"), "formal_statement": false_twin},
        ).json()
        assert verdict["verdict"] != "pass", verdict
        for job_id in jobs:
            job = _finished(client, job_id)
            assert job["status"] == "failed" and job["proof"] is None, job
            assert len(job["attempts"]) == ROUNDS
            assert "not one of the demo sample's scripted proofs" in job["attempts"][-1]["feedback"]


@pytest.mark.slow
def test_the_memory_grows_with_each_proof(demo: DemoUp) -> None:
    seed = Path(__file__).resolve().parents[1] / "standins" / "demo" / "seed_memory.jsonl"
    seeded = sum(1 for line in seed.read_text(encoding="utf-8").splitlines() if line.strip())
    assert demo.memory_size() >= seeded  # the seed is in before any proof
    # proofs of earlier tests join the memory a moment after their jobs end: start from a settled count
    before, deadline = -1.0, time.monotonic() + 30
    while (size := demo.memory_size()) != before:
        assert time.monotonic() < deadline, "the memory size does not settle"
        before = size
        time.sleep(2)
    result = demo.cli("prove", "data/demo/sample/mathd_numbertheory_200.lean")
    assert result.returncode == 0, result.stderr
    assert "chain 0 round 1: pass" in result.stderr  # proved in round 1
    deadline = time.monotonic() + 30
    while demo.memory_size() < before + 1:
        assert time.monotonic() < deadline, f"the memory did not grow: {demo.memory_size()}"
        time.sleep(0.5)


@pytest.mark.slow
def test_ctrl_c_stops_every_process_the_demo_started(demo: DemoUp) -> None:
    children = psutil.Process(demo.process.pid).children(recursive=True)
    names = " ".join(" ".join(child.cmdline()) for child in children)
    for part in ("redis-server", "standins.openai_server", "serve", "worker generate", "worker verify", "fake_repl"):
        assert part in names, names
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=60) == 0, demo.log()[-4000:]
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    assert "Traceback" not in demo.log()
