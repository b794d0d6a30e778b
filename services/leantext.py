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
    """A spot where this lexer cannot be sure it reads the text as Lean does (callers reject such code)."""

    start: int
    end: int
    why: str


@dataclass(frozen=True)
class Lexed:
    blanked: str
    problems: tuple[LexProblem, ...]


def _letter_like(c: str) -> bool:
    """Lean's `isLetterLike` (Init/Meta.lean): Greek except λ Π Σ, Coptic, Greek Extended, letter-like symbols."""
    v = ord(c)
    return (
        (0x3B1 <= v <= 0x3C9 and v != 0x3BB)
        or (0x391 <= v <= 0x3A9 and v not in (0x3A0, 0x3A3))
        or 0x3CA <= v <= 0x3FB
        or 0x1F00 <= v <= 0x1FFE
        or 0x2100 <= v <= 0x214F
        or 0x1D49C <= v <= 0x1D59F
    )


def _subscript_alnum(c: str) -> bool:
    v = ord(c)
    return 0x2080 <= v <= 0x2089 or 0x2090 <= v <= 0x209C or 0x1D62 <= v <= 0x1D6A or v == 0x2C7C


def is_id_first(c: str) -> bool:
    """Lean's `isIdFirst`: ASCII letters (`Char.isAlpha` is ASCII only), `_`, letter-like symbols."""
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or c == "_" or _letter_like(c)


def is_id_rest(c: str) -> bool:
    """Lean's `isIdRest`."""
    return is_id_first(c) or ("0" <= c <= "9") or c in "'!?" or _subscript_alnum(c)


# Characters that change how the text after them is lexed (used to spot ambiguous character literals).
_SIGNIFICANT = set("\"'«»{}-/`\\")
_CHAR_LITERAL = re.compile(r"'(\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)|[^\\'\n])'")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_RAW_START = re.compile(r"r(#*)\"")


class _Lexer:
    """Lean 4's lexer, as far as it decides what is code: `whitespace`/`finishCommentBlock` (comments),
    `strLitFnAux`/`interpolatedStrFn` (strings), `rawStrLitFnAux`, `charLitFnAux`, `identFnAux` (`«»`)."""

    def __init__(self, text: str, strings: bool) -> None:
        self.text = text
        self.n = len(text)
        self.out = list(text)
        self.strings = strings
        self.problems: list[LexProblem] = []

    def blank(self, start: int, end: int) -> None:
        for k in range(start, min(end, self.n)):
            if self.out[k] != "\n":
                self.out[k] = " "

    def problem(self, start: int, end: int, why: str) -> None:
        self.problems.append(LexProblem(start, min(max(end, start), self.n), why))

    def code(self, i: int, *, until_brace: bool = False) -> int:
        """Lex code from `i`; with `until_brace`, stop at (and return the offset of) an unmatched `}`."""
        text, n = self.text, self.n
        depth = 0
        while i < n:
            c = text[i]
            if c == "-" and text.startswith("--", i):
                end = text.find("\n", i)
                end = n if end == -1 else end
                self.blank(i, end)
                i = end
            elif c == "/" and text.startswith("/-", i):
                # `/-` then one more character that is never looked at (`/--`, `/-!`: doc comments, whose
                # body starts after that character too): the body starts 3 characters after the `/`.
                j = self.comment_end(i + 3)
                self.blank(i, j)
                i = j
            elif c == '"':
                i = self.string(i)
            elif c == "r" and (m := _RAW_START.match(text, i)):
                closing = '"' + m.group(1)
                end = text.find(closing, m.end())
                end = n if end == -1 else end
                if self.strings:
                    self.blank(m.end(), end)
                i = end + len(closing)
            elif c == "'":
                i = self.char(i)
            elif c == "«" or is_id_first(c):
                i = self.ident(i)
            elif "0" <= c <= "9":
                m = _NUMBER.match(text, i)
                i = m.end() if m else i + 1
            elif c == "{":
                depth += 1
                i += 1
            elif c == "}":
                if until_brace and depth == 0:
                    return i
                depth = max(0, depth - 1)
                i += 1
            else:
                i += 1
        return n

    def comment_end(self, j: int) -> int:
        """`finishCommentBlock` at nesting 1 from `j`: the offset just after the closing `-/` (or the end)."""
        text, n = self.text, self.n
        depth = 1
        while j < n:
            if text.startswith("-/", j):
                depth -= 1
                j += 2
                if depth == 0:
                    return j
            elif text.startswith("/-", j):
                depth += 1
                j += 2
            else:
                j += 1
        return n

    def string(self, i: int) -> int:
        """A string literal at `i`. Whether it is interpolated (`s!"…{e}…"`, `m!`, `throwError`, …) depends on the
        syntax around it, so both readings are tried: the `{…}` parts stay visible as code, and a string whose
        end differs between the two readings is a problem."""
        text, n = self.text, self.n
        plain = i + 1
        has_brace = False
        while plain < n and text[plain] != '"':
            if text[plain] == "{":
                has_brace = True
            plain += 2 if text[plain] == "\\" else 1
        if not has_brace:
            if self.strings:
                self.blank(i + 1, plain)
            return plain + 1
        # the interpolated reading, with the code inside `{…}` lexed (and its comments/strings blanked) for real
        saved = list(self.out)
        saved_problems = len(self.problems)
        j = i + 1
        segments: list[tuple[int, int]] = []  # string parts, blanked at the end
        seg = j
        while j < n and text[j] != '"':
            if text[j] == "\\":
                j += 2
            elif text[j] == "{":
                segments.append((seg, j))
                j = self.code(j + 1, until_brace=True) + 1
                seg = j
            else:
                j += 1
        segments.append((seg, min(j, n)))
        if j != plain:
            self.out = saved
            del self.problems[saved_problems:]
            self.problem(i, max(j, plain) + 1, "a string literal whose end depends on whether it is interpolated")
            return min(j, plain) + 1
        if self.strings:
            for a, b in segments:
                self.blank(a, b)
        return j + 1

    def char(self, i: int) -> int:
        """`'`: a character literal when at a token start (Lean: `'` not followed by `'`), else part of a token
        (`h'` is consumed with its identifier; `''`, `∑'`, `⁻¹'` are symbols)."""
        text = self.text
        m = _CHAR_LITERAL.match(text, i)
        if not m:
            return i + 1
        prev = text[i - 1] if i else " "
        if not (prev.isspace() or prev in "([{⟨,"):
            # after a symbol, `'` may end a notation token (`∑'`, `⁻¹'`, `×'`): then it is no literal at all
            if any(ch in _SIGNIFICANT for ch in m.group(1)) or (m.end() < self.n and is_id_rest(text[m.end()])):
                self.problem(i, m.end(), "a character literal right after a symbol (lexing is ambiguous)")
            return i + 1
        if self.strings:
            self.blank(i + 1, m.end() - 1)
        return m.end()

    def ident(self, i: int) -> int:
        """`identFnAux`: parts `«…»` or idFirst idRest*, joined by `.` when a part follows."""
        text, n = self.text, self.n
        while i < n:
            if text[i] == "«":
                end = text.find("»", i + 1)
                if end == -1:
                    self.problem(i, n, "unterminated `«` name")
                    return n
                if "\n" in text[i:end]:
                    self.problem(i, end + 1, "a `«…»` name spanning lines")
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
    places where the reading may differ from Lean's (see `_Lexer`)."""
    lexer = _Lexer(text, strings)
    lexer.code(0)
    return Lexed("".join(lexer.out), tuple(lexer.problems))


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
