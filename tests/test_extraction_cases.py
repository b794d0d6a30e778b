"""Extraction on real proofs wrapped the ways real provers answer, each case named; plus a fuzz test.

tests/golden/extraction/real_proofs.jsonl holds six proofs copied from ../shared/data/verified_proofs_sample.jsonl
(DeepSeek-Prover-V2, Seed-Prover, Goedel-Prover-SFT; sources in each record). Every case wraps each proof
the way one prover style answers, so a case runs on six real files: docstrings, `/- -/` comments, helper
lemmas, `#print axioms`, Unicode.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.generation import Extraction, extract_code
from services.leantext import parse_statement

PROOFS = [
    json.loads(line)
    for line in (Path(__file__).parent / "golden" / "extraction" / "real_proofs.jsonl").read_text("utf-8").splitlines()
]
HELPER = "lemma helper : 1 + 1 = 2 := by norm_num"
PLAN = "### Detailed Proof Plan\n\n1. Rewrite the hypothesis.\n2. Close the goal with `nlinarith`.\n\n"


def body_of(record: dict) -> str:
    """The tactic proof of the target theorem (after the statement's `:= by`)."""
    proof, statement = record["proof"], record["formal_statement"]
    lines = proof[proof.index(statement) + len(statement) :].strip("\n").split("\n")
    end = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith(" ")), len(lines))
    return "\n".join(lines[:end]).rstrip()


def without_header(record: dict) -> str:
    return record["proof"][len(record["header"]) :].strip("\n")


def fence(code: str, tag: str = "lean4") -> str:
    return f"```{tag}\n{code.strip(chr(10))}\n```"


@dataclass(frozen=True)
class Case:
    build: Callable[[dict], dict]  # record -> kwargs for extract_code
    expect: Callable[[dict], str | None]  # record -> expected code (None: no code)
    problem: str | None = None  # a phrase the problem must contain when there is no code
    source: str = "answer"
    kind: str | None = None


def full(record: dict) -> str:
    return record["proof"].strip("\n") + "\n"


def decls(record: dict) -> str:
    return without_header(record) + "\n"


def draft(record: dict) -> str:
    return fence(record["formal_statement"] + "\n  sorry")


CASES: dict[str, Case] = {
    "deepseek-plan-then-full-file": Case(lambda r: {"content": PLAN + fence(r["proof"])}, full, kind="file"),
    "reasoning-content-separated-with-draft-in-thinking": Case(
        lambda r: {"content": "Here is the proof.\n\n" + fence(r["proof"]), "reasoning": "Try:\n" + draft(r)},
        full,
        kind="file",
    ),
    "inline-think-tags": Case(
        lambda r: {"content": "<think>\nDraft:\n" + draft(r) + "\n</think>\n\n" + fence(r["proof"])}, full
    ),
    "only-closing-think-tag": Case(
        lambda r: {"content": "The template opened the thinking.\n" + draft(r) + "\n</think>\n" + fence(r["proof"])},
        full,
    ),
    "plan-blocks-then-final-block": Case(
        lambda r: {"content": PLAN + draft(r) + "\n\nNow the complete proof:\n\n" + fence(r["proof"])}, full
    ),
    "lean-fence-tag": Case(lambda r: {"content": PLAN + fence(r["proof"], "lean")}, full),
    "untagged-fence": Case(lambda r: {"content": PLAN + fence(r["proof"], "")}, full),
    "four-backtick-fence": Case(
        lambda r: {"content": PLAN + "````lean4\n" + r["proof"].strip("\n") + "\n````\n"}, full
    ),
    "crlf-line-endings": Case(lambda r: {"content": (PLAN + fence(r["proof"])).replace("\n", "\r\n")}, full),
    "closing-fence-glued-to-last-line": Case(
        lambda r: {"content": PLAN + "```lean4\n" + r["proof"].strip("\n") + "```"}, full
    ),
    "indented-fence-in-a-list": Case(
        lambda r: {
            "content": PLAN
            + "1. The proof:\n\n"
            + "\n".join("    " + line if line else "" for line in fence(r["proof"]).split("\n"))
        },
        full,
    ),
    "explanation-snippet-after-the-proof": Case(
        lambda r: {"content": fence(r["proof"]) + "\n\nThe key step is:\n" + fence("nlinarith [sq_nonneg x]")},
        full,
    ),
    "declarations-without-header": Case(
        lambda r: {"content": PLAN + fence(without_header(r))}, decls, kind="declarations"
    ),
    "bare-tactic-body-completed-with-the-statement": Case(
        lambda r: {"content": PLAN + fence(body_of(r)), "formal_statement": r["formal_statement"]},
        # whitespace-only lines come back empty
        lambda r: (
            parse_statement(r["formal_statement"]).head
            + " by\n"
            + "\n".join(line if line.strip() else "" for line in body_of(r).split("\n"))
            + "\n"
        ),
        kind="body",
    ),
    "target-block-preferred-over-a-later-helper": Case(
        lambda r: {
            "content": fence(r["proof"])
            + "\n\nA helper I considered:\n"
            + fence("lemma helper : 1 + 1 = 2 := by norm_num"),
            "theorem_name": parse_statement(r["formal_statement"]).name,
        },
        full,
    ),
    "code-only-in-thinking": Case(
        lambda r: {"content": "", "reasoning": "Final:\n" + fence(r["proof"]), "finish_reason": "stop"},
        full,
        source="thinking",
    ),
    "truncated-inside-the-final-block": Case(
        lambda r: {
            "content": PLAN + draft(r) + "\n\n" + "```lean4\n" + r["proof"][: len(r["proof"]) // 2],
            "finish_reason": "length",
        },
        lambda r: None,
        problem="token limit",
    ),
    "truncated-inside-think-tags": Case(
        lambda r: {
            "content": "<think>\nLet me think about " + r["name"] + " " + "so " * 200,
            "finish_reason": "length",
        },
        lambda r: None,
        problem="ended inside the thinking",
    ),
    "truncated-reasoning-no-content": Case(
        lambda r: {"content": "", "reasoning": "long thought " * 100, "finish_reason": "length"},
        lambda r: None,
        problem="ended inside the thinking",
    ),
    "no-code-block": Case(
        lambda r: {"content": "I believe the theorem " + r["name"] + " holds by nlinarith."},
        lambda r: None,
        problem="no ```lean4 code block",
    ),
    "only-a-python-block": Case(
        lambda r: {"content": PLAN + fence("print('hello')", "python")},
        lambda r: None,
        problem="none holds Lean code",
    ),
    "empty-lean-block": Case(lambda r: {"content": PLAN + "```lean4\n```"}, lambda r: None, problem="empty"),
    "empty-answer": Case(lambda r: {"content": ""}, lambda r: None, problem="empty"),
}


@pytest.mark.parametrize("record", PROOFS, ids=[f"{p['name']}" for p in PROOFS])
@pytest.mark.parametrize("case_name", list(CASES))
def test_extraction_case(case_name: str, record: dict):
    case = CASES[case_name]
    result = extract_code(**case.build(record))
    expected = case.expect(record)
    assert result.code == expected
    if expected is None:
        assert result.problem and case.problem and case.problem in result.problem
        assert result.source == "none"
    else:
        assert result.problem is None
        assert result.source == case.source
        if case.kind:
            assert result.kind == case.kind


def test_truncated_final_block_wins_over_an_earlier_complete_block():
    record = PROOFS[0]
    content = fence(record["proof"]) + "\n\nLet me improve it:\n```lean4\n" + record["proof"][:50]
    result = extract_code(content, finish_reason="length")
    assert result.code is None and "never closed" in result.problem and result.blocks == 1


def test_unclosed_block_without_length_says_the_output_stopped():
    result = extract_code("```lean4\ntheorem t : True := by\n  trivial")
    assert result.code is None and "stopped" in result.problem


# -- no input makes extraction raise ---------------------------------------------------------------------

_ATOMS = [
    "```",
    "```lean4",
    "```lean",
    "````",
    "``",
    "`",
    "<think>",
    "</think>",
    "\n",
    "\r\n",
    " ",
    "  ",
    "\t",
    "theorem",
    "lemma",
    "t",
    ":",
    ":=",
    "by",
    "sorry",
    "import Mathlib",
    "--",
    "/-",
    "-/",
    '"',
    "'",
    "«",
    "»",
    "ℝ",
    "∀",
    "⊢",
    "λ",
    "\x00",
    "\ud800",
    "{{x}}",
    "#",
    'r#"',
    "by\n",
    "  nlinarith [sq_nonneg (a - b)]",
]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ATOMS) for _ in range(rng.randint(0, 60)))


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_never_raises_and_keeps_the_contract(seed: int):
    rng = random.Random(seed)
    for _ in range(400):
        kwargs = {
            "content": random_text(rng),
            "reasoning": rng.choice([None, random_text(rng)]),
            "finish_reason": rng.choice([None, "stop", "length", "abort"]),
            "theorem_name": rng.choice([None, "t", ""]),
            "formal_statement": rng.choice([None, "theorem t : True := by", random_text(rng)]),
        }
        result = extract_code(**kwargs)
        assert isinstance(result, Extraction)
        assert (result.code is None) != (result.problem is None), kwargs
        if result.code is not None:
            assert result.code.strip()


@pytest.mark.parametrize(
    "content", [None, 42, b"```lean4\nx\n```", ["list"], "x" * 200_000], ids=["none", "int", "bytes", "list", "huge"]
)
def test_odd_inputs_never_raise(content):
    result = extract_code(content, reasoning=content)  # type: ignore[arg-type]
    assert isinstance(result, Extraction)
