"""Lean source text without Lean: comment/string blanking, requested statements, headers."""

from __future__ import annotations

import json

import pytest

from api.cli import split_lean_file
from services.errors import InvalidStatement
from services.leantext import (
    blank_comments_and_strings,
    normalize_statement,
    parse_statement,
    statement_hash,
    strip_header_lines,
)
from tests.shared_data import shared_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("a -- sorry\nb", "a         \nb", id="line-comment"),
        pytest.param("a /- x /- nested -/ y -/ b", "a                        b", id="nested-block"),
        pytest.param('f "so\\"rry" g', 'f "       " g', id="string-with-escape"),
        pytest.param("h' x'' := 'c'", "h' x'' := ' '", id="primes-are-not-chars"),
        pytest.param("«a -- b» c", "«a -- b» c", id="guillemet-name"),
        pytest.param('r#"sorry"# x', 'r#"     "# x', id="raw-string"),
        pytest.param("/-- doc\nline -/ t", "       \n        t", id="doc-comment-keeps-newlines"),
    ],
)
def test_blanking_keeps_offsets(text: str, expected: str) -> None:
    blanked = blank_comments_and_strings(text)
    assert blanked == expected
    assert len(blanked) == len(text)


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
