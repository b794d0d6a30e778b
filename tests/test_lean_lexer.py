"""`leantext.lex` and `blank_comments_and_strings`: comments, strings, char literals and `«»` names read as Lean
4's lexer reads them (and the places it cannot be sure of), since every check of the text policy runs on its
blanked output."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.leantext import blank_comments_and_strings, lex
from tests.cpu_time import cpu_seconds


def test_ordinary_code_has_no_problems() -> None:
    text = (
        "theorem t (h' : a = b) : f '' s = s := by\n"
        "  have h'' : (1 : ℝ) ≠ 2 := by norm_num -- a 'comment'\n"
        '  simp [h\', Set.image] /- "quoted" -/\n'
        "  exact ⟨'a', \"b{c}\"⟩"
    )
    assert lex(text).problems == ()


# Each construct of Lean's tokenizer (`Lean/Parser/Basic.lean`), as Lean reads it.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Lean's `whitespace` skips the character after `/-` unread: `/-/` opens no nested comment
        pytest.param("/-/- -/\nlocal x\n--/\n", "       \nlocal x\n   \n", id="slash-dash-slash-does-not-nest"),
        pytest.param("/-/-/ -/ a", "      -/ a", id="slash-dash-slash-dash-slash"),
        # `/--` and `/-!` are doc comments whose bodies start after the third character
        pytest.param('/--/ " -/ x --"', "          x    ", id="doc-comment-starting-with-slash"),
        pytest.param("/-!/ -/ y", " " * 8 + "y", id="module-doc-starting-with-slash"),
        pytest.param("/--- -/ z", " " * 8 + "z", id="doc-comment-with-dash"),
        pytest.param("/- a -/- b", "       - b", id="close-then-dash"),
        pytest.param("a --/- x\nb", "a       \nb", id="line-comment-hides-block-start"),
        pytest.param("«a -- b» c", "«a -- b» c", id="guillemet-holds-no-comment"),
        pytest.param('"-- x" y', '"    " y', id="string-holds-no-comment"),
        pytest.param('s!"a {x} b" c', 's!"  {x}  " c', id="interpolation-stays-code"),
        pytest.param(
            's!"{(by run_tac t; exact 0 : Nat)}"', 's!"{(by run_tac t; exact 0 : Nat)}"', id="run-tac-in-interp"
        ),
        pytest.param('\'"\' x "y"', "' ' x \" \"", id="char-literal-quote"),
        pytest.param('h\'"s" t', 'h\'" " t', id="prime-then-string"),
        pytest.param('2r"\\" v', '2r" " v', id="raw-string-after-number"),
        pytest.param('xr"\\" v "', 'xr"     "', id="r-inside-identifier"),
        pytest.param("f ⁻¹' s", "f ⁻¹' s", id="preimage-token"),
        pytest.param("f '' s", "f '' s", id="image-token"),
        pytest.param("a -- sorry\nb", "a         \nb", id="line-comment"),
        pytest.param('f "so\\"rry" g', 'f "       " g', id="string-with-escape"),
        pytest.param("h' x'' := 'c'", "h' x'' := ' '", id="primes-are-not-chars"),
        pytest.param('r#"sorry"# x', 'r#"     "# x', id="raw-string"),
        pytest.param("/-- doc\nline -/ t", "       \n        t", id="doc-comment-keeps-newlines"),
        # charLitFnAux reads any one character, a raw newline included, then wants `'`
        pytest.param("x '\n' y", "x '\n' y", id="char-raw-newline"),
        pytest.param("x '\t' y", "x ' ' y", id="char-raw-tab"),
        pytest.param(
            "['\\n', '\\'', '\\\\', '\\x41', '\\u03bb']", "['  ', '  ', '  ', '    ', '      ']", id="char-escapes"
        ),
        pytest.param("(2'a')", "(2' ')", id="char-after-number"),
        pytest.param("«x»'a'", "«x»' '", id="char-after-guillemet-name"),
        # strLitFnAux / quotedStringFn: escapes and string gaps
        pytest.param('"a\\"b" c', '"    " c', id="string-escaped-quote"),
        pytest.param('"a\\\n   b" c', '"  \n    " c', id="string-gap"),
        pytest.param('"\\x41\\u03bb" c', '"          " c', id="string-hex-escapes"),
        pytest.param('"-- /- «" c', '"       " c', id="string-holds-comment-markers"),
        # rawStrLitFnAux: `r#"…"#` closes only at `"` followed by as many `#`
        pytest.param('r#"a"b"# c', 'r#"   "# c', id="raw-one-hash"),
        pytest.param('r##"a"#b"## c', 'r##"    "## c', id="raw-two-hashes"),
        pytest.param('r"\\" c', 'r" " c', id="raw-no-escapes"),
        # whitespace / finishCommentBlock: nesting, `-/` and `/-` as Lean scans them
        pytest.param("/- a /- b -/ c -/ d", "                  d", id="comment-nested"),
        pytest.param("/-- doc /- inner -/ -/ e", " " * 22 + " e", id="doc-comment-nested"),
        pytest.param("/- a -/-/ b", "       -/ b", id="comment-close-then-close"),
        pytest.param("a -- /- b\nc", "a" + " " * 8 + "\nc", id="line-comment-hides-block"),
        # identFnAux: `«…»` parts whole, joined by `.`
        pytest.param("«a -- b».«c /- d» e", "«a -- b».«c /- d» e", id="guillemet-parts"),
        pytest.param("`«a -- b» c", "`«a -- b» c", id="name-literal-guillemet"),
        # numberFnAux
        pytest.param("0x1F 0b101 0o17 1.5e-3 2. x", "0x1F 0b101 0o17 1.5e-3 2. x", id="numbers"),
        pytest.param('x2\' "s"', 'x2\' " "', id="prime-inside-identifier-after-digit"),
    ],
)
def test_each_construct_is_read_as_lean_reads_it(text: str, expected: str) -> None:
    lexed = lex(text)
    assert lexed.blanked == expected
    assert lexed.problems == ()
    assert blank_comments_and_strings(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # places where the reading may differ from Lean's
        pytest.param('s!"{ "a" ++ (by run_tac t; exact "b") }"', "interpolated", id="ambiguous-interpolation"),
        pytest.param('"{" ++ (by run_tac t) "}"', "interpolated", id="plain-string-with-brace"),
        pytest.param('s!"{f "x" /- } -/}" z', "interpolated", id="nested-string-in-interpolation"),
        pytest.param("∑'\"' x \"", "character literal", id="char-after-symbol"),
        pytest.param('⁻¹\'a\'r"\\" x "', "character literal", id="char-then-raw-string"),
        pytest.param("def «a\nb» : Nat := 0", "spanning lines", id="guillemet-newline"),
        pytest.param("def «a : Nat := 0", "unterminated", id="guillemet-unterminated"),
        # lexical errors
        pytest.param("x 'ab' y", "without its closing", id="char-two-characters"),
        pytest.param("x '\\q' y", "invalid escape", id="char-bad-escape"),
        pytest.param("x '\\\n' y", "invalid escape", id="char-no-string-gap"),
        pytest.param('"\\q" -- x', "invalid escape", id="string-bad-escape"),
        pytest.param('"a\\\n\n b"', "second newline", id="string-gap-two-newlines"),
        pytest.param('"abc', "unterminated string", id="string-unterminated"),
        pytest.param('r#"abc"', "unterminated raw string", id="raw-unterminated"),
        pytest.param("/- abc", "unterminated comment", id="comment-unterminated"),
        pytest.param("2e-x", "exponent digits", id="exponent-without-digits"),
        pytest.param("0x", "without digits", id="hex-without-digits"),
        pytest.param("x <-- y", "`<--`", id="arrow-then-dash"),
        pytest.param("{x //- y}", "`//-`", id="double-slash-then-dash"),
        pytest.param("'", "at the end", id="lone-quote"),
    ],
)
def test_ambiguous_places_and_lexical_errors_are_problems(text: str, why: str) -> None:
    """Code this lexer may read otherwise than Lean, or where Lean stops at a lexical error and its recovery resumes
    at a position of its choosing: refused."""
    assert any(why in problem.why for problem in lex(text).problems), lex(text).problems


def test_the_raw_newline_char_literal_keeps_string_parity() -> None:
    """The issue's case: after `'⏎'"` Lean reads a char literal, then a string; what follows that string is code."""
    text = 'def padded := pad \'\n\'"\' "\nset_option debug.skipKernelTC true in\nrun_cmd evil\ndef rest := "\n"\n'
    blanked = lex(text).blanked
    assert "set_option debug.skipKernelTC true in\nrun_cmd evil" in blanked
    assert lex(text).problems == ()


_ALPHABET = "ab r#'\"\\-/{}«»`0e.x:=\n\t(λ∑⁻¹ₙ"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=_ALPHABET, max_size=200) | st.text(max_size=200))
def test_the_lexer_never_raises_and_keeps_offsets(text: str) -> None:
    lexed = lex(text)
    assert len(lexed.blanked) == len(text)
    assert [i for i, c in enumerate(text) if c == "\n"] == [i for i, c in enumerate(lexed.blanked) if c == "\n"]
    for problem in lexed.problems:
        assert 0 <= problem.start <= problem.end <= len(text)


def _cpu_seconds(function, unit: str, size: int) -> float:
    """The best of 2 CPU times of `function` on `size` characters of `unit` repeated."""
    text = (unit * (size // len(unit) + 1))[:size]
    times = []
    for _ in range(2):
        times.append(cpu_seconds(function, text))
    return min(times)


PATHOLOGICAL = {
    "quotes": "'",
    "interpolations": '"{',
    "nested-interpolations": 's!"{',
    "comment-openers": "/-",
    "comment-closers": "-/",
    "guillemets": "«",
    "raw-openers": 'r#"',
    "backslashes": '"\\',
    "digits": "0e",
    "spaces": " ",
    "newline-chars": "'\n'\"",
    "identifiers": "abc.",
}


@pytest.mark.parametrize("unit", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_the_lexer_is_linear_on_pathological_input(unit: str) -> None:
    """1 MB of the same construct repeated, in CPU time (a loaded machine's waiting left out): about a second at
    most, and four times the input takes about four times the time, not sixteen."""
    small, large = _cpu_seconds(lex, unit, 250_000), _cpu_seconds(lex, unit, 1_000_000)
    assert large < 3.0  # typically 0.1-0.6 s; generous for a shared, loaded CI box
    assert large < 8 * small + 0.1
