"""bench/load.py: many proof jobs at once through `oprover up`, and the checks that say nothing was lost.

The full run (500 jobs at real latencies, `python -m bench --only load`) takes minutes; here a small one (20 jobs,
sub-second stand-ins, the shipped settings) runs end to end so the script cannot rot, and the checks are shown to
catch what they look for.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.load import KINDS, Followed, Plan, check_generator, check_jobs, generator_rules, repl_rules, workload
from tests.harness import ROOT


@pytest.mark.timeout(420)  # about 60 s alone; 5 minutes at a load of 40 on 2 cores
def test_a_small_load_run_ends_every_job_as_its_theorem_says_and_loses_nothing() -> None:
    bench = subprocess.Popen(
        [sys.executable, "bench/load.py", "--jobs", "20", "--gen-s", "0.2,1", "--check-s", "0.1,0.5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=400)
    finally:
        if bench.poll() is None:  # SIGTERM, not SIGKILL: the bench then stops the `oprover up` it started
            bench.terminate()
            try:
                bench.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                bench.kill()
                bench.communicate()
    assert bench.returncode == 0, stdout[-4000:] + stderr[-4000:]
    rows = dict(
        line.strip("|").split(" | ", 1) for line in stdout.splitlines() if line.startswith("| ") and " | " in line
    )
    rows = {k.strip(): v.strip(" |") for k, v in rows.items()}
    assert rows["settings changed from the shipped defaults"].startswith("none")
    errors = rows["**errors**: HTTP errors / jobs ended `error` / jobs not ended as their theorem says"]
    assert errors == "**0 / 0 / 0**"
    lost = rows["**lost**: RQ (queued, started, scheduled, deferred, failed) / job keys / generator / memory"]
    assert lost == "**0 / 0 / 0 / 0**"
    assert rows["jobs ended"] == "5 failed, 15 proved"
    assert rows["generations requested (duplicates)"] == "40 (0)"  # 10 x 1 + 5 x 2 + 5 x 4 rounds
    assert rows["proofs in the memory after the run"] == "15 (proved jobs: 15)"


def test_the_workload_scripts_each_round_once_and_fails_all_rounds_of_a_never_proved_theorem() -> None:
    theorems = workload(8, 4, (5.0, 30.0), (2.0, 10.0), seed=1)
    assert [t.kind for t in theorems[:4]] == [KINDS[0], KINDS[1], KINDS[0], KINDS[2]]
    assert all(5 <= g <= 30 for t in theorems for g in t.gen_s)
    assert all(2 <= c <= 10 for t in theorems for c in t.check_s)
    never = theorems[3]
    verdicts = {rule["match"]: rule["outcome"] for rule in repl_rules(theorems)}
    assert [verdicts[never.token(k)] for k in range(1, 5)] == ["error"] * 4
    assert [verdicts[theorems[1].token(k)] for k in (1, 2)] == ["error", "pass"]
    rules = generator_rules(theorems)
    assert len(rules) == sum(t.rounds for t in theorems)
    # A repair round's rule comes before the first round's, whose statement its prompt also holds.
    assert [r["match"] for r in rules].index(never.token(1)) < [r["match"] for r in rules].index(never.statement)
    plan = Plan(theorems, rounds=4, generate_slots=64, verify_slots=2, shipped_verify_slots=2)
    assert plan.makespan_floor(2) == max(max(t.floor_s for t in theorems), plan.total_check_s / 2)


def test_the_checks_report_a_duplicate_generation_a_missing_round_and_a_job_that_ended_otherwise() -> None:
    theorems = workload(4, 4, (1.0, 1.0), (1.0, 1.0), seed=1)
    followed = [Followed(t, job_id=f"prf_{t.index}") for t in theorems]

    def request(rid: str) -> dict[str, object]:
        return {"headers": {"x-request-id": rid}, "outcome": "completed"}

    seen = [request(f"prf_{t.index}-c0-r{k}") for t in theorems for k in range(1, t.rounds + 1)]
    assert check_generator(seen, followed) == ([], len(seen), 0)
    problems, _, duplicates = check_generator([*seen[1:], seen[-1]], followed)
    assert duplicates == 1 and any("requested 2 times" in p for p in problems)
    assert any("never requested" in p for p in problems)

    never = followed[3]
    never.job = {"status": "proved", "attempts": [], "proof": "x", "error": None}
    never.events = ["job.proved"]
    assert any("expected failed" in p for p in check_jobs([never]))
    never.job = {"status": "failed", "attempts": [{"verdict": "fail"}] * 4, "proof": None}
    assert check_jobs([never]) == []
    never.events = ["job.created", "job.running"]
    assert check_jobs([never]) == [f"{never.theorem.name} (prf_3): its event stream never showed its end"]
