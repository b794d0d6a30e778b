"""What one round of a chain is built from, read off the job's record: one place for the generate worker and
for `oprover export trajectories`, so an exported prompt is the one the model was sent.

A round's prompt shows the statement, the job's retrieved proofs and, from round 2 on, the chain's previous
attempt: its code, verdict, plain-text feedback and Lean's messages on it (which some prompt profiles lay out
themselves: services/prompts/feedback.py). Attempts are stored as JSON (services/store.py); this module turns a
stored attempt into the domain's `PreviousAttempt`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from services.domain import PreviousAttempt, ProofTask, RetrievedProof, Verdict
from services.store import JobSpec


def previous_attempt(stored: dict[str, Any] | None) -> PreviousAttempt | None:
    """The attempt a repair round revises, from its stored record; None when there is none to revise (round 1,
    or a previous round that was never judged)."""
    if stored is None or stored.get("verdict") is None:
        return None
    return PreviousAttempt(
        code=stored.get("code") or "",
        feedback=stored.get("feedback") or "",
        verdict=Verdict(stored["verdict"]),
    )


def structured_feedback(stored: dict[str, Any] | None) -> dict[str, str]:
    """Lean's messages on the previous attempt, for profiles that lay them out themselves (positions in the
    messages refer to the model's code, which is what `checked_code` is)."""
    if previous_attempt(stored) is None or not stored or not stored.get("messages"):
        return {}
    return {
        "lean_messages": json.dumps(stored["messages"], ensure_ascii=False),
        "checked_code": stored.get("code") or "",
    }


def round_task(
    spec: JobSpec, retrieved: Sequence[RetrievedProof], round_: int, previous: dict[str, Any] | None
) -> ProofTask:
    """One round's `ProofTask`; `previous` is the chain's stored attempt of round `round_ - 1` (None in round 1)."""
    return ProofTask(
        formal_statement=spec.formal_statement,
        header=spec.header,
        informal_statement=spec.informal_statement,
        retrieved=tuple(retrieved),
        previous=previous_attempt(previous),
        round=round_,
        extra=structured_feedback(previous),
    )
