"""`leantext.lex`: reads comments, strings, char literals and `«»` names as Lean 4's lexer does (and reports where it
cannot be sure), since every check of the text policy runs on its blanked output."""

from __future__ import annotations

import pytest

from services.leantext import blank_comments_and_strings, lex


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
        pytest.param("/- a /- b -/ c -/ d", "                  d", id="nested"),
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
        pytest.param('2r"\\" v "', '2r" " v "', id="raw-string-after-number"),
        pytest.param('xr"\\" v "', 'xr"     "', id="r-inside-identifier"),
        pytest.param("f ⁻¹' s", "f ⁻¹' s", id="preimage-token"),
        pytest.param("f '' s", "f '' s", id="image-token"),
    ],
)
def test_lexing_matches_lean(text: str, expected: str) -> None:
    lexed = lex(text)
    assert lexed.blanked == expected
    assert len(lexed.blanked) == len(text)
    assert blank_comments_and_strings(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        pytest.param('s!"{ "a" ++ (by run_tac t; exact "b") }"', "interpolated", id="ambiguous-interpolation"),
        pytest.param('"{" ++ (by run_tac t) "}"', "interpolated", id="plain-string-with-brace"),
        pytest.param('s!"{f "x" /- } -/}" z', "interpolated", id="nested-string-in-interpolation"),
        pytest.param("∑'\"' x \"", "character literal", id="char-after-symbol"),
        pytest.param('⁻¹\'a\'r"\\" x "', "character literal", id="char-then-raw-string"),
        pytest.param("def «a\nb» : Nat := 0", "spanning lines", id="guillemet-newline"),
        pytest.param("def «a : Nat := 0", "unterminated", id="guillemet-unterminated"),
    ],
)
def test_ambiguous_places_are_reported(text: str, why: str) -> None:
    assert any(why in problem.why for problem in lex(text).problems)


def test_ordinary_code_has_no_problems() -> None:
    text = (
        "theorem t (h' : a = b) : f '' s = s := by\n"
        "  have h'' : (1 : ℝ) ≠ 2 := by norm_num -- a 'comment'\n"
        '  simp [h\', Set.image] /- "quoted" -/\n'
        "  exact ⟨'a', \"b{c}\"⟩"
    )
    assert lex(text).problems == ()
