"""Lean source text without Lean: declarations, requested statements, headers (the lexer: test_lean_lexer.py)."""

from __future__ import annotations

import json

import pytest

from api.cli import split_lean_file
from services.errors import InvalidStatement
from services.leantext import (
    DECLARATION_KEYWORDS,
    blank_comments_and_strings,
    declarations,
    normalize_statement,
    parse_statement,
    statement_hash,
    strip_header_lines,
)
from tests.shared_data import shared_path


def test_every_minif2f_statement_parses_with_its_name() -> None:
    for line in shared_path("minif2f_valid.jsonl").read_text().splitlines():
        record = json.loads(line)
        statement = parse_statement(record["formal_statement"])
        assert statement.name == record["name"]
        assert statement.head.endswith(":=") and "by" not in statement.head[-6:]


@pytest.mark.parametrize(
    "tail",
    [":= by sorry", ":= by", ":=", ":= by\n  sorry\n", ":=\n"],
    ids=["by-sorry", "by", "term", "multiline", "nl"],
)
def test_accepted_endings(tail: str) -> None:
    statement = parse_statement(f"theorem foo (n : ℕ) : n + 0 = n {tail}")
    assert statement.head == "theorem foo (n : ℕ) : n + 0 = n :="


def test_sorry_inside_a_comment_does_not_count_as_the_proof() -> None:
    with pytest.raises(InvalidStatement):
        parse_statement("theorem foo : 1 = 1 := by simp -- sorry")


def test_lemma_with_doc_comment_and_attribute() -> None:
    statement = parse_statement("/-- doc mentioning theorem x -/\n@[simp] lemma bar.baz : True := by sorry")
    assert (statement.kind, statement.name) == ("lemma", "bar.baz")


def test_normalization_ignores_layout_comments_and_tail() -> None:
    a = "theorem t (x : ℕ) :\n  x = x := by sorry"
    b = "theorem t  (x : ℕ) : -- same\n x = x :="
    assert normalize_statement(a) == normalize_statement(b)
    assert statement_hash(a) == statement_hash(b)
    assert statement_hash(a) != statement_hash(a.replace("x = x", "x = x + 0"))


def test_strip_header_lines_keeps_scoped_opens_and_docs() -> None:
    text = "import Mathlib\nset_option maxHeartbeats 0\nopen Real\n\nopen Nat in\n/-- d -/\ntheorem t : 1 = 1 := rfl\n"
    assert strip_header_lines(text) == "open Nat in\n/-- d -/\ntheorem t : 1 = 1 := rfl\n"


def test_split_lean_file_separates_the_header() -> None:
    header, statement = split_lean_file("import Mathlib\nopen Real\n\n/-- doc -/\ntheorem t : 1 = 1 := by sorry\n")
    assert header == "import Mathlib\nopen Real"
    assert statement == "/-- doc -/\ntheorem t : 1 = 1 := by sorry\n"
    assert split_lean_file("theorem t : 1 = 1 := by sorry") == (None, "theorem t : 1 = 1 := by sorry")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("theorem t : x", [("theorem", 0, "t")], id="plain"),
        pytest.param("@[simp] private lemma a.«b c» : x", [("lemma", 0, "a.«b c»")], id="attribute-modifier-guillemet"),
        pytest.param(
            "@[simp]\ntheorem t : x", [("theorem", 8, "t")], id="attribute-on-the-line-above-is-not-its-start"
        ),
        pytest.param("theorem a : x := rfl theorem b : y", [("theorem", 0, "a"), ("theorem", 21, "b")], id="same-line"),
        pytest.param("theorem\n  t : x", [("theorem", 0, "t")], id="name-on-the-next-line"),
        pytest.param("theorem : x", [("theorem", 0, None)], id="no-name"),
        pytest.param("theorem by", [("theorem", 0, None)], id="keyword-is-no-name"),
        pytest.param("Nat.theorem x theorem.y z theorem_z w «theorem» v", [], id="names-are-no-keywords"),
        pytest.param("def «a theorem b» : x", [], id="inside-a-guillemet-name"),
    ],
)
def test_declarations_are_read_as_lean_reads_them(text: str, expected: list[tuple[str, int, str | None]]) -> None:
    found = [(d.keyword, d.start, d.name) for d in declarations(blank_comments_and_strings(text))]
    assert found == expected


def test_declarations_of_any_kind_and_never_in_comments_or_strings() -> None:
    text = 'def f := "theorem x" -- lemma y\n/- theorem z -/ instance i : C := ⟨⟩\nexample : True := trivial'
    found = [(d.keyword, d.name) for d in declarations(blank_comments_and_strings(text), DECLARATION_KEYWORDS)]
    assert found == [("def", "f"), ("instance", "i"), ("example", None)]
    assert list(declarations(blank_comments_and_strings(text))) == []


def test_a_second_declaration_on_the_same_line_is_refused_naming_the_lines() -> None:
    with pytest.raises(InvalidStatement, match=r"found 2 \(lines 1, 1\)"):
        parse_statement("theorem a : 1 = 1 := rfl theorem b : 2 = 2 := by sorry")
    with pytest.raises(InvalidStatement, match=r"found 7 \(lines 1, 2, 3, 4, 5, …\)"):
        parse_statement("theorem a : 1 = 1 := by\n" * 7)
