"""Lean 4 source text without Lean: blanking comments and strings, and reading a requested statement.

`blank_comments_and_strings` keeps every character's offset (comments and string contents become spaces,
newlines stay), so a check that runs on the blanked text reports positions that are right in the original.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from services.errors import InvalidStatement

_IDENT_CHAR = re.compile(r"[\w.'!?₀-₉ₐ-ₜᵢ-ᵪⱼ]")


def blank_comments_and_strings(text: str, *, strings: bool = True) -> str:
    """Return `text` with comments and the insides of string/char literals replaced by spaces.

    Handles `--` line comments, nested `/- -/` block comments (doc comments too), string literals with
    escapes, raw strings `r"…"`/`r#"…"#`, char literals, and `«…»` names (whose insides are kept, since
    they are names, but are not lexed: `«a -- b»` holds no comment). With `strings=False` only comments
    are blanked.
    """
    out = list(text)
    n = len(text)
    i = 0

    def blank(start: int, end: int) -> None:
        for k in range(start, min(end, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            end = n if end == -1 else end
            blank(i, end)
            i = end
        elif c == "/" and text.startswith("/-", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/-", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("-/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif c == "«":
            end = text.find("»", i + 1)
            i = n if end == -1 else end + 1
        elif c == "r" and (i == 0 or not _IDENT_CHAR.match(text[i - 1])) and re.match(r'r#*"', text[i:]):
            hashes = len(re.match(r"r(#*)", text[i:]).group(1))  # type: ignore[union-attr]
            body_start = i + 2 + hashes
            closing = '"' + "#" * hashes
            end = text.find(closing, body_start)
            end = n if end == -1 else end
            if strings:
                blank(body_start, end)
            i = end + len(closing)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if strings:
                blank(i + 1, j)
            i = j + 1
        elif c == "'" and (i == 0 or not _IDENT_CHAR.match(text[i - 1])):
            match = re.match(r"'(\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)|[^\\'\n])'", text[i:])
            if match:
                if strings:
                    blank(i + 1, i + match.end() - 1)
                i += match.end()
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


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
