"""No contamination: a benchmark problem's own proofs are never retrieved while it is proved, by
statement hash and by problem name. The shared sample holds the hard case: a Seed-Prover proof of a
corrected (re-worded) `mathd_numbertheory_780`, whose statement hash differs from MiniF2F's."""

from __future__ import annotations

from pathlib import Path

from services.memory import ProofMemory, VerifiedProof, body_hash
from services.settings import QdrantSettings
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
