"""The retrieved proofs a prompt shows stay within their budget, best-ranked first."""

from __future__ import annotations

from services.domain import RetrievedProof
from workers.jobs import _within_budget


def _proof(name: str, size: int) -> RetrievedProof:
    statement = f"theorem {name} : True := by"
    return RetrievedProof(id=name, formal_statement=statement, proof="x" * (size - len(statement)))


def test_proofs_past_the_budget_are_left_out_in_rank_order() -> None:
    ranked = [_proof("a", 400), _proof("huge", 5_000), _proof("b", 300), _proof("c", 400)]
    assert [p.id for p in _within_budget(ranked, 1_000)] == ["a", "b"]


def test_a_zero_budget_shows_nothing_and_a_large_one_everything() -> None:
    ranked = [_proof("a", 400), _proof("b", 300)]
    assert _within_budget(ranked, 0) == []
    assert _within_budget(ranked, 10_000) == ranked
