"""ProofMemory over real Qdrant Edge: retrieval, the never-the-target rule, k theorems, screening, dedup, the
single-owner rule, threads; and its ranking held to the server path's (qdrant-client) on the same points."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.errors import MemoryError_
from services.memory import ProofMemory, VerifiedProof, body_hash, format_stats
from services.memory.screening import screen
from services.memory.tokenizer import query_vector, statement_tokens
from services.settings import QdrantSettings
from tests.shared_data import shared_path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> list[dict]:
    with shared_path(name).open(encoding="utf-8") as handle:
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
    settings = QdrantSettings(path=tmp_path / "q", exclude_file=shared_path("minif2f_valid.jsonl"))
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
import json, sys
from pathlib import Path
from services.memory import ProofMemory, VerifiedProof
from services.settings import QdrantSettings
memory = ProofMemory(QdrantSettings(path=Path(sys.argv[1])))
print("open", flush=True)
sys.stdin.readline()
records = [json.loads(line) for line in open(sys.argv[2], encoding="utf-8")][:5]
proofs = [VerifiedProof(formal_statement=r["formal_statement"], proof=r["proof"], header=r["header"]) for r in records]
print("added", memory.add(proofs), flush=True)
memory.close()
"""


def test_a_directory_held_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "qdrant"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), str(shared_path("verified_proofs_sample.jsonl"))],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(MemoryError_, match=rf"open in another process \(pid {holder.pid}\)") as info:
            ProofMemory(QdrantSettings(path=path))
        assert info.value.transient is False
        assert "oprover memory import" in str(info.value)  # says what to do instead
        out, _ = holder.communicate("\n", timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # The refused opener touched nothing: the holder's proofs are all there once it is gone.
    assert out.split() == ["added", "5"]
    with ProofMemory(QdrantSettings(path=path)) as memory:
        assert memory.count() == 5


def test_a_second_opener_in_the_same_process_is_refused_and_the_first_goes_on(
    memory: ProofMemory, sample: list[dict]
) -> None:
    memory.add([as_proof(r) for r in sample[:3]])
    with pytest.raises(MemoryError_, match="open in another process"):
        ProofMemory(memory.settings)
    assert memory.add([as_proof(r) for r in sample[3:6]]) == 3
    assert memory.count() == 6
    assert memory.search(sample[0]["formal_statement"].replace(sample[0]["name"], "x"), top_k=2)


def test_health_stats_and_close(memory: ProofMemory, sample: list[dict]) -> None:
    memory.health()
    memory.add([as_proof(r) for r in sample[:3]])
    stats = memory.stats()
    assert stats["backend"] == "embedded"
    assert (stats["points"], stats["admitted"], stats["screened_out"]) == (3, 3, 0)
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


@pytest.mark.filterwarnings("ignore:.*(local mode|Local mode|local Qdrant).*:UserWarning")
def test_the_embedded_engine_ranks_as_the_server_path(tmp_path: Path, sample: list[dict]) -> None:
    """Qdrant Edge (embedded) against the server path's code on qdrant-client; an embedded qdrant-client
    collection stands in for the server. Same points, same queries: the same scores, in the same order."""
    from qdrant_client import QdrantClient

    from services.memory.server import ServerBackend

    proofs = [as_proof(r) for r in sample]
    settings = QdrantSettings(path=tmp_path / "edge")
    client = QdrantClient(path=str(tmp_path / "server"))
    server_path = ProofMemory(settings, backend=ServerBackend(client, settings, dense_size=lambda: None))
    with ProofMemory(settings) as edge, server_path:
        assert (edge.stats()["backend"], server_path.stats()["backend"]) == ("embedded", "server")
        assert edge.add(proofs) == server_path.add(proofs) == len(proofs)
        compared = 0
        for record in sample[::17]:
            target = record["formal_statement"]
            got = edge.search(target, top_k=6)
            want = server_path.search(target, top_k=6)
            assert len(got) == len(want) > 0
            scores = [round(h.score, 3) for h in want]
            assert [round(h.score, 3) for h in got] == scores
            for mine, theirs, score in zip(got, want, scores, strict=True):
                if scores.count(score) == 1:  # equal scores may come in either order
                    # the same theorem at each rank (of two proofs of one statement, either may stand for it)
                    assert body_hash(mine.formal_statement) == body_hash(theirs.formal_statement)
                    compared += 1
        assert compared > 50, "too few unambiguous ranks compared to mean anything"


def test_a_reopened_store_answers_the_same(tmp_path: Path, sample: list[dict]) -> None:
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

    from services.memory.server import collection_config

    settings = QdrantSettings(url="http://qdrant:6333", hnsw_m=48, hnsw_ef_construct=300)
    config = collection_config(settings, dense_size=1024)
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
    assert collection_config(settings, dense_size=None)["vectors_config"] == {}  # lexical only


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


def test_k_proofs_are_k_theorems_when_one_theorem_has_100_copies(memory: ProofMemory, sample: list[dict]) -> None:
    """A theorem proved again and again (renamed copies, re-proofs) fills every over-fetched candidate; the
    memory still returns k different theorems, and the right ones."""
    record = by_name(sample, "mathd_algebra_43")
    copies = [
        as_proof(
            record,
            formal_statement=record["formal_statement"].replace("mathd_algebra_43", f"copy_{i}"),
            proof=record["proof"].replace("mathd_algebra_43", f"copy_{i}") + f"\n-- proof {i}",
        )
        for i in range(100)
    ]
    others = [as_proof(r) for r in sample if r["name"] != "mathd_algebra_43"]
    assert memory.add(copies) == 100
    memory.add(others)
    target = record["formal_statement"].replace("mathd_algebra_43", "asked").replace("f 3 = 0", "f 3 = 1")
    for k in (1, 4, 8):
        hits = memory.search(target, top_k=k)
        assert len(hits) == k
        assert sum("copy_" in h.formal_statement for h in hits) == 1
        assert "copy_" in hits[0].formal_statement  # the copied theorem is still the best match
        assert len({body_hash(h.formal_statement) for h in hits}) == k
    # The exact answer: the engine's whole ranking (every point), collapsed to the best proof per theorem.
    everything = memory.backend.query(query_vector(statement_tokens(target)), None, [body_hash(target)], 10_000)
    assert 400 < len(everything) < 10_000  # not cut off: every admitted point sharing a token
    best_per_theorem: list[str] = []
    for hit in everything:
        if hit.payload["body_hash"] not in {body_hash(s) for s in best_per_theorem}:
            best_per_theorem.append(hit.payload["formal_statement"])
    # (of the hundred equal-scoring copies, any one may stand for their theorem)
    got = [body_hash(h.formal_statement) for h in memory.search(target, top_k=8)]
    assert got == [body_hash(s) for s in best_per_theorem[:8]]


NATIVE = "theorem mathd_numbertheory_3 : (∑ x in Finset.range 10, (x + 1) ^ 2) % 10 = 5 := by\n  native_decide"


def test_proofs_the_checker_would_refuse_are_kept_flagged_and_never_retrieved(memory: ProofMemory) -> None:
    statement = "theorem mathd_numbertheory_3 : (∑ x in Finset.range 10, (x + 1) ^ 2) % 10 = 5 := by"
    native = VerifiedProof(formal_statement=statement, proof=NATIVE)
    clean = VerifiedProof(formal_statement=statement, proof=NATIVE.replace("native_decide", "decide"))
    stored = memory.store([native, clean])
    assert stored.added == 2
    assert list(stored.flagged.values()) == [1] and "native_decide" in next(iter(stored.flagged))
    target = statement.replace("mathd_numbertheory_3", "asked").replace("% 10 = 5", "% 10 = 6")
    assert [h.proof for h in memory.search(target, top_k=4)] == [clean.proof]
    assert [h.proof for h in memory.lookup(statement)] == [clean.proof]
    stats = memory.stats()
    assert (stats["points"], stats["admitted"]) == (2, 1)
    assert list(stats["screened_out"].values()) == [1]
    assert "native_decide" in format_stats(stats)
    # kept as a record: exported like any other
    assert {p.proof for p in memory.iter_proofs()} == {native.proof, clean.proof}


def test_rescreening_readmits_what_an_earlier_policy_flagged_and_keeps_what_this_one_refuses(
    memory: ProofMemory, sample: list[dict]
) -> None:
    proofs = [as_proof(r) for r in sample[:20]]
    refused_today = sum(memory.store(proofs).flagged.values())
    statement = "theorem mathd_numbertheory_3 : (∑ x in Finset.range 10, (x + 1) ^ 2) % 10 = 5 := by"
    memory.add([VerifiedProof(formal_statement=statement, proof=NATIVE)])
    # An earlier, stricter policy flagged three proofs that today's passes: their points still say so.
    stale = [p for p in proofs if screen(p.formal_statement, p.proof, p.header) is None][:3]
    memory.backend.set_screen_reason([p.point_id for p in stale], "an earlier policy's rule")
    assert all(memory.lookup(p.formal_statement) == [] for p in stale)
    assert memory.stats()["admitted"] == 21 - 1 - refused_today - 3

    result = memory.rescreen()
    assert (result.read, result.admitted, result.flagged) == (21, 3, 0)
    assert sum(result.reasons.values()) == 1 + refused_today
    assert all(p.proof in {h.proof for h in memory.lookup(p.formal_statement)} for p in stale)
    stats = memory.stats()
    assert stats["admitted"] == 21 - 1 - refused_today
    assert "an earlier policy's rule" not in stats["screened_out"]
    assert sum(stats["screened_out"].values()) == 1 + refused_today


def test_a_directory_of_the_earlier_embedded_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    legacy = tmp_path / "qdrant" / "collection" / "oprover_proofs"
    legacy.mkdir(parents=True)
    (legacy / "storage.sqlite").write_bytes(b"SQLite format 3\x00")
    with pytest.raises(MemoryError_, match="earlier embedded format") as info:
        ProofMemory(QdrantSettings(path=tmp_path / "qdrant"))
    assert "oprover memory export" in str(info.value) and info.value.transient is False
