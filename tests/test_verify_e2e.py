"""`POST /v1/verify` and `oprover verify` through the verify queue (issue 3), and Lean versions side by side.

The REPL is the stand-in (tests/standins/fake_repl.py): its verdicts come from the test's table, not from Lean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import SHARED_DATA
from tests.harness import ROOT, ServiceHarness

pytestmark = pytest.mark.slow

PROOF = next(
    json.loads(line)
    for line in (SHARED_DATA / "verified_proofs_sample.jsonl").read_text().splitlines()
    if json.loads(line)["name"] == "mathd_numbertheory_48"
)
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
    service.start_worker(
        "verify",
        name="verify-v4-9",
        concurrency=1,
        OPROVER_LEAN_VERSION="v4.9.0",
        OPROVER_LEAN_SERVE_DEFAULT_QUEUE="false",
    )
    with service.client() as client:
        result = client.post("/v1/verify", json={"code": PROOF["proof"], "lean_version": "v4.9.0"}).json()
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
