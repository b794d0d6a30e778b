"""The optional dense vector, against a real OpenAI-compatible embeddings process (standins)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from qdrant_client import models
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion

from services.errors import MemoryError_
from services.memory import ProofMemory, VerifiedProof
from services.memory.store import OVERFETCH
from services.settings import QdrantSettings
from standins.embeddings_server import embed
from tests.shared_data import shared_path

ROOT = Path(__file__).resolve().parents[1]
DIM = 48


class Standin:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "standins/embeddings_server.py", "--port", "0", "--dim", str(DIM)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line.startswith("listening on "), line
        self.url = line.removeprefix("listening on ")

    def stats(self) -> dict:
        return httpx.get(self.url.removesuffix("/v1") + "/stats").json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=30)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def standin() -> Iterator[Standin]:
    server = Standin()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proofs() -> list[VerifiedProof]:
    """Sample proofs with pairwise distinct statements (so one-per-statement changes no ranking)."""
    seen: set[str] = set()
    out = []
    for line in shared_path("verified_proofs_sample.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        proof = VerifiedProof(formal_statement=record["formal_statement"], proof=record["proof"])
        if proof.statement_hash not in seen:
            seen.add(proof.statement_hash)
            out.append(proof)
    return out[:80]


def test_dense_and_lexical_lists_are_fused_by_rank(tmp_path: Path, standin: Standin, proofs) -> None:
    dense_settings = QdrantSettings(path=tmp_path / "dense", embeddings_url=standin.url)
    with ProofMemory(dense_settings) as dense, ProofMemory(QdrantSettings(path=tmp_path / "lex")) as lexical:
        assert dense.stats()["dense_vector"] is True
        before = standin.stats()
        assert dense.add(proofs) == len(proofs)
        lexical.add(proofs)
        assert standin.stats()["inputs"] - before["inputs"] == len(proofs)

        target_proof = proofs[7]
        target = target_proof.formal_statement.replace(":= by", ":= by sorry")
        top_k = 3
        limit = top_k * OVERFETCH
        # The expected answer, built independently: cosine ranking of the stand-in's embeddings and the
        # lexical-only memory's ranking, fused with Qdrant's RRF.
        others = [p for p in proofs if p.body_hash != target_proof.body_hash]
        query = np.array(embed(target, DIM))
        cosines = [(float(np.dot(query, embed(p.formal_statement, DIM))), p.point_id) for p in others]
        dense_list = [
            models.ScoredPoint(id=pid, score=score, version=0) for score, pid in sorted(cosines, reverse=True)[:limit]
        ]
        lexical_list = [
            models.ScoredPoint(id=hit.id, score=hit.score, version=0) for hit in lexical.search(target, top_k=limit)
        ]
        fused = reciprocal_rank_fusion([dense_list, lexical_list], limit=limit)
        expected = [str(p.id) for p in fused][:top_k]
        score_of = {str(p.id): round(p.score, 5) for p in fused}

        hits = dense.search(target, top_k=top_k)
        # Equal fused scores (rank 1 + rank 4 against rank 4 + rank 1) may come in either order.
        assert [round(h.score, 5) for h in hits] == [score_of[i] for i in expected]
        for hit, want in zip(hits, expected, strict=True):
            assert hit.id == want or score_of.get(hit.id) == score_of[want]
        assert target_proof.formal_statement not in {h.formal_statement for h in hits}
        assert [h.id for h in hits] != [h.id for h in lexical.search(target, top_k=top_k)], (
            "pick a target where fusion changes the answer, or this test proves nothing"
        )


def test_unknown_model_is_a_permanent_error(tmp_path: Path, standin: Standin) -> None:
    settings = QdrantSettings(path=tmp_path / "q", embeddings_url=standin.url, embeddings_model="no-such-model")
    with pytest.raises(MemoryError_, match="404") as info:
        ProofMemory(settings)
    assert info.value.transient is False


def test_an_unreachable_endpoint_is_a_transient_error(tmp_path: Path, standin: Standin, proofs) -> None:
    memory = ProofMemory(QdrantSettings(path=tmp_path / "q", embeddings_url=standin.url))
    try:
        memory.add(proofs[:2])
        standin.stop()
        with pytest.raises(MemoryError_, match="unreachable") as info:
            memory.search(proofs[0].formal_statement, top_k=2)
        assert info.value.transient is True
        with pytest.raises(MemoryError_):
            memory.add(proofs[2:4])
        assert memory.count() == 2
    finally:
        memory.close()


def test_a_lexical_collection_does_not_silently_turn_dense(tmp_path: Path, standin: Standin, proofs) -> None:
    path = tmp_path / "q"
    with ProofMemory(QdrantSettings(path=path)) as memory:
        memory.add(proofs[:2])
    with pytest.raises(MemoryError_, match="no dense vector"):
        ProofMemory(QdrantSettings(path=path, embeddings_url=standin.url))
    with ProofMemory(QdrantSettings(path=path)) as memory:  # and the directory is released again
        assert memory.count() == 2
