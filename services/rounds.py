"""What one round of a chain is built from, read off the job's record: one place for the generate worker and
for `oprover export trajectories`, so an exported prompt is the one the model was sent.

A round's prompt shows the statement, the job's retrieved proofs and, from round 2 on, the chain's previous
attempt: its code, verdict, plain-text feedback and Lean's messages on it (which some prompt profiles lay out
themselves: services/prompts/feedback.py). Attempts are stored as JSON (services/store.py: the messages as
`LeanMessage.to_json` wrote them, a format older jobs share); this module turns a stored attempt into the
domain's `PreviousAttempt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.domain import PreviousAttempt, ProofTask, RetrievedProof, Verdict
from services.lean.protocol import LeanMessage
from services.store import JobSpec


def previous_attempt(stored: dict[str, Any] | None) -> PreviousAttempt | None:
    """The attempt a repair round revises, from its stored record; None when there is none to revise (round 1,
    or a previous round that was never judged). A stored message that does not read back is left out."""
    if stored is None or stored.get("verdict") is None:
        return None
    messages = (LeanMessage.from_json(message) for message in stored.get("messages") or [])
    return PreviousAttempt(
        code=stored.get("code") or "",
        feedback=stored.get("feedback") or "",
        verdict=Verdict(stored["verdict"]),
        messages=tuple(message for message in messages if message is not None),
    )


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
    )
