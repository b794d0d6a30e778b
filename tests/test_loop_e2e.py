"""The proving loop end to end: real Redis, real RQ worker processes, the gateway over HTTP.

The model and Lean are stand-ins (standins/): their answers are scripted per test and are not Lean's or
the model's. The statements and the passing proof are real MiniF2F data from ../shared/data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from rq import Queue, Worker

from tests.conftest import free_port
from tests.harness import ROOT, ServiceHarness
from tests.shared_data import golden_record

pytestmark = pytest.mark.slow

PROBLEM = golden_record("minif2f_problems.jsonl", "mathd_algebra_159")
# ends in `simp_all only [rpow_two, ...] ring_nf linarith`
GOOD = golden_record("verified_proofs.jsonl", "mathd_algebra_159", matches_minif2f_statement=True)["proof"]
GOOD_MARK = "simp_all only [rpow_two"
WRONG = PROBLEM["formal_statement"] + "  nlinarith [sq_nonneg (b + 2)]\n"
WRONG_MARK = "nlinarith [sq_nonneg (b + 2)]"
LEAN_MESSAGE = "linarith failed to find a contradiction"


def _block(code: str) -> str:
    return f"Let me prove it.\n\n```lean4\n{code}\n```\n"


def _standard_lean(harness: ServiceHarness, **good: object) -> None:
    harness.lean_rules(
        [
            {"match": GOOD_MARK, "outcome": "pass", **good},
            {"match": WRONG_MARK, "outcome": "error", "message": LEAN_MESSAGE},
        ]
    )


def _body(**extra: object) -> dict:
    return {
        "formal_statement": PROBLEM["formal_statement"],
        "informal_statement": PROBLEM["informal_statement"],
        **extra,
    }


def test_failed_first_round_is_repaired_in_round_two(harness: ServiceHarness) -> None:
    _standard_lean(harness)
    harness.generator.script([{"match": LEAN_MESSAGE, "content": _block(GOOD)}], default={"content": _block(WRONG)})
    harness.start_gateway()
    harness.start_worker("generate")
    harness.start_worker("verify")

    job = harness.wait_job(harness.submit(_body(rounds=2, attempts=1))["id"])

    assert job["status"] == "proved", job
    assert [(a["round"], a["verdict"]) for a in job["attempts"]] == [(1, "fail"), (2, "pass")]
    assert LEAN_MESSAGE in job["attempts"][0]["feedback"]
    for attempt in job["attempts"]:
        assert attempt["usage"]["completion_tokens"] > 0
        assert attempt["timings"]["generate_ms"] >= 0 and attempt["timings"]["verify_ms"] >= 0
    assert job["usage"]["generations"] == 2
    # The proof returned is the checked text, and it proves the requested statement.
    assert GOOD_MARK in job["proof"] and "theorem mathd_algebra_159" in job["proof"]
    prompts = harness.chat_requests()
    assert len(prompts) == 2
    round_two = json.dumps(prompts[1]["messages"], ensure_ascii=False)
    assert WRONG_MARK in round_two and LEAN_MESSAGE in round_two
    assert LEAN_MESSAGE not in json.dumps(prompts[0]["messages"], ensure_ascii=False)


def test_every_attempt_failing_ends_failed_after_attempts_times_rounds(harness: ServiceHarness) -> None:
    _standard_lean(harness)
    harness.generator.script([], default={"content": _block(WRONG)})
    harness.start_gateway()
    harness.start_worker("generate")
    harness.start_worker("verify")

    job = harness.wait_job(harness.submit(_body(rounds=3, attempts=2))["id"])

    assert job["status"] == "failed"
    assert job["usage"]["generations"] == 6
    assert len(harness.chat_requests()) == 6
    assert sorted((a["chain"], a["round"]) for a in job["attempts"]) == [(c, r) for c in (0, 1) for r in (1, 2, 3)]
    assert all(a["verdict"] == "fail" for a in job["attempts"])


def test_first_chain_to_pass_stops_the_others(harness: ServiceHarness) -> None:
    _standard_lean(harness)
    # Exactly one request gets the good proof; every other chain keeps failing.
    harness.generator.script(
        [{"match": "mathd_algebra_159", "content": _block(GOOD), "times": 1}], default={"content": _block(WRONG)}
    )
    harness.start_gateway()
    harness.start_worker("generate")
    harness.start_worker("verify")

    job = harness.wait_job(harness.submit(_body(rounds=5, attempts=4))["id"])
    assert job["status"] == "proved"
    time.sleep(1)  # a step that was already past its status check when the proof landed may still send its request
    seen = len(harness.chat_requests())
    time.sleep(3)  # long enough for several more rounds, had the other chains gone on
    assert len(harness.chat_requests()) == seen
    assert seen < 4 * 5
    assert harness.wait_job(job["id"])["usage"]["generations"] == seen


def test_delete_stops_a_running_job(harness: ServiceHarness) -> None:
    _standard_lean(harness)
    harness.generator.script([], default={"content": _block(WRONG), "delay_s": 2})
    harness.start_gateway()
    harness.start_worker("generate")
    harness.start_worker("verify")

    job = harness.submit(_body(rounds=4, attempts=2))
    harness.wait_job(job["id"], statuses={"running"})
    with harness.client() as client:
        response = client.delete(f"/v1/prove/{job['id']}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    time.sleep(3)  # had the in-flight generations gone on, they would have ended and been verified by now
    final = harness.wait_job(job["id"])
    assert final["status"] == "cancelled"
    assert len(harness.chat_requests()) == 2
    assert final["attempts"] == []  # both generations were aborted, nothing reached Lean
    assert "aborted: the job is finished" in harness.log("generate-worker")
    with harness.client() as client:
        assert client.delete(f"/v1/prove/{job['id']}").status_code == 200  # idempotent


def test_wait_returns_the_finished_job(harness: ServiceHarness) -> None:
    _standard_lean(harness)
    harness.generator.script([], default={"content": _block(GOOD)})
    harness.start_gateway()
    harness.start_worker("generate")
    harness.start_worker("verify")
    with harness.client() as client:
        response = client.post("/v1/prove?wait=30", json=_body())
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "proved"
    assert response.headers["location"] == f"/v1/prove/{response.json()['id']}"
    with harness.client() as client:
        conflict = client.delete(f"/v1/prove/{response.json()['id']}")
    assert conflict.status_code == 409 and conflict.json()["error"]["type"] == "conflict_error"
    with harness.client() as client:
        slow = client.post(
            "/v1/prove?wait=0.2", json={**_body(), "formal_statement": WRONG.replace(WRONG_MARK, "sorry")}
        )
    assert slow.status_code in (200, 202)


def test_events_stream_every_state_change_and_resumes(harness: ServiceHarness) -> None:
    _standard_lean(harness)
    harness.generator.script([{"match": LEAN_MESSAGE, "content": _block(GOOD)}], default={"content": _block(WRONG)})
    harness.start_gateway()
    harness.start_worker("generate")
    harness.start_worker("verify")
    job = harness.wait_job(harness.submit(_body(rounds=2))["id"])

    def read(headers: dict[str, str]) -> list[tuple[str, str]]:
        events, current = [], {}
        with (
            harness.client() as client,
            client.stream("GET", f"/v1/prove/{job['id']}/events", headers=headers) as stream,
        ):
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith(":"):
                    continue
                if not line:
                    if current:
                        events.append((current["id"], current["event"]))
                    current = {}
                    continue
                key, _, value = line.partition(": ")
                current[key] = value
        return events

    events = read({})
    kinds = [kind for _, kind in events]
    assert kinds[0] == "job.created" and kinds[-1] == "job.proved"
    assert kinds.count("attempt.generated") == 2 and kinds.count("attempt.verified") == 2
    resumed = read({"Last-Event-ID": events[2][0]})
    assert resumed == events[3:]


def test_oprover_prove_against_oprover_up(harness: ServiceHarness, tmp_path) -> None:
    _standard_lean(harness)
    harness.generator.script([], default={"content": _block(GOOD)})
    port = free_port()
    # Nothing listens at this Redis URL: `oprover up` starts a redis-server of its own for it.
    env = {
        **os.environ,
        **harness.env,
        "OPROVER_GENERATOR_CONCURRENCY": "2",
        "OPROVER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    with open(tmp_path / "up.log", "wb") as log:  # the child keeps its own copy of the descriptor
        up = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "up", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError((tmp_path / "up.log").read_text()[-4000:])
        statement = tmp_path / "problem.lean"
        statement.write_text(PROBLEM["header"] + PROBLEM["formal_statement"] + "  sorry\n")
        prove = subprocess.run(
            [sys.executable, "-m", "api.cli", "prove", str(statement), "--url", f"http://127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert prove.returncode == 0, prove.stderr
        assert GOOD_MARK in prove.stdout
        assert "proved" in prove.stderr
    finally:
        up.send_signal(2)  # Ctrl-C
        assert up.wait(timeout=30) == 0
    assert (tmp_path / "data" / "redis").is_dir()


def _submit_and_wait_for_a_running_check(harness: ServiceHarness, *, check_s: float) -> dict:
    """A one-round job whose (slow, passing) check is running on the only verify worker, `verify-a`."""
    _standard_lean(harness, check_s=check_s)
    harness.generator.script([], default={"content": _block(GOOD)})
    harness.start_gateway()
    harness.start_worker("generate")
    harness.start_worker("verify", name="verify-a", concurrency=1)
    job = harness.submit(_body(rounds=1))
    harness.wait_running("verify")
    return job


def test_verify_worker_killed_mid_check_is_retried(harness: ServiceHarness) -> None:
    job = _submit_and_wait_for_a_running_check(harness, check_s=4)

    harness.kill("verify-a")  # SIGKILL mid-check: no goodbye, no failure recorded by the worker itself
    harness.start_worker("verify", name="verify-b", concurrency=1)

    final = harness.wait_job(job["id"], timeout_s=60)
    assert final["status"] == "proved"
    assert [a["verdict"] for a in final["attempts"]] == ["pass"]


def test_unreachable_generator_ends_the_job_with_error_and_readyz_says_so(harness: ServiceHarness) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    harness.env["OPROVER_GENERATOR_URL"] = dead
    harness._generator = None
    harness.start_worker("verify")
    port = free_port()
    harness._spawn("gateway", "serve", "--port", str(port))
    harness.gateway_url = f"http://127.0.0.1:{port}"
    harness._wait(lambda: httpx.get(f"{harness.gateway_url}/healthz").status_code == 200, "gateway", 20)
    harness._spawn("generate-worker", "worker", "generate", "--concurrency", "2")

    job = harness.wait_job(harness.submit(_body())["id"], timeout_s=60)
    assert job["status"] == "error"
    assert job["error"].startswith("generator")
    with harness.client() as client:
        ready = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    assert ready.status_code == 503
    assert ready.json()["checks"]["generator"]["ok"] is False


def test_generator_returning_500s_ends_the_job_with_error(harness: ServiceHarness) -> None:
    harness.generator.script([{"match": "", "status": 500, "error_message": "CUDA error: out of memory"}])
    harness.start_gateway()
    harness.start_worker("generate")
    harness.start_worker("verify")
    job = harness.wait_job(harness.submit(_body())["id"], timeout_s=60)
    assert job["status"] == "error"
    assert "generator" in job["error"]
    # bounded: (client retries + 1) x (RQ retries + 1) requests, then the job gave up
    assert 1 < len(harness.chat_requests()) <= (2 + 1) * (3 + 1)


def test_a_verified_proof_is_retrieved_by_a_later_job_but_never_for_its_own_statement(
    harness: ServiceHarness,
) -> None:
    _standard_lean(harness)
    harness.generator.script(
        [{"match": "theorem mathd_algebra_159 ", "content": _block(GOOD)}], default={"content": _block(WRONG)}
    )
    harness.start_gateway()
    harness.start_worker("generate")
    harness.start_worker("verify")
    first = harness.wait_job(harness.submit(_body(rounds=1))["id"])
    assert first["status"] == "proved"
    remembered = Queue("memory", connection=harness.redis)
    deadline = time.monotonic() + 20
    while remembered.finished_job_registry.count == 0:
        assert time.monotonic() < deadline, harness.log("generate-worker")[-3000:]
        time.sleep(0.1)

    similar = (
        PROBLEM["formal_statement"]
        .replace("mathd_algebra_159", "mathd_algebra_159_variant")
        .replace("(h₁ : f 1 = 1) : b = -2", "(h₁ : f 1 = 2) : b = -3")
    )
    assert similar != PROBLEM["formal_statement"]
    harness.generator.reset()
    harness.generator.script([], default={"content": _block(WRONG)})
    harness.wait_job(harness.submit({"formal_statement": similar, "rounds": 1})["id"])
    harness.wait_job(harness.submit(_body(rounds=1))["id"])
    similar_prompt, own_prompt = (json.dumps(r["messages"], ensure_ascii=False) for r in harness.chat_requests())
    assert "mathd_algebra_159_variant" in similar_prompt
    assert GOOD_MARK in similar_prompt  # the earlier job's verified proof, retrieved
    assert GOOD_MARK not in own_prompt  # never the target's own proof

    # Every chain and round of one job shows the same retrieved proofs: one stable prompt prefix.
    harness.generator.reset()
    harness.generator.script([], default={"content": _block(WRONG)})
    harness.wait_job(harness.submit({"formal_statement": similar, "rounds": 2, "attempts": 2})["id"])
    firsts = [
        r["messages"][-1]["content"] if len(r["messages"]) == 1 else r["messages"][0]["content"]
        for r in harness.chat_requests()
    ]
    assert len(firsts) == 4 and all(GOOD_MARK in text for text in firsts)
    block = firsts[0][: firsts[0].index("mathd_algebra_159_variant")]
    assert all(text.startswith(block) for text in firsts)


def test_a_check_cut_off_with_no_retries_left_ends_the_job_with_error(harness: ServiceHarness) -> None:
    """RQ's maintenance finds the abandoned step and its failure callback ends the job, naming the cause."""
    harness.env["OPROVER_WORKER_ROUND_RETRIES"] = "0"
    job = _submit_and_wait_for_a_running_check(harness, check_s=30)
    harness.kill("verify-a")
    harness.start_worker("verify", name="verify-b", concurrency=1)  # its maintenance notices the dead step

    final = harness.wait_job(job["id"], timeout_s=60)
    assert final["status"] == "error"
    assert "verify worker died during verification" in final["error"]


def test_workers_and_retries_survive_a_redis_restart(tmp_path) -> None:
    """Redis goes away for a few seconds; afterwards a round that needs a delayed RQ retry still completes."""
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--save",
        "",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    harness = ServiceHarness(redis_url=f"redis://127.0.0.1:{port}/0", workdir=tmp_path)
    try:
        harness._wait(lambda: harness.redis.ping(), "redis", 10)
        harness.env["OPROVER_WORKER_RETRY_INTERVALS_S"] = "1"  # a delayed retry: needs the scheduler
        _standard_lean(harness)
        harness.start_gateway()
        harness.start_worker("generate", concurrency=2)
        harness.start_worker("verify", concurrency=1)

        server.terminate()  # SIGTERM: Redis shuts down (writing its AOF), clients see connection errors
        server.wait(timeout=10)
        time.sleep(3)
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        harness._wait(lambda: harness.redis.ping(), "redis", 10)
        time.sleep(4)  # long enough for every worker thread and the scheduler to have hit the outage

        # 3 failing requests exhaust the client's own retries (max 2): the round fails, RQ retries it 1 s later.
        harness.generator.script(
            [{"match": "mathd_algebra_159", "status": 500, "times": 3}], default={"content": _block(GOOD)}
        )
        # Well under a minute: the scheduler must take its lock back at once, not wait for it to expire.
        final = harness.wait_job(harness.submit(_body(rounds=1))["id"], timeout_s=20)
        assert final["status"] == "proved", final
        assert len(harness.chat_requests()) == 4
        workers = [w for w in Worker.all(connection=harness.redis) if w.name.startswith(("generate.", "verify."))]
        assert len(workers) == 2  # each process has its live RQ worker again
    finally:
        harness.close()
        server.terminate()
        server.wait(timeout=10)
