"""Small value types shared by the core modules (prompts, generation, Lean checker, memory, job store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only an annotation here: services.lean imports this module
    from services.lean.protocol import LeanMessage


class Verdict(StrEnum):
    """What one attempt came to. Only PASS means Lean accepted the proof of the requested statement."""

    PASS = "pass"
    FAIL = "fail"  # Lean reported an error, a sorry, or a non-standard axiom
    TIMEOUT = "timeout"  # the check hit its wall-clock limit
    REJECTED = "rejected"  # the integrity policy refused the code before Lean saw it
    NO_CODE = "no_code"  # the completion held no complete Lean code block
    ERROR = "error"  # the checker itself failed (crash, unparseable reply, resource limit)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PROVED = "proved"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ERROR = "error"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.PROVED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.ERROR})


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetrievedProof:
    """A verified proof from the memory, as the prompt shows it."""

    id: str
    formal_statement: str
    proof: str
    score: float = 0.0


@dataclass(frozen=True)
class PreviousAttempt:
    """What a repair round sees of the round before it: only the last attempt, not the whole history.

    `messages` are Lean's messages on `code` (positions against `code`, as `LeanMessage.pos` is), which some
    prompt profiles lay out themselves (services/prompts/feedback.py); `feedback` is the same as plain text."""

    code: str
    feedback: str
    verdict: Verdict
    messages: tuple[LeanMessage, ...] = ()


@dataclass(frozen=True)
class ProofTask:
    """Everything a prompt profile needs to build one round's messages."""

    formal_statement: str
    header: str
    informal_statement: str | None = None
    retrieved: tuple[RetrievedProof, ...] = ()
    previous: PreviousAttempt | None = None
    round: int = 1
    extra: dict[str, str] = field(default_factory=dict)
