"""ProofMemory over a real embedded Qdrant: retrieval, the never-the-target rule, dedup, locking, threads."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.errors import MemoryError_
from services.memory import ProofMemory, VerifiedProof, format_stats
from services.settings import QdrantSettings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> list[dict]:
    with (SHARED_DATA / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    return load("verified_proofs_sample.jsonl")


def as_proof(record: dict, **overrides: object) -> VerifiedProof:
    fields = {
        "formal_statement": record["formal_statement"],
        "proof": record["proof"],
        "header": record["header"],
        "source": record["source"],
        "model": record.get("prover"),
        "lean_version": "v4.9.0",
    }
    fields.update(overrides)
    return VerifiedProof(**fields)  # type: ignore[arg-type]


@pytest.fixture
def memory(tmp_path: Path) -> ProofMemory:
    mem = ProofMemory(QdrantSettings(path=tmp_path / "qdrant"))
    yield mem
    mem.close()


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, sample: list[dict]) -> ProofMemory:
    """The whole sample, shared by the tests that only read."""
    mem = ProofMemory(QdrantSettings(path=tmp_path_factory.mktemp("filled") / "qdrant"))
    assert mem.add([as_proof(r) for r in sample]) == len(sample)
    yield mem
    mem.close()


def by_name(sample: list[dict], name: str) -> dict:
    return next(r for r in sample if r["name"] == name)


# ---------------------------------------------------------------- retrieval


def test_a_verified_proof_is_retrieved_for_a_similar_statement(memory: ProofMemory, sample: list[dict]) -> None:
    # Job 1 proves mathd_algebra_43 (f x = a*x + b, two values given, find f 3); the memory holds it
    # together with every other sample proof.
    proved = by_name(sample, "mathd_algebra_43")
    memory.add([as_proof(r) for r in sample])
    # Job 2: a later target, the same kind of problem with other numbers and another name. (Lexical
    # retrieval matches local names too: renaming a, b, f would rank it lower; docs/memory.md.)
    target = (
        "theorem linear_from_two_values (a b : ℝ) (f : ℝ → ℝ) (h₀ : ∀ x, f x = a * x + b) (h₁ : f 2 = 5)\n"
        "  (h₂ : f 1 = 3) : f 4 = 9 := by sorry"
    )
    hits = memory.search(target, top_k=3)
    assert hits, "nothing retrieved"
    assert hits[0].formal_statement == proved["formal_statement"]
    assert hits[0].proof == proved["proof"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_search_returns_at_most_top_k_distinct_statements(filled: ProofMemory, sample: list[dict]) -> None:
    target = by_name(sample, "mathd_algebra_43")["formal_statement"].replace("mathd_algebra_43", "other")
    hits = filled.search(target + "\n-- a variant", top_k=5)
    assert len(hits) == 5
    statements = [h.formal_statement for h in hits]
    assert len(set(statements)) == 5
    assert filled.search(target, top_k=0) == []


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda s: s, id="verbatim"),
        pytest.param(lambda s: s.replace(":= by", ":= by sorry"), id="with-sorry"),
        pytest.param(lambda s: "/-- the same problem -/\n" + s.replace("\n", "\n    "), id="doc-comment-and-layout"),
        pytest.param(lambda s: s.replace("theorem mathd_algebra_43", "lemma renamed_copy"), id="renamed-lemma"),
        pytest.param(lambda s: s.replace("(h₁ : f 7 = 4)", "(h₁ : f 7 = 4) -- note"), id="line-comment"),
    ],
)
def test_the_target_itself_is_never_retrieved(filled: ProofMemory, sample: list[dict], variant) -> None:
    original = by_name(sample, "mathd_algebra_43")["formal_statement"]
    target = variant(original)
    hits = filled.search(target, top_k=8)
    assert hits, "similar proofs should still come back"
    assert all(h.formal_statement != original for h in hits)


def test_exclude_list_keeps_statements_out(filled: ProofMemory, sample: list[dict]) -> None:
    target = by_name(sample, "mathd_algebra_43")["formal_statement"].replace("mathd_algebra_43", "t")
    first = filled.search(target, top_k=3)
    excluded = [h.formal_statement for h in first]
    again = filled.search(target, top_k=3, exclude=excluded)
    assert len(again) == 3
    assert not {h.formal_statement for h in again} & set(excluded)


def test_exclusion_file_keeps_a_benchmark_out(tmp_path: Path, sample: list[dict]) -> None:
    # minif2f_valid.jsonl is the benchmark: no proof of one of its statements may be retrieved.
    settings = QdrantSettings(path=tmp_path / "q", exclude_file=SHARED_DATA / "minif2f_valid.jsonl")
    with ProofMemory(settings) as memory:
        memory.add([as_proof(r) for r in sample])
        assert memory.stats()["excluded_statements"] >= 244
        benchmark = {r["formal_statement"] for r in sample if r.get("matches_minif2f_statement")}
        for record in sample[:40]:
            for hit in memory.search(record["formal_statement"].replace(record["name"], "x"), top_k=6):
                assert hit.formal_statement not in benchmark
        workbook = [r for r in sample if r["dataset"] == "lean_workbook"]
        assert memory.search(workbook[0]["formal_statement"], top_k=3), "non-benchmark proofs still come back"


def test_an_unreadable_exclusion_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "exclude.jsonl"
    bad.write_text('{"formal_statement": "theorem a : True := by"}\nnot json\n')
    with pytest.raises(MemoryError_, match="line 2"):
        ProofMemory(QdrantSettings(path=tmp_path / "q", exclude_file=bad))
    with pytest.raises(MemoryError_, match="cannot read"):
        ProofMemory(QdrantSettings(path=tmp_path / "q", exclude_file=tmp_path / "missing.jsonl"))


def test_lookup_finds_the_exact_statement(filled: ProofMemory, sample: list[dict]) -> None:
    record = by_name(sample, "mathd_algebra_43")
    found = filled.lookup(record["formal_statement"].replace(":= by", ":= by sorry"))
    assert [f.proof for f in found] == [record["proof"]]
    assert filled.lookup("theorem nowhere (x : ℕ) : x = x := by") == []


# ---------------------------------------------------------------- growth and dedup


def test_duplicates_are_not_stored_twice(memory: ProofMemory, sample: list[dict]) -> None:
    proofs = [as_proof(r) for r in sample[:10]]
    assert memory.add(proofs) == 10
    assert memory.add(proofs) == 0
    # the same proof again with other provenance and layout, and twice within one batch
    relaid = as_proof(sample[0], proof=sample[0]["proof"].replace("\n", "\n\n"), job_id="job-2", source="job")
    assert memory.add([relaid, relaid]) == 0
    assert memory.count() == 10
    # a different proof of a stored statement is new
    other = as_proof(sample[0], proof=sample[0]["proof"] + "\n-- second proof")
    assert memory.add([other, other]) == 1
    assert memory.count() == 11


def test_provenance_is_kept(memory: ProofMemory, sample: list[dict]) -> None:
    proof = as_proof(sample[0], source="job", model="oprover-8b", job_id="job-123", created_at=1700000000.0)
    memory.add([proof])
    (stored,) = list(memory.iter_proofs())
    assert stored == proof
    assert stored.name == sample[0]["name"]


def test_concurrent_adds_and_searches_from_threads(memory: ProofMemory, sample: list[dict]) -> None:
    proofs = [as_proof(r) for r in sample[:120]]
    added: list[int] = []
    errors: list[BaseException] = []

    def writer(chunk: list[VerifiedProof]) -> None:
        try:
            added.append(memory.add(chunk))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for record in sample[:10]:
                memory.search(record["formal_statement"], top_k=3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    # Overlapping chunks: every proof is offered by two threads at once.
    threads = [threading.Thread(target=writer, args=(proofs[i : i + 40],)) for i in range(0, 120, 20)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sum(added) == 120
    assert memory.count() == 120


# ---------------------------------------------------------------- process rules


LOCKER = """
import sys, time
from pathlib import Path
from services.memory import ProofMemory
from services.settings import QdrantSettings
memory = ProofMemory(QdrantSettings(path=Path(sys.argv[1])))
print("open", flush=True)
sys.stdin.readline()
memory.close()
"""


def test_a_directory_held_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "qdrant"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(MemoryError_, match="locked by another process") as info:
            ProofMemory(QdrantSettings(path=path))
        assert info.value.transient is False
    finally:
        holder.communicate("\n", timeout=30)
    # once the holder is gone the directory opens
    with ProofMemory(QdrantSettings(path=path)) as memory:
        assert memory.count() == 0


def test_health_stats_and_close(memory: ProofMemory, sample: list[dict]) -> None:
    memory.health()
    memory.add([as_proof(r) for r in sample[:3]])
    stats = memory.stats()
    assert stats["backend"] == "embedded"
    assert stats["points"] == 3
    assert stats["dense_vector"] is False
    lines = format_stats(stats).splitlines()
    assert len(lines) == len(stats)
    assert any(line.split() == ["points", "3"] for line in lines)
    memory.close()
    with pytest.raises(MemoryError_, match="closed"):
        memory.health()


def test_the_memory_survives_a_restart(tmp_path: Path, sample: list[dict]) -> None:
    settings = QdrantSettings(path=tmp_path / "q")
    with ProofMemory(settings) as memory:
        memory.add([as_proof(r) for r in sample[:5]])
    with ProofMemory(settings) as memory:
        assert memory.count() == 5
        assert memory.add([as_proof(r) for r in sample[:6]]) == 1


def test_the_in_process_index_scores_exactly_as_qdrant(tmp_path: Path, sample: list[dict]) -> None:
    """Embedded mode answers from its own inverted index; Qdrant's sparse IDF query is the reference."""
    proofs = [as_proof(r) for r in sample]
    with (
        ProofMemory(QdrantSettings(path=tmp_path / "index")) as fast,
        ProofMemory(QdrantSettings(path=tmp_path / "qdrant", embedded_index=False)) as reference,
    ):
        assert (fast.stats()["lexical_index"], reference.stats()["lexical_index"]) == ("in-process", "qdrant")
        fast.add(proofs)
        reference.add(proofs)
        for record in sample[::23]:
            target = record["formal_statement"]
            got = fast.search(target, top_k=6)
            want = reference.search(target, top_k=6)
            assert [round(h.score, 3) for h in got] == [round(h.score, 3) for h in want]
            scores = [round(h.score, 3) for h in want]
            for mine, theirs, score in zip(got, want, scores, strict=True):
                if scores.count(score) == 1:  # equal scores may come in either order
                    assert mine.id == theirs.id


def test_the_index_is_rebuilt_from_the_store_on_restart(tmp_path: Path, sample: list[dict]) -> None:
    settings = QdrantSettings(path=tmp_path / "q")
    target = sample[3]["formal_statement"]
    with ProofMemory(settings) as memory:
        memory.add([as_proof(r) for r in sample[:100]])
        before = memory.search(target, top_k=5)
    with ProofMemory(settings) as memory:
        assert memory.search(target, top_k=5) == before


def test_server_collection_settings_for_millions_of_points() -> None:
    """No server runs here: check the creation arguments against qdrant-client's own API and models."""
    import inspect

    from qdrant_client import QdrantClient, models

    from services.memory.store import collection_config

    settings = QdrantSettings(url="http://qdrant:6333", hnsw_m=48, hnsw_ef_construct=300)
    config = collection_config(settings, dense_size=1024, server=True)
    assert set(config) <= set(inspect.signature(QdrantClient.create_collection).parameters)
    request = models.CreateCollection(
        vectors=config["vectors_config"],
        sparse_vectors=config["sparse_vectors_config"],
        on_disk_payload=config["on_disk_payload"],
        hnsw_config=config["hnsw_config"],
        quantization_config=config["quantization_config"],
    )
    assert request.vectors["dense"].on_disk is True and request.vectors["dense"].size == 1024
    assert request.sparse_vectors["lex"].modifier == models.Modifier.IDF
    assert request.sparse_vectors["lex"].index.on_disk is True
    assert request.on_disk_payload is True
    assert (request.hnsw_config.m, request.hnsw_config.ef_construct, request.hnsw_config.on_disk) == (48, 300, False)
    scalar = request.quantization_config.scalar
    assert (scalar.type, scalar.always_ram) == (models.ScalarType.INT8, True)
    # lexical only, and the embedded variant carries none of the server-only settings
    assert collection_config(settings, dense_size=None, server=True)["vectors_config"] == {}
    embedded = collection_config(QdrantSettings(), dense_size=None, server=False)
    assert set(embedded) == {"vectors_config", "sparse_vectors_config"}


def test_renamed_copies_of_one_theorem_take_one_slot(memory: ProofMemory, sample: list[dict]) -> None:
    record = by_name(sample, "mathd_algebra_43")
    copies = [
        as_proof(
            record,
            formal_statement=record["formal_statement"].replace("mathd_algebra_43", f"copy_{i}"),
            proof=record["proof"].replace("mathd_algebra_43", f"copy_{i}"),
        )
        for i in range(3)
    ]
    other = by_name(sample, "mathd_numbertheory_48")
    memory.add([*copies, as_proof(other)])
    target = record["formal_statement"].replace("mathd_algebra_43", "yet_another").replace("f 3 = 0", "f 3 = 1")
    hits = memory.search(target, top_k=2)
    assert len(hits) == 2
    assert sum("copy_" in hit.formal_statement for hit in hits) == 1
