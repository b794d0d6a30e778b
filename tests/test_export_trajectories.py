"""`oprover export trajectories` on stand-in runs: real gateway, workers and Redis; the stand-in
generator and REPL (standins/) answer from the test's script, not as the model or Lean would.

The examples' prompts are checked against the requests the stand-in generator actually received, byte for
byte; the proofs file is read back by the memory's importer; an export cut short is resumed to the same files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.evaluation import Attempt, ProblemResult, Sample
from services.memory import ProofMemory, import_proofs
from services.settings import QdrantSettings
from tests.harness import ROOT, ServiceHarness
from tests.shared_data import golden_record

pytestmark = pytest.mark.slow

LEAN_MESSAGE = "linarith failed to find a contradiction"


REPAIRED = golden_record("minif2f_problems.jsonl", "mathd_algebra_182")
UNSOLVED = golden_record("minif2f_problems.jsonl", "mathd_numbertheory_169")


def _block(statement: str, tactic: str) -> str:
    return f"Here it is.\n\n```lean4\n{statement.rstrip()}\n  {tactic}\n```\n"


def _export(harness: ServiceHarness, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "export", "trajectories", "--out", str(out), *extra],
        cwd=ROOT, env={**os.environ, **harness.env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_rounds_are_exported_with_the_exact_prompts_and_the_proofs_in_the_import_format(
    harness: ServiceHarness, tmp_path: Path
) -> None:
    harness.lean_rules(
        [{"match": "PASS_ME", "outcome": "pass"}, {"match": "nlinarith", "outcome": "error", "message": LEAN_MESSAGE}]
    )
    harness.generator.script(
        [
            {"match": LEAN_MESSAGE, "content": _block(REPAIRED["formal_statement"], "ring -- PASS_ME"), "times": 1,
             "delay_s": 1.0},
            {"match": "mathd_algebra_182", "content": _block(REPAIRED["formal_statement"], "nlinarith"),
             "delay_s": 1.0},
        ],
        default={"content": _block(UNSOLVED["formal_statement"], "nlinarith"), "delay_s": 1.0},
    )  # fmt: skip
    harness.start_gateway()
    harness.start_worker("generate")
    harness.start_worker("verify")
    repaired = harness.wait_job(harness.submit({**REPAIRED, "rounds": 2, "attempts": 1})["id"])
    unsolved = harness.wait_job(harness.submit({**UNSOLVED, "rounds": 2, "attempts": 1})["id"])
    assert (repaired["status"], unsolved["status"]) == ("proved", "failed")

    out = tmp_path / "rounds.jsonl"
    run = _export(harness, out)
    assert run.returncode == 0, run.stderr
    assert "exported 4 rounds and 1 verified proofs from 2 finished jobs" in run.stdout
    examples = [json.loads(line) for line in out.read_text().splitlines()]
    sent = {r["headers"]["x-request-id"]: r["body"]["messages"] for r in harness.generator.requests()}
    assert len(sent) == 4
    for example in examples:
        # exactly the chat the model was sent for that round, then the attempt as the assistant's turn
        assert example["messages"][:-1] == sent[f"{example['job_id']}-c{example['chain']}-r{example['round']}"]
        assert example["messages"][-1]["role"] == "assistant"
    repair = next(e for e in examples if e["job_id"] == repaired["id"] and e["round"] == 2)
    assert repair["kind"] == "repair" and repair["verdict"] == "pass"
    assert repair["previous"]["verdict"] == "fail" and "nlinarith" in repair["previous"]["code"]
    assert LEAN_MESSAGE in repair["previous"]["feedback"]
    assert "PASS_ME" in repair["messages"][-1]["content"] and repair["prompt_profile"]
    assert [e["verdict"] for e in examples if e["job_id"] == unsolved["id"]] == [
        a["verdict"] for a in unsolved["attempts"]
    ]
    assert len(unsolved["attempts"]) == 2 and "pass" not in {a["verdict"] for a in unsolved["attempts"]}

    proofs = tmp_path / "rounds.proofs.jsonl"
    [record] = [json.loads(line) for line in proofs.read_text().splitlines()]
    assert record["job_id"] == repaired["id"] and "PASS_ME" in record["proof"]
    with ProofMemory(QdrantSettings(path=tmp_path / "import-check")) as memory:
        assert import_proofs(memory, proofs, progress=False).added == 1

    # cut short in the middle of a line: resumed to the same files
    whole_rounds, whole_proofs = out.read_bytes(), proofs.read_bytes()
    out.write_bytes(whole_rounds[: len(whole_rounds) - len(whole_rounds.splitlines()[-1]) // 2 - 1])
    again = _export(harness, out)
    assert again.returncode == 0, again.stderr
    assert "(1 already exported)" in again.stdout
    assert (out.read_bytes(), proofs.read_bytes()) == (whole_rounds, whole_proofs)

    # only an eval run's jobs
    results = tmp_path / "results.jsonl"
    sample = Sample(job_id=unsolved["id"], status="failed", attempts=[Attempt(round=1, verdict="fail")])
    results.write_text(json.dumps(ProblemResult("mathd_numbertheory_169", [sample], {}).to_json()) + "\n")
    only = _export(harness, tmp_path / "eval-rounds.jsonl", "--results", str(results))
    assert only.returncode == 0, only.stderr
    exported = [json.loads(line)["job_id"] for line in (tmp_path / "eval-rounds.jsonl").read_text().splitlines()]
    assert exported == [unsolved["id"]] * 2
