"""`POST /v1/verify` and `oprover verify` through the verify queue, and Lean versions side by side.

The REPL is the stand-in (standins/fake_repl.py): its verdicts come from the test's table, not from Lean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from services.settings import Settings
from standins.fake_repl import lean_cmd, write_table
from tests.harness import ROOT, ServiceHarness
from tests.shared_data import golden_record
from workers.dispatch import Dispatcher

pytestmark = pytest.mark.slow

PROOF = golden_record("verified_proofs.jsonl", "mathd_numbertheory_48")
STATEMENT = PROOF["formal_statement"]


@pytest.fixture
def service(harness: ServiceHarness) -> ServiceHarness:
    harness.lean_rules(
        [
            {"match": "nlinarith [sq_nonneg (b : ℤ), h₀, h₁]", "outcome": "pass"},
            {"match": "omega", "outcome": "error", "message": "omega could not prove the goal"},
            # As Lean would judge it: `exact h₁` proves the weakened theorem, and not the real one.
            {"regex": r"\(h₁ : b = 4\) : b = 4 := by\s+exact h₁", "outcome": "pass"},
            {
                "match": "exact h₁",
                "outcome": "error",
                "message": "type mismatch\n  h₁\nhas type\n  3 * b ^ 2 + 2 * b + 1 = 57 : Prop\n"
                "but is expected to have type\n  b = 4 : Prop",
            },
        ]
    )
    harness.start_gateway()
    harness.start_worker("verify", concurrency=2)
    return harness


def test_verify_passes_a_real_proof_of_the_requested_statement(service: ServiceHarness) -> None:
    with service.client() as client:
        response = client.post("/v1/verify", json={"code": PROOF["proof"], "formal_statement": STATEMENT})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["verdict"] == "pass"
    assert set(result["axioms"]) <= {"propext", "Classical.choice", "Quot.sound"}
    assert result["time_ms"] >= 0
    assert result["lean"]  # the revisions that checked it


def test_verify_reports_lean_errors_with_positions(service: ServiceHarness) -> None:
    code = STATEMENT + "  omega\n"
    with service.client() as client:
        result = client.post("/v1/verify", json={"code": code}).json()
    assert result["verdict"] == "fail"
    errors = [m for m in result["messages"] if m["severity"] == "error"]
    assert errors and "omega could not prove the goal" in errors[0]["data"]


def test_verify_rejects_a_weakened_restatement(service: ServiceHarness) -> None:
    """The statement is imposed: a proof of an easier theorem under the same name does not pass."""
    weakened = PROOF["header"] + "theorem mathd_numbertheory_48 (b : ℕ) (h₀ : 0 < b) (h₁ : b = 4) : b = 4 := by\n"
    weakened += "  exact h₁\n"
    with service.client() as client:
        alone = client.post("/v1/verify", json={"code": weakened}).json()
        imposed = client.post("/v1/verify", json={"code": weakened, "formal_statement": STATEMENT}).json()
    assert alone["verdict"] == "pass"  # it is a fine proof of the theorem it states ...
    assert imposed["verdict"] == "fail"  # ... which is not the theorem that was asked for
    assert "type mismatch" in imposed["feedback"]


def test_verify_rejects_sorry_before_lean_sees_it(service: ServiceHarness) -> None:
    with service.client() as client:
        result = client.post("/v1/verify", json={"code": STATEMENT + "  sorry\n"}).json()
    assert result["verdict"] == "rejected"


def test_oprover_verify_cli(service: ServiceHarness, tmp_path) -> None:
    good = tmp_path / "good.lean"
    good.write_text(PROOF["proof"])
    bad = tmp_path / "bad.lean"
    bad.write_text(PROOF["header"] + STATEMENT + "  omega\n")
    env = {**os.environ, "OPROVER_URL": service.gateway_url}
    ok = subprocess.run(
        [sys.executable, "-m", "api.cli", "verify", str(good)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "verdict: pass" in ok.stdout
    fail = subprocess.run(
        [sys.executable, "-m", "api.cli", "verify", str(bad)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fail.returncode == 1
    assert "omega could not prove the goal" in fail.stdout


def test_a_second_lean_version_gets_its_own_queue(service: ServiceHarness) -> None:
    # Its REPL reports 4.9.0 (a worker refuses to announce a version its REPL does not run).
    table = json.loads((service.workdir / "repl-table.json").read_text())
    v4_9 = write_table(service.workdir / "repl-table-v4.9.json", table["rules"], default="error", lean_version="4.9.0")
    service.start_worker(
        "verify",
        name="verify-v4-9",
        concurrency=1,
        OPROVER_LEAN_VERSION="v4.9.0",
        OPROVER_LEAN_SERVE_DEFAULT_QUEUE="false",
        OPROVER_LEAN_CMD=lean_cmd(v4_9),
        OPROVER_LEAN_HEADER="import Mathlib\nimport FancyLib",
    )
    with service.client() as client:
        result = client.post("/v1/verify", json={"code": PROOF["proof"], "lean_version": "v4.9.0"}).json()
        # The gateway knows what each version's workers import from what they announce.
        fancy = {"formal_statement": STATEMENT, "header": "import Mathlib\nimport FancyLib"}
        fancy_v4_9 = client.post("/v1/prove", json={**fancy, "lean_version": "v4.9.0"})
        fancy_default = client.post("/v1/prove", json=fancy)
    assert fancy_v4_9.status_code == 202, fancy_v4_9.text
    assert fancy_default.status_code == 400 and fancy_default.json()["error"]["param"] == "header"
    with service.client() as client:
        unknown = client.post("/v1/verify", json={"code": PROOF["proof"], "lean_version": "v4.99.0"})
        prove_unknown = client.post("/v1/prove", json={"formal_statement": STATEMENT, "lean_version": "v4.99.0"})
    assert result["verdict"] == "pass"
    assert unknown.status_code == 400 and prove_unknown.status_code == 400
    message = unknown.json()["error"]["message"]
    assert "v4.9.0" in message and "v4.15.0" in message
    assert "verify-v4.9.0" in service.log("verify-v4-9")
    with service.client() as client:
        listed = client.get("/v1/models").json()["data"][0]
        ready = client.get("/readyz").json()
    assert listed["id"] == "oprover"
    assert set(listed["lean"]) == {"v4.15.0", "v4.9.0"}
    assert listed["lean"]["v4.9.0"]["workers"] == 1 and listed["lean"]["v4.15.0"]["workers"] == 1
    assert "oprover" in listed["prompt_profiles"]
    assert {w["version"] for w in ready["checks"]["lean"]["workers"]} == {"v4.15.0", "v4.9.0"}


# --- requests the service can never check: a 400 naming the field, at once, never retried -----------------------------
def _verify_jobs(service: ServiceHarness) -> list[Job]:
    ids = [key.decode().removeprefix("rq:job:") for key in service.redis.scan_iter("rq:job:vfy_*")]
    return [Job.fetch(i, connection=service.redis, serializer=JSONSerializer) for i in ids]


def test_a_header_importing_what_the_workers_do_not_load_is_a_400_before_enqueueing(service: ServiceHarness) -> None:
    header = "import Mathlib\nimport FancyLib.Tactics\n"
    with service.client() as client:
        verify = client.post("/v1/verify", json={"code": PROOF["proof"], "header": header})
        prove = client.post("/v1/prove", json={"formal_statement": STATEMENT, "header": header})
    for response in (verify, prove):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "header" and error["code"] == "unsupported_import"
        assert "FancyLib.Tactics" in error["message"]
    assert _verify_jobs(service) == []  # refused by the gateway: no worker spent a check on it


@pytest.fixture
def mismatched(harness: ServiceHarness) -> ServiceHarness:
    """A gateway whose OPROVER_LEAN_HEADER imports a module its verify worker's REPLs do not load: the gateway
    lets such a header through, and only the worker can find it cannot check it."""
    harness.lean_rules([{"match": "omega", "outcome": "error", "message": "omega could not prove the goal"}])
    harness.start_gateway(OPROVER_LEAN_HEADER="import Mathlib\nimport FancyLib\n")
    harness.start_worker("verify", concurrency=1)
    return harness


def test_a_header_the_worker_refuses_is_a_400_naming_header_at_once(mismatched: ServiceHarness) -> None:
    started = time.monotonic()
    with mismatched.client() as client:
        response = client.post(
            "/v1/verify", json={"code": STATEMENT + "  omega\n", "header": "import Mathlib\nimport FancyLib\n"}
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "header" and error["code"] == "unsupported_import"
    assert "FancyLib" in error["message"]
    assert time.monotonic() - started < 10
    [job] = _verify_jobs(mismatched)
    deadline = time.monotonic() + 10  # the result is pushed just before the job function returns
    while job.get_status() == "started" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.get_status() == "finished"  # it ran once and ended: not failed, not waiting for a retry


def test_a_proof_job_whose_header_the_worker_refuses_ends_at_once_naming_header(mismatched: ServiceHarness) -> None:
    mismatched.generator.script([], default={"content": f"```lean4\n{STATEMENT}  omega\n```"})
    mismatched.start_worker("generate", concurrency=2)
    job = mismatched.submit({"formal_statement": STATEMENT, "rounds": 3, "attempts": 1})  # the gateway's header
    job = mismatched.wait_job(job["id"], timeout_s=30)
    assert job["status"] == "error", job
    assert job["error"].startswith("invalid request (header): ") and "FancyLib" in job["error"]
    assert "not retried" in job["error"]
    assert len(job["attempts"]) == 1  # round 1 was generated; no later round was asked of the model
    assert len(mismatched.chat_requests()) == 1
    with mismatched.client() as client:
        events = client.get(f"/v1/prove/{job['id']}/events").text
    assert "round.retrying" not in events


def test_a_worker_holds_its_own_lean_limit_whatever_the_gateway_sent(harness: ServiceHarness) -> None:
    """A gateway configured with a higher limit than the worker cannot make the worker check for longer."""
    harness.lean_rules([{"match": "HANG_ME", "outcome": "hang"}])
    harness.start_gateway(OPROVER_LEAN_TIMEOUT_S="60")
    harness.start_worker("verify", concurrency=1, OPROVER_LEAN_TIMEOUT_S="1")
    started = time.monotonic()
    with harness.client() as client:
        result = client.post("/v1/verify", json={"code": STATEMENT + "  HANG_ME\n", "timeout_s": 30}).json()
    assert result["verdict"] == "timeout", result
    assert "no answer within 1 s" in result["detail"]
    assert time.monotonic() - started < 15


def test_timeout_s_above_the_operators_limit_is_a_400(service: ServiceHarness) -> None:
    with service.client() as client:
        response = client.post("/v1/verify", json={"code": PROOF["proof"], "timeout_s": 11})  # limit: 10 s
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "timeout_s" and "at most 10 s" in error["message"]


def test_the_rq_timeout_follows_the_checks_effective_limit(service: ServiceHarness) -> None:
    with service.client() as client:
        short = client.post("/v1/verify", json={"code": PROOF["proof"], "timeout_s": 2}).json()
    assert short["verdict"] == "pass"
    [job] = _verify_jobs(service)
    # The gateway runs on the shipped settings but OPROVER_LEAN_TIMEOUT_S=10, which the formula is not given here.
    dispatch = Dispatcher(service.redis, Settings(_env_file=None))
    assert job.timeout == dispatch.verify_timeout_for(2)  # sized for the client's 2 s ...
    assert job.timeout < dispatch.verify_timeout_for(10)  # ... not for the operator's 10 s limit


def test_a_check_cut_off_by_infrastructure_is_a_503_not_a_verdict(harness: ServiceHarness) -> None:
    """The verify worker dies mid-check and no retry is left: the client gets a 503 it can retry, not a 200
    `error` verdict it would take for Lean's word on the code."""
    harness.lean_rules([{"match": "SLOW_PASS", "outcome": "pass", "check_s": 60}])
    harness.start_gateway(OPROVER_WORKER_ROUND_RETRIES="0")
    harness.start_worker("verify", name="verify-a", concurrency=1)
    answer: dict[str, httpx.Response] = {}

    def call() -> None:
        with harness.client() as client:
            answer["response"] = client.post("/v1/verify", json={"code": STATEMENT + "  SLOW_PASS\n"}, timeout=120)

    caller = threading.Thread(target=call)
    caller.start()
    harness.wait_running("verify")
    harness.kill("verify-a")  # SIGKILL mid-check
    harness.start_worker("verify", name="verify-b", concurrency=1)  # its maintenance finds the abandoned check
    caller.join(timeout=90)
    response = answer["response"]
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "lean_unavailable"
    assert "verify worker died during verification" in error["message"]
