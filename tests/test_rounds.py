"""A round's prompt input read off the job's record (services/rounds.py): the stored attempt of the round before,
as `verify_round` writes it, comes back as the domain's `PreviousAttempt` with Lean's messages typed."""

from __future__ import annotations

import json

from services.domain import Verdict
from services.lean.protocol import LeanMessage, Pos
from services.rounds import previous_attempt, round_task
from services.store import JobSpec

CODE = "theorem t (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  nlinarith [h]\n"
ERROR = LeanMessage(
    severity="error",
    data="linarith failed to find a contradiction",
    pos=Pos(2, 2),
    end_pos=Pos(2, 15),
    compiled_pos=Pos(4, 2),
    compiled_end_pos=Pos(4, 15),
)
WARNING = LeanMessage(severity="warning", data="unused variable", pos=Pos(1, 10))


def _stored(messages: list) -> dict:
    """An attempt as the store keeps it: JSON, messages as `LeanMessage.to_json` wrote them."""
    attempt = {"chain": 0, "round": 1, "code": CODE, "verdict": "fail", "feedback": "Lean: linarith failed"}
    return json.loads(json.dumps({**attempt, "messages": messages}))


def test_a_stored_attempt_comes_back_with_its_lean_messages_typed() -> None:
    previous = previous_attempt(_stored([ERROR.to_json(), WARNING.to_json()]))
    assert previous is not None
    assert previous.messages == (ERROR, WARNING)
    assert (previous.code, previous.verdict, previous.feedback) == (CODE, Verdict.FAIL, "Lean: linarith failed")


def test_a_message_that_does_not_read_back_is_left_out_not_fatal() -> None:
    junk = [{"severity": 3}, "text", None, {"severity": "error", "pos": {"line": "2"}, "data": "x"}]
    previous = previous_attempt(_stored([*junk, ERROR.to_json()]))
    assert previous is not None
    # the message with an unreadable position is kept without one (feedback styles then skip it)
    assert previous.messages == (LeanMessage(severity="error", data="x"), ERROR)


def test_round_one_and_an_unjudged_round_have_no_previous_attempt() -> None:
    spec = JobSpec(formal_statement=CODE, header="import Mathlib", rounds=2, attempts=1, top_k=0,
                   temperature=0.6, top_p=0.95, max_tokens=64)  # fmt: skip
    assert round_task(spec, [], 1, None).previous is None
    unjudged = {**_stored([]), "verdict": None}
    assert round_task(spec, [], 2, unjudged).previous is None
    assert round_task(spec, [], 2, _stored([ERROR.to_json()])).previous.messages == (ERROR,)  # type: ignore[union-attr]
