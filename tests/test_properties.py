"""Property-based tests: the text functions that see untrusted input never raise on any input, and take linear time.

Untrusted text reaches extraction (model output), the text policy and statement parsing (client code and
statements) and the feedback formatters (Lean's messages about client code). Hypothesis draws arbitrary text; the
pathological inputs are 1 MB of what makes a careless scanner or regex quadratic (unclosed comments, strings,
fences, brackets, backslashes), each of which must finish in under a second.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.domain import ProofTask, Verdict
from services.errors import RequestError
from services.generation.extract import extract_code
from services.lean.feedback import build_feedback
from services.lean.policy import apply_text_policy, header_violations
from services.lean.protocol import LeanMessage, Pos
from services.leantext import blank_comments_and_strings, parse_statement
from services.prompts import feedback
from services.rounds import previous_attempt
from services.settings import DEFAULT_LEAN_HEADER
from tests.cpu_time import cpu_seconds

# Text heavy in the characters Lean's lexer and our scanners branch on.
LEAN_ALPHABET = st.sampled_from(
    [*"`/-\"'\\()[]{}:=⟨⟩«»#\n \tabcxyz_.0179", "theorem", "by", "sorry", "```lean4", "/-", "-/", "--", "import"]
)
lean_text = st.one_of(st.text(max_size=400), st.lists(LEAN_ALPHABET, max_size=200).map("".join))
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(content=st.one_of(st.none(), lean_text), reasoning=st.one_of(st.none(), lean_text), cut=st.booleans())
def test_extraction_never_raises(content: str | None, reasoning: str | None, cut: bool) -> None:
    result = extract_code(content, reasoning, finish_reason="length" if cut else "stop", theorem_name="t")
    assert result is not None


@SETTINGS
@given(code=lean_text, header=st.one_of(st.just(DEFAULT_LEAN_HEADER), lean_text))
def test_text_policy_never_raises_and_keeps_offsets(code: str, header: str) -> None:
    kept, blanked, violations = apply_text_policy(code, header)
    assert len(kept) == len(code) and len(blanked) == len(code)
    assert all(0 <= v.start <= v.end <= len(code) for v in violations if not v.in_header)
    header_violations(header)


@SETTINGS
@given(text=lean_text)
def test_statement_parsing_raises_only_request_errors(text: str) -> None:
    try:
        parse_statement(text)
    except RequestError as exc:
        assert exc.status_code == 400 and exc.param == "formal_statement"
    assert len(blank_comments_and_strings(text)) == len(text)


positions = st.one_of(st.none(), st.builds(Pos, line=st.integers(-3, 50), column=st.integers(-3, 200)))
lean_messages = st.lists(
    st.builds(
        LeanMessage,
        severity=st.sampled_from(["error", "warning", "info", "?"]),
        data=lean_text,
        pos=positions,
        end_pos=positions,
    ),
    max_size=12,
)


@SETTINGS
@given(verdict=st.sampled_from(list(Verdict)), code=lean_text, messages=lean_messages, detail=st.text(max_size=50))
def test_feedback_formatter_never_raises(verdict: Verdict, code: str, messages: list[LeanMessage], detail: str) -> None:
    assert isinstance(build_feedback(verdict, code=code, messages=messages, detail=detail), str)


raw_messages = st.lists(
    st.dictionaries(
        st.sampled_from(["severity", "pos", "endPos", "data"]),
        st.one_of(
            st.sampled_from(["error", "warning"]),
            st.fixed_dictionaries({"line": st.integers(-5, 60), "column": st.integers(-5, 300)}),
            st.integers(),
            st.text(max_size=30),
            st.none(),
        ),
    ),
    max_size=10,
)


@SETTINGS
@given(code=lean_text, messages=st.one_of(raw_messages, lean_messages.map(lambda ms: [m.to_json() for m in ms])))
def test_prompt_feedback_styles_never_raise(code: str, messages: list[Any]) -> None:
    """Whatever a stored attempt holds (services/rounds.py reads it back), the prompt styles lay it out."""
    previous = previous_attempt(
        {"code": code, "feedback": "Lean rejected the proof.", "verdict": Verdict.FAIL.value, "messages": messages}
    )
    task = ProofTask(formal_statement="theorem t : 1 = 1 := by", header=DEFAULT_LEAN_HEADER, previous=previous, round=2)
    assert isinstance(feedback.goedel(task), str) and isinstance(feedback.kimina(task), str)


MB = 1_000_000
PATHOLOGICAL = {
    "unclosed-block-comments": "/-" * (MB // 2),
    "nested-comment-opens": "/- " * (MB // 3),
    "unclosed-string": '"' + "\\" * (MB - 1),
    "many-quotes": "\"'" * (MB // 2),
    "unclosed-fences": "```lean4\n" * (MB // 9),
    "backticks": "`" * MB,
    "brackets": "(" * MB,
    "line-comments": "--\n" * (MB // 3),
    "theorems": "theorem t : 1 = 1 := by\n" * (MB // 24),
    "one-long-line": "a" * MB,
    "newlines": "\n" * MB,
    # a token every two to four characters: the most Python steps per megabyte the lexer takes
    "numbers": "1 " * (MB // 2),
    "empty-strings": '""' * (MB // 2),
    "char-literals": "'a' " * (MB // 4),
    "primes-after-symbols": "+'" * (MB // 2),
    "interpolations": 's!"{' * (MB // 4),
    "attribute-openers": "@[" * (MB // 2),
}
_CASES = [
    pytest.param(text, function, id=f"{name}-{function}")
    for name, text in PATHOLOGICAL.items()
    for function in ("extract", "policy", "parse", "feedback")
]
_FUNCTIONS: dict[str, Callable[[str], object]] = {
    "extract": lambda text: extract_code(text, text[:1000], theorem_name="t"),
    "policy": lambda text: apply_text_policy(text, DEFAULT_LEAN_HEADER),
    "parse": lambda text: _parse_or_refuse(text),
    "feedback": lambda text: build_feedback(
        Verdict.FAIL, code=text, messages=[LeanMessage("error", text[:10_000], Pos(1, 0), Pos(10**6, 10**6))]
    ),
}


def _parse_or_refuse(text: str) -> None:
    with contextlib.suppress(RequestError):
        parse_statement(text)


@pytest.mark.parametrize(("text", "function"), _CASES)
def test_a_1_mb_pathological_input_takes_under_a_second(text: str, function: str) -> None:
    # CPU time with the collector paused: neither the shared machine's other load nor a full collection of the
    # test session's heap counts against the function
    assert cpu_seconds(_FUNCTIONS[function], text) < 1.0
