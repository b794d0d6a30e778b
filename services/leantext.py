"""Lean 4 source text without Lean: blanking comments and strings, and reading a requested statement.

`blank_comments_and_strings` keeps every character's offset (comments and string contents become spaces,
newlines stay), so a check that runs on the blanked text reports positions that are right in the original.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

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
# The next character (pair) that starts something the lexer must look at. Not preceded by an identifier
# character: within an identifier (or a number, which `code` handles itself) `'`, `r` and digits start nothing.
_COMMENT_MARK = re.compile(r"-/|/-")
_NOT_NEWLINE = re.compile(r"[^\n]")
_NEXT = re.compile(f'(?<![{ID_REST}])(?:\'|r(?=#*")|[0-9])|--|/-|["`«{{}}]')


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
        pieces, done = [], 0
        for start, end in sorted(self.spans):
            start = max(start, done)
            if end <= start:
                continue
            pieces.append(self.text[done:start])
            pieces.append(_NOT_NEWLINE.sub(" ", self.text[start:end]))
            done = end
        pieces.append(self.text[done:])
        return Lexed("".join(pieces), tuple(self.problems))

    # -- code ------------------------------------------------------------------------------------------------------
    def code(self, i: int, *, until_brace: bool = False, depth: int = 0) -> int:
        """Lex code from `i`; with `until_brace`, stop at (and return the offset of) an unmatched `}`.

        `_NEXT` skips whitespace, symbols and identifiers (at C speed; inside an identifier a `'`, a digit or an
        `r` starts nothing) to the next character that starts something: a comment, a literal, a `«` name, a
        brace, a number."""
        text, n = self.text, self.n
        braces = 0
        boundary = i  # a position where a new token surely starts (after a complete token or comment)
        while True:
            if until_brace and not self.try_interpolation:
                return n  # a nested string's readings disagreed: this interpolated reading is abandoned too
            if i == boundary and i < n and (text[i] == "'" or (text[i] == "r" and self.raw_string_start(i))):
                j, token = i, text[i]  # right after a number, a literal or a comment: a token starts here
            else:
                match = _NEXT.search(text, i)
                if match is None:
                    return n
                j, token = match.start(), match.group(0)
            c = token[0]
            if c == "r":
                i = self.raw_string(j)
            elif token == "--":
                if j and text[j - 1] == "<":
                    self.problem(j - 1, j + 2, "`<--` (Lean may read the token `<-` then `-`, no comment)")
                end = text.find("\n", j)
                end = n if end == -1 else end
                self.blank(j, end)
                i = end
            elif token == "/-":
                if j and text[j - 1] == "/":
                    self.problem(j - 1, j + 2, "`//-` (Lean may read the token `//` then `-`, no comment)")
                # `whitespace` skips the character after `/-` unread (`/--` and `/-!` are doc comments, whose body
                # `finishCommentBlock` also starts after that character): the body starts 3 characters after `/`.
                closed = self.comment_end(j + 3)
                if closed is None:
                    self.problem(j, n, "an unterminated comment")
                self.blank(j, n if closed is None else closed)
                i = n if closed is None else closed
            elif c == '"':
                i = self.string(j, depth)
            elif c == "'":
                at_token_start = j == boundary or j == 0 or text[j - 1].isspace() or text[j - 1] in _PUNCT
                i = self.char(j, at_token_start=at_token_start)
            elif c == "`":
                i = self.ident(j + 1) if j + 1 < n and (text[j + 1] == "«" or is_id_first(text[j + 1])) else j + 1
            elif c == "«":
                i = self.ident(j)
            elif c == "{":
                braces += 1
                i = j + 1
            elif c == "}":
                if until_brace and braces == 0:
                    return j
                braces = max(0, braces - 1)
                i = j + 1
            else:  # a digit
                i = self.number(j)
            boundary = i

    def comment_end(self, j: int) -> int | None:
        """`finishCommentBlock` at nesting 1 from `j`: the offset just after the closing `-/` (None: unterminated).
        Lean scans character by character for `-/` (close) and `/-` (open); the leftmost match is the same."""
        depth = 1
        for match in _COMMENT_MARK.finditer(self.text, j):
            depth += 1 if match.group(0) == "/-" else -1
            if depth == 0:
                return match.end()
        return None

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

    def plain_string_end(self, i: int, *, interpolated: bool = False) -> tuple[int, str]:
        """The offset of the closing `"` of the string opening at `i` read without interpolation, and the error
        (`strLitFnAux`), if any, with the offset where Lean stops."""
        text, n = self.text, self.n
        j = i + 1
        while j < n:
            c = text[j]
            if c == '"':
                return j, ""
            if c == "\\":
                j, error = self.escape(j + 1, in_string=True, interpolated=interpolated)
                if error:
                    return j, error
            else:
                j += 1
        return n, "an unterminated string literal"

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
        segments: list[tuple[int, int]] = []  # string parts, blanked at the end
        seg = j
        interpolation_error = ""
        while j < n and text[j] != '"':
            if text[j] == "\\":
                j, interpolation_error = self.escape(j + 1, in_string=True, interpolated=True)
                if interpolation_error:
                    break
            elif text[j] == "{":
                segments.append((seg, j))
                j = self.code(j + 1, until_brace=True, depth=depth + 1) + 1
                seg = j
            else:
                j += 1
        segments.append((seg, min(j, n)))
        if j != plain or error or interpolation_error:
            del self.spans[spans_before:]
            del self.problems[problems_before:]
            self.try_interpolation = False
            self.problem(i, max(j, plain) + 1, "a string literal whose end depends on whether it is interpolated")
            return min(min(j, plain) + 1, n)
        if self.strings:
            for a, b in segments:
                self.blank(a, b)
        return j + 1

    def char(self, i: int, *, at_token_start: bool) -> int:
        """`'` (`tokenFnAux`): at a token start and not followed by `'`, a character literal (`charLitFnAux`: any
        one character, a raw newline included, or an escape, then `'`); `''` is a token (`f '' s`). After a
        symbol the `'` may end a notation token (`∑'`, `⁻¹'`) instead: then the reading is ambiguous unless both
        readings agree on what follows."""
        text, n = self.text, self.n
        if i + 1 < n and text[i + 1] == "'":
            return i + 2
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
        j = i + 1
        while j < self.n and self.text[j] == "#":
            j += 1
        return j < self.n and self.text[j] == '"'

    def raw_string(self, i: int) -> int:
        """`rawStrLitFnAux`: `r`, k `#`s, `"`, then up to the first `"` followed by k `#`s."""
        text, n = self.text, self.n
        hashes = 0
        j = i + 1
        while text[j] == "#":
            hashes += 1
            j += 1
        closing = '"' + "#" * hashes
        end = text.find(closing, j + 1)
        if end == -1:
            self.problem(i, n, "an unterminated raw string literal")
            self.blank(j + 1, n)
            return n
        if self.strings:
            self.blank(j + 1, end)
        return end + len(closing)

    def number(self, i: int) -> int:
        """`numberFnAux`: `0b`/`0o`/`0x` literals, decimals with an optional `.digits` and exponent."""
        text, n = self.text, self.n

        def digits(j: int, allowed: str) -> int:
            while j < n and (text[j] in allowed or text[j] == "_"):
                j += 1
            return j

        if text[i] == "0" and i + 1 < n and text[i + 1] in "bBoOxX":
            allowed = {"b": "01", "o": "01234567", "x": _HEX}[text[i + 1].lower()]
            j = digits(i + 2, allowed)
            if j == i + 2:
                self.problem(i, j, "a number literal without digits")
            return j
        j = digits(i, _DIGITS)
        if j < n and text[j] in ".eE":
            if text[j] == ".":
                j += 1
                if j < n and text[j] in _DIGITS:
                    j = digits(j, _DIGITS)
            if j < n and text[j] in "eE":
                k = j + 1
                if k < n and text[k] in "+-":
                    k += 1
                if k < n and text[k] in _DIGITS:
                    return digits(k, _DIGITS)
                self.problem(i, k, "a scientific literal without exponent digits")
                return k
        return j

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


_DECL = re.compile(r"(?m)^[ \t]*(?:@\[[^\]]*\][ \t]*)?(?:private[ \t]+|protected[ \t]+)?(theorem|lemma)\b")
_NAME = re.compile(r"\s*(«[^»]+»|[^\s(){}\[\]:,⦃⦄]+)")
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
    decls = list(_DECL.finditer(blanked))
    if not decls:
        raise InvalidStatement("formal_statement must be a Lean 4 `theorem` or `lemma` declaration", param=param)
    if len(decls) > 1:
        raise InvalidStatement(
            "formal_statement must hold exactly one theorem or lemma; found "
            f"{len(decls)} (lines {', '.join(str(text.count(chr(10), 0, d.start()) + 1) for d in decls)})",
            param=param,
        )
    decl = decls[0]
    if blanked[: decl.start()].strip():
        raise InvalidStatement(
            "formal_statement may only have a comment before its `theorem`/`lemma`; put imports, `open` "
            "and options in `header`",
            param=param,
        )
    name_match = _NAME.match(blanked, decl.end())
    if not name_match or name_match.group(1) in {":=", "by"}:
        raise InvalidStatement("the theorem has no name", param=param)
    name = text[name_match.start(1) : name_match.end(1)]
    tail = _PROOF_TAIL.search(blanked.rstrip())
    if not tail:
        raise InvalidStatement(
            "formal_statement must end with `:= by sorry`, `:= by` or `:=` (the proof is what we find)",
            param=param,
        )
    head = text[: tail.start()].rstrip() + " :="
    if ":" not in blanked[name_match.end() : tail.start()]:
        raise InvalidStatement("the theorem has no type (no `:` before `:=`)", param=param)
    return Statement(kind=decl.group(1), name=name, head=head, text=text)


def normalize_statement(text: str) -> str:
    """The statement without comments, proof tail or layout: the key for 'is this the same theorem?'."""
    blanked = blank_comments_and_strings(text, strings=False)
    tail = _PROOF_TAIL.search(blanked.rstrip())
    body = blanked[: tail.start()] if tail else blanked
    return " ".join(body.split())


def statement_hash(text: str) -> str:
    return hashlib.sha256(normalize_statement(text).encode()).hexdigest()


def first_declaration_offset(text: str) -> int | None:
    """Offset of the line holding the first `theorem`/`lemma` of `text` (outside comments), if any."""
    match = _DECL.search(blank_comments_and_strings(text))
    return match.start() if match else None


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
