"""Lean 4 source text without Lean: blanking comments and strings, and reading a requested statement.

`blank_comments_and_strings` keeps every character's offset (comments and string contents become spaces,
newlines stay), so a check that runs on the blanked text reports positions that are right in the original.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from services.errors import InvalidStatement


@dataclass(frozen=True)
class LexProblem:
    """A spot where this lexer cannot be sure it reads the text as Lean does, or where Lean's own lexer stops with
    an error (after which Lean's error recovery resumes at a position of its choosing and may read what follows
    differently). Callers reject such code."""

    start: int
    end: int
    why: str


@dataclass(frozen=True)
class Lexed:
    blanked: str
    problems: tuple[LexProblem, ...]


# Lean's character classes (Init/Meta.lean) as regex classes, so the lexer can take a whole run at once.
# `isLetterLike`: Greek except λ Π Σ, Coptic, Greek Extended, letter-like symbols, mathematical alphanumerics.
_LETTER_LIKE = (
    "\u03b1-\u03ba\u03bc-\u03c9\u0391-\u039f\u03a1\u03a2\u03a4-\u03a9\u03ca-\u03fb\u1f00-\u1ffe\u2100-\u214f"
    "\U0001d49c-\U0001d59f"
)
_SUBSCRIPT_ALNUM = "\u2080-\u2089\u2090-\u209c\u1d62-\u1d6a\u2c7c"
ID_FIRST = "A-Za-z_" + _LETTER_LIKE  # `isIdFirst` (`Char.isAlpha` is ASCII only)
ID_REST = ID_FIRST + "0-9'!?" + _SUBSCRIPT_ALNUM  # `isIdRest`
_ID_FIRST_RE = re.compile(f"[{ID_FIRST}]")
_ID_REST_RE = re.compile(f"[{ID_REST}]")
# One identifier of plain parts joined by `.` (a `«…»` part is handled by hand).
_PLAIN_IDENT = re.compile(f"[{ID_FIRST}][{ID_REST}]*(?:\\.[{ID_FIRST}][{ID_REST}]*)*")
_NOT_NEWLINE = re.compile(r"[^\n]")


def is_id_first(c: str) -> bool:
    """Lean's `isIdFirst`: ASCII letters (`Char.isAlpha` is ASCII only), `_`, letter-like symbols."""
    return _ID_FIRST_RE.match(c) is not None


def is_id_rest(c: str) -> bool:
    """Lean's `isIdRest`."""
    return _ID_REST_RE.match(c) is not None


_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
# `isQuotableCharDefault`: the characters a `\` escape may name directly (also `x` + 2 hex, `u` + 4 hex).
_QUOTABLE = "\\\"'rnt"
# Single-character tokens after which a `'` surely starts a new token (no notation token begins with them and
# continues with `'`). After any other symbol the token table decides (`∑'`, `⁻¹'`, `×'` are tokens).
_PUNCT = set("()[]{}⟨⟩,;")
# Interpolated strings nested deeper than this inside `{…}` are not followed (rejected): it bounds the work.
MAX_INTERPOLATION_DEPTH = 8
MAX_PROBLEMS = 50
MAX_GUILLEMET_NAME = 200  # characters: longer `«…»` names are refused, so later scans may stop looking there

# The lexer is one compiled scanner: each `search` skips whitespace, symbols and identifiers in C to the next token
# the lexer must look at and, for the common well-formed ones (a line comment, an unnested block comment, a string
# without `{`, a character literal at a token start, a number), matches the whole token, so Python does one step
# per token and none per character. The rest (nested comments, strings with `{` or errors, a `'` after a symbol,
# raw strings, `«»` names) goes to the methods below, which follow Lean's functions named there. Every repetition
# is possessive, so a failed fast match costs no backtracking.
_ESCAPE = r"\\(?:[\\\"'rnt]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})"  # `quotedCharCoreFn` without the string gap
_STRING_GAP = r"\\\n[^\S\n]*+(?!\n)"  # `\`, newline, whitespace; a second newline is an error
_CHAR = f"'(?:[^\\\\']|{_ESCAPE})"  # a character literal but its closing `'`: `charLitFnAux`
_NOT_ID = f"(?<![{ID_REST}])"  # within an identifier (or a number) `'`, `r` and digits start nothing
_TOKENS = (
    r"(?P<line>--[^\n]*+(?:\n *+--[^\n]*+)*+)"  # and the comments on the lines below (indented by spaces)
    r"|(?P<comment>/-[\s\S](?:[^/-]++|/(?!-)|-(?!/))*+-/)"  # body from the 3rd character: see `code`
    r"|(?P<nested>/-)"
    f'|(?P<string>"(?:[^"\\\\{{]++|{_ESCAPE}|{_STRING_GAP})*+")'
    r'|(?P<other_string>")'
    # a character literal where a token surely starts (after whitespace, punctuation or at the start)
    f"|(?P<char>(?<![^\\s(){{}}\\[\\]⟨⟩,;]){_CHAR}')"
    f"|(?P<quote>{_NOT_ID}')"
    f'|(?P<raw>{_NOT_ID}r#*")'
    f"|(?P<number>{_NOT_ID}(?:0[bB][01_]*+|0[oO][0-7_]*+|0[xX][0-9a-fA-F_]*+"
    r"|[0-9][0-9_]*+(?:\.(?:[0-9][0-9_]*+)?)?(?:(?P<exponent>[eE][+-]?)(?P<exponent_digits>[0-9][0-9_]*+)?)?))"
    f"|(?P<name_literal>`(?=[«'{ID_FIRST}]))"  # `` `x `` and `` `«x» `` (and a `'` right after a lone `` ` ``)
    r"|(?P<guillemet>«)"
)
# A number literal Lean reads without error, not followed by a `'` or `r"` (which would start a literal there).
_CLEAN_NUMBER = (
    r"(?:0[bB][01_]++|0[oO][0-7_]++|0[xX][0-9a-fA-F_]++"
    r"|(?!0[bBoOxX])[0-9][0-9_]*+(?:\.(?:[0-9][0-9_]*+)?)?+(?:[eE][+-]?[0-9][0-9_]*+|(?![eE])))"
    r"(?!'|r#*+\")"
)
# A `'` after a symbol that this lexer reads as part of the symbol (`∑'`, `⁻¹'`) when the other reading, a character
# literal, fails or would change nothing: see `char`, which takes the other cases (`''`, a literal that matters).
_SYMBOL_QUOTE = (
    f"(?<=[^\\s(){{}}\\[\\]⟨⟩,;{ID_REST}])'(?!')"
    f"(?:(?!(?:[^\\\\']|{_ESCAPE})')(?!r#*+\")|(?=[^\\s0-9\"'`«»{{}}\\-/\\\\(),;\\[\\]⟨⟩]'(?![{ID_REST}])))"
)
# What `code` skips in C before a token: identifier runs (inside one, `'`, `r` and digits start nothing), an `r`
# that opens no raw string, numbers read without error, name literals of plain parts, empty strings, and any other
# character that starts nothing (braces too, outside `{…}`).
_ID_FIRST_BUT_R = ID_FIRST.replace("A-Za-z_", "A-Za-qs-z_")
_SKIP = (
    f"(?:(?<=[{ID_REST}])[{ID_REST}]++|[{_ID_FIRST_BUT_R}!?{_SUBSCRIPT_ALNUM}][{ID_REST}]*+"
    f'|r(?!#*+")[{ID_REST}]*+|-(?!-)|/(?!-)|`(?![«\'{ID_FIRST}])|[^{ID_REST}\\-/"`«{{}}]++|{{BRACES}}'
    f'|""(?!\'|r#*+")|{_SYMBOL_QUOTE}|{_NOT_ID}{_CLEAN_NUMBER}'
    f"|`{_PLAIN_IDENT.pattern.replace('*', '*+')}(?!\\.«))*+"
)
# `(?P<other>…)` takes one character the skip left and no token wants (none that we know of): never a dead end.
_CODE_TOKENS = re.compile(_SKIP.replace("{BRACES}", "[{}]") + rf"(?:{_TOKENS}|(?P<other>[\s\S]))")
_INTERPOLATED_CODE_TOKENS = re.compile(  # braces count inside `{…}` of an interpolated string
    _SKIP.replace("|{BRACES}", "") + rf"(?:{_TOKENS}|(?P<open>\{{)|(?P<close>\}})|(?P<other>[\s\S]))"
)
_COMMENT_BODY = re.compile(r"(?:[^/-]++|/(?!-)|-(?!/))*+")  # up to the next `-/` or `/-`, or the end
_PLAIN_STRING_BODY = re.compile(f'(?:[^"\\\\]++|{_ESCAPE}|{_STRING_GAP})*+')
_INTERPOLATED_STRING_BODY = re.compile(f'(?:[^"\\\\{{]++|{_ESCAPE}|\\\\{{|{_STRING_GAP})*+')
_QUOTES = re.compile(r"'*+")
_CHAR_LITERAL = re.compile(_CHAR + "'")
_RAW_STRING_OPENING = re.compile(r'#*+"')


def _plain_char(c: str) -> bool:
    """A character that reads the same whether or not the `'` before it starts a character literal: an identifier
    start (swallowed with the `'` into one identifier) or a symbol that is neither a quote, a comment or bracket
    delimiter, whitespace nor a digit (after which a `'` would be a token start in one reading only)."""
    if is_id_first(c):
        return True
    return not (c.isspace() or c in _DIGITS or c in "\"'`«»{}-/\\" or c in _PUNCT)


class _Lexer:
    """Lean 4's lexer (`Lean/Parser/Basic.lean`), as far as it decides what is code: `whitespace` and
    `finishCommentBlock` (comments), `strLitFnAux`/`quotedStringFn` and `interpolatedStrFn` (strings),
    `rawStrLitFnAux`, `charLitFnAux`/`quotedCharFn`, `numberFnAux`, `identFnAux` (`«»` parts), name literals.

    It records the spans to blank (comments; literal contents) and the problems; the blanked text is built once
    at the end, so the work is linear in the input."""

    def __init__(self, text: str, strings: bool) -> None:
        self.text = text
        self.n = len(text)
        self.spans: list[tuple[int, int]] = []
        self.strings = strings
        self.problems: list[LexProblem] = []
        # Once one string's two readings disagreed the code is rejected; later strings are read plainly only,
        # which keeps the work linear however the strings are laid out.
        self.try_interpolation = True

    def blank(self, start: int, end: int) -> None:
        if end > start:
            self.spans.append((start, min(end, self.n)))

    def problem(self, start: int, end: int, why: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:  # the code is refused after the first; a few explain it
            self.problems.append(LexProblem(start, min(max(end, start), self.n), why))

    def result(self) -> Lexed:
        text = self.text
        pieces, done = [], 0
        for start, end in self.spans:  # disjoint, in text order
            pieces.append(text[done:start])
            chunk = text[start:end]
            pieces.append(_NOT_NEWLINE.sub(" ", chunk) if "\n" in chunk else " " * (end - start))
            done = end
        pieces.append(text[done:])
        return Lexed("".join(pieces), tuple(self.problems))

    # -- code ------------------------------------------------------------------------------------------------------
    def code(self, i: int, *, until_brace: bool = False, depth: int = 0) -> int:
        """Lex code from `i`; with `until_brace`, stop at (and return the offset of) an unmatched `}`."""
        text, n = self.text, self.n
        tokens = (_INTERPOLATED_CODE_TOKENS if until_brace else _CODE_TOKENS).match
        strings, blank = self.strings, self.spans.append
        braces = 0
        while True:
            if until_brace and not self.try_interpolation:
                return n  # a nested string's readings disagreed: this interpolated reading is abandoned too
            # `i` is where a token surely starts (after a complete token or comment): a `'` or `r"` there starts a
            # literal even right after an identifier character (`2'a'`, `«x»'a'`, `2r"…"`).
            if i < n:
                c = text[i]
                if c == "'":
                    literal = _CHAR_LITERAL.match(text, i)
                    if literal is None:
                        i = self.char(i, at_token_start=True)
                    else:
                        if strings:
                            blank((i + 1, literal.end() - 1))
                        i = literal.end()
                    continue
                if c == "r" and self.raw_string_start(i):
                    i = self.raw_string(i)
                    continue
            match = tokens(text, i)
            if match is None:
                return n
            kind = match.lastgroup or "other"  # every alternative is a named group: never None
            j, i = match.start(kind), match.end()
            if kind == "line":
                if j and text[j - 1] == "<":
                    self.problem(j - 1, j + 2, "`<--` (Lean may read the token `<-` then `-`, no comment)")
                blank((j, i))
            elif kind == "string":
                if strings and i - j > 2:
                    blank((j + 1, i - 1))
            elif kind == "number":
                if match.group("exponent") is not None and match.group("exponent_digits") is None:
                    self.problem(j, i, "a scientific literal without exponent digits")
                elif i - j == 2 and text[j + 1] in "bBoOxX":
                    self.problem(j, i, "a number literal without digits")
            elif kind == "char":
                if strings:
                    blank((j + 1, i - 1))
            elif kind == "comment" or kind == "nested":
                if j and text[j - 1] == "/":
                    self.problem(j - 1, j + 2, "`//-` (Lean may read the token `//` then `-`, no comment)")
                if kind == "nested":
                    # `whitespace` skips the character after `/-` unread (`/--` and `/-!` are doc comments, whose
                    # body `finishCommentBlock` also starts after that character): the body starts at `j + 3`.
                    closed = self.comment_end(j + 3)
                    if closed is None:
                        self.problem(j, n, "an unterminated comment")
                    i = n if closed is None else closed
                blank((j, i))
            elif kind == "other_string":
                i = self.string(j, depth)
            elif kind == "quote":
                i = self.char(j, at_token_start=text[j - 1].isspace() or text[j - 1] in _PUNCT)
            elif kind == "raw":
                i = self.raw_string(j)
            elif kind == "name_literal":
                i = self.ident(i) if text[i] != "'" else i
            elif kind == "guillemet":
                i = self.ident(j)
            elif kind == "other":
                pass
            elif kind == "open":
                braces += 1
            elif braces == 0:  # an unmatched `}`: the end of this `{…}` of an interpolated string
                return j
            else:
                braces -= 1

    def comment_end(self, j: int) -> int | None:
        """`finishCommentBlock` at nesting 1 from `j`: the offset just after the closing `-/` (None: unterminated).
        Lean scans character by character for `-/` (close) and `/-` (open); the leftmost match is the same."""
        text, n = self.text, self.n
        depth = 1
        while True:
            j = _COMMENT_BODY.match(text, j).end()  # type: ignore[union-attr]  # it matches the empty string
            if j >= n:
                return None
            depth += 1 if text[j] == "/" else -1
            j += 2
            if depth == 0:
                return j

    # -- literals ----------------------------------------------------------------------------------------------
    def escape(self, j: int, *, in_string: bool, interpolated: bool = False) -> tuple[int, str]:
        """`quotedCharCoreFn` at `j` (just after a `\\`): (offset after the escape, error or "")."""
        text, n = self.text, self.n
        if j >= n:
            return n, "an escape at the end of the text"
        c = text[j]
        if c in _QUOTABLE or (interpolated and c == "{"):
            return j + 1, ""
        if c in "xu":
            count = 2 if c == "x" else 4
            digits = text[j + 1 : j + 1 + count]
            if len(digits) == count and all(d in _HEX for d in digits):
                return j + 1 + count, ""
            return j + 1, "an invalid `\\x`/`\\u` escape"
        if in_string and c == "\n":
            # a string gap: `\`, newline, then whitespace; a second newline is an error
            k = j + 1
            while k < n and text[k].isspace():
                if text[k] == "\n":
                    return k, "a second newline in a string gap"
                k += 1
            return k, ""
        return j, "an invalid escape sequence"

    def plain_string_end(self, i: int) -> tuple[int, str]:
        """The offset of the closing `"` of the string opening at `i` read without interpolation, and the error
        (`strLitFnAux`), if any, with the offset where Lean stops."""
        text, n = self.text, self.n
        j = i + 1
        while True:
            j = _PLAIN_STRING_BODY.match(text, j).end()  # type: ignore[union-attr]  # it matches ""
            if j >= n:
                return n, "an unterminated string literal"
            if text[j] == '"':
                return j, ""
            j, error = self.escape(j + 1, in_string=True)  # the body stops at a `\` only before a bad escape
            if error:
                return j, error

    def string(self, i: int, depth: int) -> int:
        """A string literal at `i`. Whether it is interpolated (`s!"…{e}…"`, `m!`, `throwError`, …) depends on the
        syntax around it, so both readings are tried: the `{…}` parts stay visible as code, and a string whose
        end differs between the two readings is a problem."""
        text, n = self.text, self.n
        plain, error = self.plain_string_end(i)
        has_brace = "{" in text[i + 1 : plain]
        if error and not has_brace:
            self.problem(i, plain + 1, error)
            self.blank(i + 1, plain)
            return min(plain + 1, n)
        if not has_brace:
            if self.strings:
                self.blank(i + 1, plain)
            return plain + 1
        if not self.try_interpolation or depth >= MAX_INTERPOLATION_DEPTH:
            self.problem(i, plain + 1, "a string literal whose end depends on whether it is interpolated")
            self.try_interpolation = False
            return min(plain + 1, n)
        # the interpolated reading (`interpolatedStrFn`), with the code inside `{…}` lexed for real
        spans_before, problems_before = len(self.spans), len(self.problems)
        j = i + 1
        # the string's parts are blanked as they come, so the spans stay in text order (undone if the readings differ)
        blank = self.blank if self.strings else lambda start, end: None
        seg = j
        interpolation_error = ""
        while True:
            j = _INTERPOLATED_STRING_BODY.match(text, j).end()  # type: ignore[union-attr]  # it matches ""
            if j >= n or text[j] == '"':
                break
            if text[j] == "{":
                blank(seg, j)
                j = self.code(j + 1, until_brace=True, depth=depth + 1) + 1
                seg = j
                continue
            j, interpolation_error = self.escape(j + 1, in_string=True, interpolated=True)  # a bad escape
            if interpolation_error:
                break
        blank(seg, min(j, n))
        if j != plain or error or interpolation_error:
            del self.spans[spans_before:]
            del self.problems[problems_before:]
            self.try_interpolation = False
            self.problem(i, max(j, plain) + 1, "a string literal whose end depends on whether it is interpolated")
            return min(min(j, plain) + 1, n)
        return j + 1

    def char(self, i: int, *, at_token_start: bool) -> int:
        """`'` (`tokenFnAux`): at a token start and not followed by `'`, a character literal (`charLitFnAux`: any
        one character, a raw newline included, or an escape, then `'`); `''` is a token (`f '' s`). After a
        symbol the `'` may end a notation token (`∑'`, `⁻¹'`) instead: then the reading is ambiguous unless both
        readings agree on what follows."""
        text, n = self.text, self.n
        if i + 1 < n and text[i + 1] == "'":
            # `''` tokens, as many as the run of quotes holds (an odd one left starts a token: see `code`)
            run = _QUOTES.match(text, i).end() - i  # type: ignore[union-attr]
            return i + run - run % 2
        # the literal reading
        if i + 1 >= n:
            end, error = n, "a character literal at the end of the text"
        elif text[i + 1] == "\\":
            end, error = self.escape(i + 2, in_string=False)
        else:
            end, error = i + 2, ""
        if not error and (end >= n or text[end] != "'"):
            error = "a character literal without its closing `'`"
        if at_token_start:
            if error:
                self.problem(i, min(end + 1, n), error)
                return min(end, n)
            if self.strings:
                self.blank(i + 1, end)
            return end + 1
        # after a symbol: this lexer reads the `'` as part of the symbol. Reject when the other reading (a literal
        # `'c'`) would change what follows: a significant content, or an identifier character right after it.
        if not error and (
            any(not _plain_char(ch) for ch in text[i + 1 : end]) or (end + 1 < n and is_id_rest(text[end + 1]))
        ):
            self.problem(i, end + 1, "a character literal right after a symbol (lexing is ambiguous)")
        return i + 1

    def raw_string_start(self, i: int) -> bool:
        """`isRawStrLitStart` after `r`: `#`* then `"`."""
        return _RAW_STRING_OPENING.match(self.text, i + 1) is not None

    def raw_string(self, i: int) -> int:
        """`rawStrLitFnAux`: `r`, k `#`s, `"`, then up to the first `"` followed by k `#`s."""
        text, n = self.text, self.n
        j = _RAW_STRING_OPENING.match(text, i + 1).end() - 1  # type: ignore[union-attr]  # the opening `"`
        closing = '"' + "#" * (j - i - 1)
        end = text.find(closing, j + 1)
        if end == -1:
            self.problem(i, n, "an unterminated raw string literal")
            self.blank(j + 1, n)
            return n
        if self.strings:
            self.blank(j + 1, end)
        return end + len(closing)

    def ident(self, i: int) -> int:
        """`identFnAux`: parts `«…»` or idFirst idRest*, joined by `.` when a part follows."""
        text, n = self.text, self.n
        while i < n:
            plain = _PLAIN_IDENT.match(text, i)
            if plain is not None:
                i = plain.end()
                if not (i + 1 < n and text[i] == "." and text[i + 1] == "«"):
                    return i
                i += 1
                continue
            if text[i] == "«":
                end = text.find("»", i + 1)
                if end == -1:
                    self.problem(i, n, "unterminated `«` name")
                    return n
                if "\n" in text[i:end]:
                    self.problem(i, end + 1, "a `«…»` name spanning lines")
                elif end - i > MAX_GUILLEMET_NAME:
                    self.problem(i, end + 1, f"a `«…»` name longer than {MAX_GUILLEMET_NAME} characters")
                i = end + 1
            else:
                i += 1
                while i < n and is_id_rest(text[i]):
                    i += 1
            if i + 1 < n and text[i] == "." and (text[i + 1] == "«" or is_id_first(text[i + 1])):
                i += 1
                continue
            return i
        return i


def lex(text: str, *, strings: bool = True) -> Lexed:
    """Blank comments (and, with `strings`, string/char literal contents) keeping every offset, and report the
    places where the reading may differ from Lean's or Lean's lexer fails (see `_Lexer`)."""
    lexer = _Lexer(text, strings)
    lexer.code(0)
    return lexer.result()


def blank_comments_and_strings(text: str, *, strings: bool = True) -> str:
    """Return `text` with comments and the insides of string/char literals replaced by spaces.

    Lexes as Lean 4 does: `--` line comments; `/-` block comments, nested, whose body starts three characters
    after the `/` (Lean skips the character after `/-` unread, which is how `/--` and `/-!` doc comments are told
    apart, so `/-/- -/` is one whole comment); string literals with escapes, where the code inside `{…}` stays
    (it is code in an interpolated string, and a string is treated as possibly interpolated); raw strings
    `r"…"`/`r#"…"#`; char literals; and `«…»` names (kept, since they are names, but not lexed: `«a -- b»`
    holds no comment). With `strings=False` only comments are blanked. See `lex` for the problems found.
    """
    return lex(text, strings=strings).blanked


# -- declarations ------------------------------------------------------------------------------------------------
# An identifier as Lean's `identFn` reads it: parts `«…»` (one line, bounded: see `MAX_GUILLEMET_NAME`) or
# idFirst idRest*, joined by `.`.
_ID_PART = f"«[^»«\\n]{{0,{MAX_GUILLEMET_NAME}}}»|[{ID_FIRST}][{ID_REST}]*+"
IDENTIFIER = re.compile(f"(?:{_ID_PART})(?:\\.(?:{_ID_PART}))*+")
THEOREM_KEYWORDS = ("theorem", "lemma")
DECLARATION_KEYWORDS = (
    *THEOREM_KEYWORDS,
    "def",
    "abbrev",
    "example",
    "instance",
    "structure",
    "inductive",
    "class",
    "opaque",
    "axiom",
)
_MODIFIERS = ("private", "protected", "noncomputable", "nonrec")
_NOT_A_NAME = frozenset({"by", "fun", "where"})  # keywords `IDENTIFIER` would take for a name
_MAX_PREFIX = 2000  # characters of attributes and modifiers looked at before a keyword
# The attributes and modifiers just before a keyword on its line, read backwards (on the reversed line), so each
# keyword costs at most `_MAX_PREFIX` characters however the text is laid out.
_PREFIX_REVERSED = re.compile(
    r"(?:[ \t]*+\][^\[\]\n]*+\[@|[ \t]++(?:" + "|".join(word[::-1] for word in _MODIFIERS) + f")(?![{ID_REST}]))*+"
)


class Declaration(NamedTuple):
    """A declaration keyword of lexed text (`lex(…).blanked`) and what Lean reads around it."""

    keyword: str
    start: int  # where the declaration starts: its attribute lists and modifiers on the keyword's line, if any
    keyword_start: int
    name: str | None  # the identifier after the keyword as written (`«»` kept); None when there is none
    name_start: int
    name_end: int  # == name_start when there is no name


@functools.cache
def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str]:
    # A keyword is a whole identifier: not a part of a dotted name (`Nat.def`, `theorem.foo`), as `identFn` reads.
    # The boundaries on the left are lookbehinds after the literal, so the regex engine can scan for the literal.
    alternatives = "|".join(f"{w}(?<![{ID_REST}]{w})(?<![{ID_REST}»]\\.{w})" for w in keywords)
    return re.compile(
        f"(?P<keyword>{alternatives})(?![{ID_REST}])(?!\\.[«{ID_FIRST}])(?:\\s++(?P<name>{IDENTIFIER.pattern}))?"
    )


def declarations(blanked: str, keywords: tuple[str, ...] = THEOREM_KEYWORDS) -> Iterator[Declaration]:
    """Every declaration keyword of `blanked` (comments and strings blanked: `lex`) among `keywords`, in order,
    with its name and where the declaration starts. The one place a "theorem header" is recognised: the
    statement parser, the checker's policy, extraction and the memory's keys all read declarations through it.

    Where they differ, they say so where they call it: the checker wants its target at a line start (the imposed
    statement is composed at one), the memory's keys read the first declaration of an already-parsed statement,
    and extraction and the checker's helper rules look for every declaration keyword, not only theorems."""
    for match in _keyword_pattern(keywords).finditer(blanked):
        keyword_start = match.start("keyword")
        opening = blanked.rfind("«", max(0, keyword_start - MAX_GUILLEMET_NAME - 1), keyword_start)
        if opening != -1 and "»" not in blanked[opening:keyword_start]:
            continue  # inside a `«…»` name, which the lexer keeps as written
        start = keyword_start
        if keyword_start and blanked[keyword_start - 1] in " \t]":
            for window in (200, _MAX_PREFIX):  # a short look first: most prefixes are short
                window_start = max(0, keyword_start - window)
                line = blanked[blanked.rfind("\n", window_start, keyword_start) + 1 or window_start : keyword_start]
                prefix = _PREFIX_REVERSED.match(line[::-1]).end()  # type: ignore[union-attr]  # it matches ""
                start = keyword_start - prefix
                if prefix < len(line) or window_start == 0:
                    break
        name = match.group("name")
        if name is None or name in _NOT_A_NAME:
            after_keyword = match.end("keyword")
            yield Declaration(match.group("keyword"), start, keyword_start, None, after_keyword, after_keyword)
        else:
            yield Declaration(match.group("keyword"), start, keyword_start, name, match.start("name"), match.end())


_PROOF_TAIL = re.compile(r":=\s*(?:by(?:\s+sorry)?)?\s*\Z")


@dataclass(frozen=True)
class Statement:
    """A requested theorem: `head` is its text up to and including the final `:=`, exactly as sent."""

    kind: str  # "theorem" or "lemma"
    name: str
    head: str
    text: str  # as the request gave it

    @property
    def hash(self) -> str:
        return statement_hash(self.text)


def parse_statement(text: str, *, param: str = "formal_statement") -> Statement:
    """Check that `text` is one Lean 4 theorem/lemma awaiting its proof, and split off the proof tail.

    Accepted endings: `:= by sorry`, `:= by`, `:=`. A leading doc comment is allowed; a second
    declaration, or anything after the `:=` other than `by`/`by sorry`, is not.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidStatement("formal_statement is empty", param=param)
    blanked = blank_comments_and_strings(text)
    decls = list(declarations(blanked))
    if not decls:
        raise InvalidStatement("formal_statement must be a Lean 4 `theorem` or `lemma` declaration", param=param)
    if len(decls) > 1:
        raise InvalidStatement(
            f"formal_statement must hold exactly one theorem or lemma; found {len(decls)} "
            f"(lines {_line_numbers(text, [d.start for d in decls])})",
            param=param,
        )
    decl = decls[0]
    if blanked[: decl.start].strip():
        raise InvalidStatement(
            "formal_statement may only have a comment before its `theorem`/`lemma`; put imports, `open` "
            "and options in `header`",
            param=param,
        )
    if decl.name is None:
        raise InvalidStatement("the theorem has no name", param=param)
    name = text[decl.name_start : decl.name_end]
    tail = _PROOF_TAIL.search(blanked.rstrip())
    if not tail:
        raise InvalidStatement(
            "formal_statement must end with `:= by sorry`, `:= by` or `:=` (the proof is what we find)",
            param=param,
        )
    head = text[: tail.start()].rstrip() + " :="
    if ":" not in blanked[decl.name_end : tail.start()]:
        raise InvalidStatement("the theorem has no type (no `:` before `:=`)", param=param)
    return Statement(kind=decl.keyword, name=name, head=head, text=text)


def _line_numbers(text: str, offsets: list[int], shown: int = 5) -> str:
    """The 1-based lines of the first `shown` of the ascending `offsets`, counted in one pass."""
    lines, line, done = [], 1, 0
    for offset in offsets[:shown]:
        line += text.count("\n", done, offset)
        done = offset
        lines.append(str(line))
    return ", ".join(lines) + (", …" if len(offsets) > shown else "")


def normalize_statement(text: str) -> str:
    """The statement without comments, proof tail or layout: the key for 'is this the same theorem?'."""
    blanked = blank_comments_and_strings(text, strings=False)
    tail = _PROOF_TAIL.search(blanked.rstrip())
    body = blanked[: tail.start()] if tail else blanked
    return " ".join(body.split())


def leading_declaration(normalized: str) -> Declaration | None:
    """The named theorem/lemma that `normalize_statement`'s output starts with (its attributes and modifiers
    first), if any. The memory's keys read statements this way: normalisation keeps string literals, but none can
    come before the keyword of a statement that parses."""
    first = next(declarations(normalized), None)
    return first if first is not None and first.start == 0 and first.name else None


def statement_hash(text: str) -> str:
    return hashlib.sha256(normalize_statement(text).encode()).hexdigest()


def first_declaration_offset(text: str) -> int | None:
    """Offset of the line holding the first `theorem`/`lemma` of `text` (outside comments), if any."""
    first = next(declarations(blank_comments_and_strings(text)), None)
    return None if first is None else text.rfind("\n", 0, first.start) + 1


_HEADER_LINE = re.compile(r"^(import\s|set_option\s|open\s)")


def strip_header_lines(text: str) -> str:
    """Drop the file-level `import`/`set_option`/`open` lines above the first declaration.

    An `open … in` or `set_option … in` line scopes only the declaration after it, so it is kept.
    """
    offset = first_declaration_offset(text)
    head, rest = (text[:offset], text[offset:]) if offset is not None else (text, "")
    kept = [
        line
        for line in head.splitlines(keepends=True)
        if not (_HEADER_LINE.match(line) and not line.rstrip().endswith(" in"))
    ]
    return ("".join(kept).strip("\n") + "\n" + rest).lstrip("\n")
