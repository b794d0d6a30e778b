"""No contamination: a benchmark problem's own proofs are never retrieved while it is proved, by
statement hash and by problem name. The shared sample holds the hard case: a Seed-Prover proof of a
corrected (re-worded) `mathd_numbertheory_780`, whose statement hash differs from MiniF2F's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.memory import ProofMemory, VerifiedProof, body_hash
from services.settings import QdrantSettings
from tests.harness import ROOT, ServiceHarness
from tests.shared_data import read_jsonl, shared_path


def _records(name: str) -> list[dict]:
    return read_jsonl(shared_path(name))


def _proof(record: dict) -> VerifiedProof:
    return VerifiedProof(
        formal_statement=record["formal_statement"], proof=record["proof"], header=record["header"],
        source=record["source"], name=record["name"],
    )  # fmt: skip


BENCHMARK = _records("minif2f_valid.jsonl")
SAMPLE = _records("verified_proofs_sample.jsonl")
TARGET = next(r for r in BENCHMARK if r["name"] == "mathd_numbertheory_780")
REWORDED = [r for r in SAMPLE if r["name"] == TARGET["name"] and body_hash(r["formal_statement"]) != body_hash(
    TARGET["formal_statement"])]  # fmt: skip


def test_a_reworded_statement_of_the_target_is_not_retrieved_under_its_name(tmp_path: Path) -> None:
    assert REWORDED, "the shared sample holds a re-worded mathd_numbertheory_780"
    with ProofMemory(QdrantSettings(path=tmp_path / "q")) as memory:
        memory.add([_proof(r) for r in SAMPLE])
        found = memory.search(TARGET["formal_statement"], top_k=32)
        assert found, "other theorems are still retrieved"
        assert not {body_hash(p.formal_statement) for p in found} & {body_hash(r["formal_statement"]) for r in REWORDED}
        assert all(TARGET["name"] not in p.formal_statement for p in found)


def test_with_the_benchmark_as_exclusion_file_no_problem_of_it_is_retrieved_by_name(tmp_path: Path) -> None:
    names = {r["name"] for r in BENCHMARK}
    settings = QdrantSettings(path=tmp_path / "q", exclude_file=shared_path("minif2f_valid.jsonl"))
    with ProofMemory(settings) as memory:
        memory.add([_proof(r) for r in SAMPLE])
        for record in BENCHMARK[:30]:
            for hit in memory.search(record["formal_statement"], top_k=8):
                stored_name = hit.formal_statement.split()[1]
                assert stored_name not in names, (record["name"], stored_name)
        other = next(r for r in SAMPLE if r["name"] not in names)
        assert memory.search(other["formal_statement"].replace(other["name"], "x"), top_k=3), "others still come"


# --- a real run: `oprover eval` keeps the whole benchmark out of every prompt ---------------------------------------
def _stored_names_and_hashes(harness: Any, job_ids: list[str]) -> list[tuple[str, str]]:
    """(declaration name, body hash) of every proof retrieved into the prompts of these jobs."""
    from services.store import JobStore

    store = JobStore(harness.redis)
    shown = []
    for job_id in job_ids:
        for proof in store.retrieved(job_id) or []:
            shown.append((proof.formal_statement.split()[1], body_hash(proof.formal_statement)))
    return shown


def _run_eval(url: str, bench: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "api.cli", "eval", str(bench), "--url", url, "--out", str(out), "--attempts", "1",
        "--rounds", "1", "--top-k", "8", "--concurrency", "2", "--poll-s", "0.2", *extra,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(300)  # two eval runs and an import of 338 proofs: 90 s at a load of 40 on 2 cores
def test_oprover_eval_keeps_every_problem_of_the_benchmark_out_of_retrieval(
    harness: ServiceHarness, tmp_path: Path
) -> None:
    """The workers run with no exclusion file; the memory holds the shared sample (241 of its 338 proofs are of
    MiniF2F-valid problems). `oprover eval` on the first problems of MiniF2F-valid asks, with every job, that the
    whole benchmark be excluded: no prompt shows a proof of any of its 244 problems, by hash or by name. The same
    run with --no-exclude-benchmark shows some: the exclusion is what keeps them out."""
    bench = shared_path("minif2f_valid.jsonl")
    names = {r["name"] for r in BENCHMARK}
    hashes = {body_hash(r["formal_statement"]) for r in BENCHMARK}
    imported = subprocess.run(
        [sys.executable, "-m", "api.cli", "memory", "import", str(shared_path("verified_proofs_sample.jsonl"))],
        cwd=ROOT, env={**os.environ, **harness.env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    harness.lean_rules([{"match": "PASS_ME", "outcome": "pass"}])
    harness.generator.script([], default={"content": "```lean4\ntheorem x : True := by\n  simp\n```"})
    url = harness.start_gateway()
    harness.start_worker("generate", concurrency=2)
    harness.start_worker("verify")

    excluded = tmp_path / "excluded.jsonl"
    run = _run_eval(url, bench, excluded, "--limit", "3")
    assert run.returncode == 0, run.stderr
    assert "no contamination: every job asks the service never to retrieve" in run.stdout
    job_ids = [s["job_id"] for line in excluded.read_text().splitlines() for s in json.loads(line)["samples"]]
    assert len(job_ids) == 3
    shown = _stored_names_and_hashes(harness, job_ids)
    assert shown, "proofs of other theorems are still retrieved"
    assert not [name for name, digest in shown if name in names or digest in hashes], shown

    open_run = tmp_path / "open.jsonl"
    run = _run_eval(url, bench, open_run, "--limit", "1", "--no-exclude-benchmark")
    assert run.returncode == 0, run.stderr
    job_ids = [s["job_id"] for line in open_run.read_text().splitlines() for s in json.loads(line)["samples"]]
    shown = _stored_names_and_hashes(harness, job_ids)
    own = BENCHMARK[0]["name"]
    assert any(name in names and name != own for name, _ in shown), shown
    assert json.loads(open_run.read_text().splitlines()[0])["settings"]["exclude_benchmark"] is False
