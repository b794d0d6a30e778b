"""Reading the statement out of a chat message, and writing the answer (api/chat_text.py); no processes."""

from __future__ import annotations

from typing import Any

import pytest

from api.chat_text import EXAMPLE_NAME, answer, statement_from_messages
from api.openai_protocol import ChatMessage
from services.errors import RequestError

STATEMENT = "theorem t (x : ℝ) (h : 2 * x = 4) : x = 2 := by sorry"


def _read(*contents: Any, role: str = "user") -> tuple[str, str | None]:
    messages = [ChatMessage(role=role, content=content) for content in contents]
    found = statement_from_messages(messages)
    return found.formal_statement, found.header


@pytest.mark.parametrize(
    ("content", "statement", "header"),
    [
        (f"Prove:\n```lean4\n{STATEMENT}\n```", STATEMENT, None),
        (f"```lean\n{STATEMENT}\n```\nThanks!", STATEMENT, None),
        (
            f"```lean4\nimport Mathlib\nopen Real\n\n/-- doubling -/\n{STATEMENT}\n```",
            f"/-- doubling -/\n{STATEMENT}",
            "import Mathlib\nopen Real",
        ),
        (f"Please prove the following theorem: {STATEMENT}", STATEMENT, None),
        (f"The following theorem is easy.\n{STATEMENT}", STATEMENT, None),
        ("lemma l (n : ℕ) : n + 0 = n", "lemma l (n : ℕ) : n + 0 = n := by sorry", None),
        ("theorem t : 1 + 1 = 2 := by\n  sorry", "theorem t : 1 + 1 = 2 := by\n  sorry", None),
        ("example (a b : ℕ) : a + b = b + a := by", f"theorem {EXAMPLE_NAME} (a b : ℕ) : a + b = b + a := by", None),
        (
            [{"type": "text", "text": "Prove"}, {"type": "text", "text": f"```lean4\n{STATEMENT}\n```"}],
            STATEMENT,
            None,
        ),
        (
            f"```lean4\n-- theorem fake : False := by sorry\n{STATEMENT}\n```",
            f"-- theorem fake : False := by sorry\n{STATEMENT}",
            None,
        ),
    ],
    ids=[
        "lean4-block",
        "lean-block",
        "header",
        "inline",
        "prose-above",
        "no-tail",
        "sorry-line",
        "example",
        "parts",
        "comment",
    ],
)
def test_the_statement_is_read_from_the_last_user_message(content: Any, statement: str, header: str | None) -> None:
    assert _read(content) == (statement, header)


def test_the_last_user_message_counts_not_the_assistants_or_earlier_ones() -> None:
    messages = [
        ChatMessage(role="user", content="theorem first : 1 = 1 := by sorry"),
        ChatMessage(role="assistant", content="theorem mine : 2 = 2 := by sorry"),
        ChatMessage(role="user", content=f"Now this one:\n```lean4\n{STATEMENT}\n```"),
        ChatMessage(role="assistant", content="On it."),
    ]
    assert statement_from_messages(messages).formal_statement == STATEMENT


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([ChatMessage(role="user", content="What is a group?")], "holds no Lean theorem"),
        ([ChatMessage(role="system", content=STATEMENT)], "no user message"),
        ([ChatMessage(role="user", content="theorem t : True := by simp")], "must end with"),
        (
            [ChatMessage(role="user", content="theorem a : True := by sorry\ntheorem b : True := by sorry")],
            "exactly one",
        ),
        ([ChatMessage(role="user", content=None)], "holds no Lean theorem"),
    ],
    ids=["prose", "no-user", "a-proof", "two", "empty"],
)
def test_no_statement_is_a_400_on_messages_saying_what_was_expected(messages: list, words: str) -> None:
    with pytest.raises(RequestError) as raised:
        statement_from_messages(messages)
    assert raised.value.param == "messages" and words in raised.value.message
    assert "```lean4" in raised.value.message


def _job(status: str, **extra: Any) -> dict[str, Any]:
    attempts = [
        {
            "chain": 0,
            "round": 1,
            "code": "theorem t ... := by linarith",
            "verdict": "fail",
            "messages": [
                {"severity": "error", "pos": {"line": 3, "column": 2}, "data": "linarith failed"},
                {"severity": "warning", "pos": None, "data": "unused variable"},
            ],
        },
        {"chain": 1, "round": 1, "code": "theorem t ... := by nlinarith", "verdict": "pass", "messages": []},
    ]
    return {
        "id": "prf_x",
        "status": status,
        "attempts": attempts,
        "config": {"attempts": 2, "rounds": 3},
        "created_at": 100.0,
        "finished_at": 112.5,
        "proof": None,
        "proved_by": None,
        "error": None,
        **extra,
    }


def test_a_proved_chain_answers_with_the_proof_and_a_summary() -> None:
    job = _job("proved", proof="import Mathlib\ntheorem t : x = 2 := by nlinarith", proved_by={"chain": 1, "round": 1})
    text = answer(job, 1)
    assert text.startswith("```lean4\nimport Mathlib\ntheorem t : x = 2 := by nlinarith\n```")
    assert (
        "Proved: Lean accepted this proof (chain 1, round 1; 2 attempts over 2 chains, up to round 1 of 3, 12.5 s)"
        in text
    )
    other = answer(job, 0)
    assert other.startswith("Not proved: this chain was stopped when chain 1 found a proof")
    assert "<!-- oprover:status=stopped job=prf_x chain=0 -->" in other


@pytest.mark.parametrize(
    ("status", "extra", "words"),
    [
        ("failed", {}, "Not proved: no attempt passed Lean's check"),
        ("cancelled", {}, "Not proved: the proof job was cancelled"),
        (
            "error",
            {"error": "generator: HTTP 500"},
            "Not proved: the proof job ended with an error: generator: HTTP 500",
        ),
    ],
    ids=["failed", "cancelled", "error"],
)
def test_a_chain_not_proved_says_so_with_its_last_attempt_and_leans_errors(
    status: str, extra: dict, words: str
) -> None:
    text = answer(_job(status, **extra), 0)
    assert text.startswith(words)
    assert "```lean4\ntheorem t ... := by linarith\n```" in text
    assert "3:2: linarith failed" in text and "unused variable" not in text
    assert text.rstrip().endswith(f"<!-- oprover:status={status} job=prf_x chain=0 -->")
