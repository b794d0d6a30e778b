"""The integrity policy before Lean (DESIGN §5 steps 1-2): the text policy and the imposed statement.

Everything runs on `blank_comments_and_strings(code)`, which keeps every offset, so a violation's position is
right in the model's original text. Dropped lines (repeats of the request header, `#print`/`#check`) are
emptied, not removed, so line numbers never move.

The text Lean compiles is composed, never trusted: the model's declarations before its target theorem (helper
lemmas), then the requested statement exactly as the request gave it (`parse_statement(...).head`), then the
model's proof body (everything after the `:=` of its own target). `PositionMap` maps Lean's positions in that
composed command back to the model's code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.lean.protocol import LeanMessage, Pos
from services.leantext import blank_comments_and_strings, parse_statement

STANDARD_AXIOMS = frozenset({"propext", "Classical.choice", "Quot.sound"})

# Left/right boundaries of a Lean token (identifiers may hold `_`, `'`, `!`, `?` and digits).
_L = r"(?<![A-Za-z0-9_'!?])"
_R = r"(?![A-Za-z0-9_'!?])"

# Forbidden anywhere in the code: each (regex, why).
FORBIDDEN: tuple[tuple[str, str], ...] = (
    (_L + r"sorry" + _R, "`sorry` leaves the proof unfinished"),
    (_L + r"sorryAx" + _R, "`sorryAx` is sorry"),
    (_L + r"admit" + _R, "`admit` leaves the proof unfinished"),
    (_L + r"axiom" + _R, "a new `axiom` can prove anything"),
    (_L + r"native_decide" + _R, "`native_decide` trusts compiled code (axiom Lean.ofReduceBool)"),
    (_L + r"decide\s*\+\s*native" + _R, "`decide +native` trusts compiled code"),
    (_L + r"native\s*:=\s*true" + _R, "`decide (config := {native := true})` trusts compiled code"),
    (_L + r"(?:Lean\.)?ofReduce(?:Bool|Nat)" + _R, "`ofReduceBool` trusts compiled code"),
    (_L + r"(?:Lean\.)?(?:reduceBool|reduceNat|trustCompiler)" + _R, "compiler-trusting primitives"),
    (_L + r"implemented_by" + _R, "`implemented_by` swaps in unchecked code"),
    (_L + r"extern" + _R, "`extern` swaps in unchecked code"),
    (_L + r"unsafe" + _R, "`unsafe` code is not checked by the kernel"),
    (r"#exit" + _R, "`#exit` stops checking early"),
    (r"#eval" + _R, "`#eval` runs code while checking"),
    (_L + r"run_(?:cmd|tac|elab|meta)" + _R, "`run_cmd`/`run_tac` run code while checking"),
    (_L + r"(?:builtin_)?initialize" + _R, "`initialize` runs code"),
    (_L + r"elab(?:_rules)?" + _R, "`elab` defines new elaborators"),
    (_L + r"macro(?:_rules)?" + _R, "`macro` rewrites syntax"),
    (_L + r"syntax" + _R, "`syntax` changes the grammar"),
    (_L + r"declare_syntax_cat" + _R, "`declare_syntax_cat` changes the grammar"),
    (_L + r"notation3?" + _R, "`notation` changes what text means"),
    (
        r"(?m)^[ \t]*(?:@\[[^\]]*\][ \t]*)?(?:(?:local|scoped)[ \t]+)?(?:infixl?|infixr|prefix|postfix)" + _R,
        "`infix`/`prefix`/`postfix` change what text means",
    ),
    (_L + r"open\s+private" + _R, "`open private` reaches private declarations"),
    (_L + r"set_option\s+debug\.", "`set_option debug.*` can switch checks off"),
    (_L + r"(?:apply|exact|rw)\?", "`apply?`/`exact?`/`rw?` are searches, not proofs"),
)

# Forbidden before the target theorem, at command position: they can change what the statement's text means.
_COMMAND_START = r"(?m)^[ \t]*(?:@\[[^\]]*\][ \t]*)*(?:(?:private|protected|noncomputable|local|scoped)[ \t]+)*"
BEFORE_TARGET: tuple[tuple[str, str], ...] = (
    (r"(?m)^[ \t]*(?:@\[[^\]]*\][ \t]*)*(?:local|scoped)" + _R, "local/scoped declarations"),
    (_COMMAND_START + r"instance" + _R, "an `instance`"),
    (_L + r"deriving\s+instance" + _R, "`deriving instance`"),
    (r"@\[[^\]]*" + _L + r"instance" + _R, "an `instance` attribute"),
    (_COMMAND_START + r"attribute" + _R, "`attribute`"),
    (_COMMAND_START + r"namespace" + _R, "`namespace`"),
    (_COMMAND_START + r"section" + _R, "`section`"),
    (_COMMAND_START + r"open" + _R, "`open`"),
    (_COMMAND_START + r"export" + _R, "`export`"),
    (_COMMAND_START + r"variable" + _R, "`variable`"),
    (_COMMAND_START + r"universe" + _R, "`universe`"),
    (_COMMAND_START + r"set_option(?!\s+(?:maxHeartbeats|maxRecDepth|synthInstance\.maxHeartbeats)\s)", "`set_option`"),
)

_FORBIDDEN = tuple((re.compile(pattern), why) for pattern, why in FORBIDDEN)
_BEFORE_TARGET = tuple((re.compile(pattern), why) for pattern, why in BEFORE_TARGET)
_LINE = re.compile(r"(?m)^.*$")
_IMPORT = re.compile(r"(?m)^[ \t]*import[ \t]+(\S+)[ \t]*$")
_ANY_IMPORT = re.compile(r"(?m)^[ \t]*import" + _R)
_DROPPED_COMMAND = re.compile(r"(?m)^[ \t]*#(?:print|check)" + _R + r".*$")
_HELPER_NAME = re.compile(
    r"(?m)^[ \t]*(?:@\[[^\]]*\][ \t]*)*(?:(?:private|protected|noncomputable|nonrec|partial)[ \t]+)*"
    r"(?:theorem|lemma|def|abbrev|instance|structure|class|inductive|opaque)[ \t]+([^\s(){}\[\]:,⦃⦄]+)"
)
_TARGET_DECL = (
    r"(?m)^[ \t]*(?:@\[[^\]]*\][ \t]*)*(?:(?:private|protected)[ \t]+)?(?:theorem|lemma)[ \t]+{name}(?=[\s(\[{{:⦃])"
)
_NAMED_THEOREM = re.compile(
    r"(?m)^[ \t]*(?:@\[[^\]]*\][ \t]*)*(?:(?:private|protected)[ \t]+)?(?:theorem|lemma)[ \t]+([^\s(){}\[\]:,⦃⦄]+)"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_'.!?]*")
_OPEN = {"(": ")", "[": "]", "{": "}", "⦃": "⦄", "⟨": "⟩"}
_CLOSE = set(_OPEN.values())


@dataclass(frozen=True)
class Violation:
    rule: str
    start: int
    end: int

    def message(self, code: str) -> LeanMessage:
        return LeanMessage(
            severity="error",
            data=f"rejected by the integrity policy: {self.rule}",
            pos=offset_to_pos(code, self.start),
            end_pos=offset_to_pos(code, self.end),
            source="policy",
        )


@dataclass(frozen=True)
class Segment:
    """Command lines [first, last] (1-based) come from code starting at (code_line, code_col)."""

    first_line: int
    last_line: int
    code_line: int | None  # None: text the model did not write (the imposed statement)
    first_col_shift: int = 0  # column shift on the segment's first line
    first_col_min: int = 0  # on the first line, columns before this are not the model's text


@dataclass
class PositionMap:
    segments: list[Segment] = field(default_factory=list)
    header_lines: int = 0  # lines of `compiled` before the command (header + separator)

    def to_code(self, pos: Pos | None) -> Pos | None:
        if pos is None:
            return None
        for seg in self.segments:
            if seg.first_line <= pos.line <= seg.last_line:
                if seg.code_line is None or (pos.line == seg.first_line and pos.column < seg.first_col_min):
                    return None
                line = seg.code_line + (pos.line - seg.first_line)
                column = pos.column + (seg.first_col_shift if pos.line == seg.first_line else 0)
                return Pos(line, max(column, 0))
        return None

    def to_compiled(self, pos: Pos | None) -> Pos | None:
        return Pos(pos.line + self.header_lines, pos.column) if pos else None


@dataclass
class Composed:
    """What the policy produced: the command for Lean (checked in the header's environment) and how to read it."""

    command: str
    target: str | None  # the theorem whose axioms are checked (None: check every named theorem)
    theorems: list[str]
    positions: PositionMap
    violations: list[Violation]


def offset_to_pos(text: str, offset: int) -> Pos:
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    return Pos(line, offset - (text.rfind("\n", 0, offset) + 1))


def pos_to_offset(text: str, pos: Pos) -> int:
    lines = text.split("\n")
    if pos.line < 1:
        return 0
    if pos.line > len(lines):
        return len(text)
    return sum(len(line) + 1 for line in lines[: pos.line - 1]) + min(pos.column, len(lines[pos.line - 1]))


def header_parts(header: str) -> tuple[list[str], str]:
    """Split a header into its imported modules and the rest (options, `open`s), comments removed."""
    blanked = blank_comments_and_strings(header, strings=False)
    imports = _IMPORT.findall(blanked)
    rest_lines = [line for line in blanked.split("\n") if not _IMPORT.match(line)]
    rest = "\n".join(line.rstrip() for line in rest_lines).strip("\n")
    return imports, re.sub(r"\n{3,}", "\n\n", rest)


def _blank_range(chars: list[str], start: int, end: int) -> None:
    for k in range(start, end):
        if chars[k] != "\n":
            chars[k] = " "


def _find_assign(blanked: str, start: int) -> int | None:
    """Offset just after the first `:=` at bracket depth 0 from `start` (where the proof starts).

    None when there is none, or when a line at depth 0 starts with `|` first (equation-compiler style proofs
    have no single `:=` to split at)."""
    depth = 0
    line_start = True
    for k in range(start, len(blanked)):
        c = blanked[k]
        if c == "\n":
            line_start = True
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth = max(0, depth - 1)
        elif depth == 0 and c == ":" and blanked.startswith(":=", k):
            return k + 2
        elif depth == 0 and c == "|" and line_start:
            return None
        if not c.isspace():
            line_start = False
    return None


def _clean(text: str) -> str:
    """Whitespace-only lines become empty: no line moves, and no column of a kept line moves."""
    return "\n".join(line if line.strip() else "" for line in text.split("\n"))


def _covered_open(line: str, opened: set[str]) -> bool:
    names = line.split()[1:]
    return bool(names) and all(name in opened for name in names)


def apply_text_policy(code: str, header: str) -> tuple[str, str, list[Violation]]:
    """Return (`code` with dropped lines blanked to spaces, the same with comments and strings blanked,
    violations); all keep `code`'s offsets.

    Dropped: lines repeating the request header (its imports, its `open`s, its `set_option`s) and `#print` /
    `#check` lines. Any other `import` and every forbidden token is a violation."""
    blanked = blank_comments_and_strings(code)
    kept = list(code)
    scan = list(blanked)
    imports, _ = header_parts(header)
    header_blanked = blank_comments_and_strings(header, strings=False)
    header_lines = {line.strip() for line in header_blanked.split("\n") if line.strip()}
    opened = {name for line in header_lines if line.startswith("open ") for name in line.split()[1:]}
    violations: list[Violation] = []

    def drop(start: int, end: int) -> None:
        _blank_range(kept, start, end)
        _blank_range(scan, start, end)

    for match in _LINE.finditer(blanked):
        line = match.group(0).strip()
        if not line:
            continue
        repeats_header = line in header_lines and line.startswith(("open", "set_option"))
        imported = _IMPORT.match(line)
        if (
            repeats_header
            or (imported and imported.group(1) in imports)
            or (re.match(r"open\s", line) and _covered_open(line, opened))
        ):
            drop(match.start(), match.end())
    for match in _DROPPED_COMMAND.finditer("".join(scan)):
        drop(match.start(), match.end())
    text = "".join(scan)
    for match in _ANY_IMPORT.finditer(text):
        end = text.find("\n", match.start())
        violations.append(
            Violation("`import` outside the request header", match.start(), len(text) if end < 0 else end)
        )
    for pattern, why in _FORBIDDEN:
        for match in pattern.finditer(text):
            start = match.start() + (len(match.group(0)) - len(match.group(0).lstrip()))
            violations.append(Violation(why, start, match.end()))
    return "".join(kept), text, violations


def compose(code: str, *, header: str, formal_statement: str | None) -> Composed:
    """Apply the text policy and build the command Lean checks in the header's environment."""
    kept, blanked, violations = apply_text_policy(code, header)
    theorems = [m.group(1) for m in _NAMED_THEOREM.finditer(blanked)]
    whole = PositionMap([Segment(1, kept.count("\n") + 1, 1)])

    if formal_statement is None:
        if not theorems:
            violations.append(Violation("the code declares no named theorem or lemma to check", 0, 0))
        return Composed(_clean(kept), None, theorems, whole, _sorted(violations))

    statement = parse_statement(formal_statement)
    name = statement.name
    decls = list(re.finditer(_TARGET_DECL.format(name=re.escape(name)), blanked))
    if not decls:
        violations.append(Violation(f"the code has no `theorem {name}` (the requested theorem, with its name)", 0, 0))
        return Composed(_clean(kept), name, theorems, whole, _sorted(violations))
    for decl in decls[1:]:
        violations.append(Violation(f"`{name}` is declared more than once", decl.start(), decl.end()))
    decl = decls[0]
    before = blanked[: decl.start()]
    for pattern, why in _BEFORE_TARGET:
        for match in pattern.finditer(before):
            start = match.start() + (len(match.group(0)) - len(match.group(0).lstrip()))
            violations.append(Violation(f"{why} before the target theorem can change its meaning", start, match.end()))
    statement_idents = set(_IDENT.findall(blank_comments_and_strings(statement.head)))
    statement_idents |= {part for ident in list(statement_idents) for part in ident.split(".")}
    for match in _HELPER_NAME.finditer(before):
        helper = match.group(1)
        if helper in statement_idents or helper.rsplit(".", 1)[-1] in statement_idents:
            violations.append(
                Violation(f"helper `{helper}` shadows a name used in the statement", match.start(1), match.end(1))
            )
    assign = _find_assign(blanked, decl.end())
    if assign is None:
        violations.append(
            Violation(f"cannot find the `:=` that starts the proof of `{name}`", decl.start(), decl.end())
        )
        return Composed(_clean(kept), name, theorems, whole, _sorted(violations))

    helpers = _clean(kept[: decl.start()])
    body = _clean(kept[assign:])
    head = statement.head
    h_lines = helpers.count("\n")  # helpers end at a line start: the head starts on line h_lines + 1
    last_head_line = h_lines + head.count("\n") + 1
    head_last_len = len(head) - (head.rfind("\n") + 1)
    body_pos = offset_to_pos(kept, assign)
    segments = []
    if h_lines:
        segments.append(Segment(1, h_lines, 1))
    if last_head_line > h_lines + 1:
        segments.append(Segment(h_lines + 1, last_head_line - 1, None))
    segments.append(
        Segment(
            last_head_line,
            last_head_line + body.count("\n"),
            body_pos.line,
            first_col_shift=body_pos.column - head_last_len,
            first_col_min=head_last_len,
        )
    )
    return Composed(helpers + head + body, name, theorems, PositionMap(segments), _sorted(violations))


def _sorted(violations: list[Violation]) -> list[Violation]:
    seen: set[tuple[str, int]] = set()
    out = []
    for v in sorted(violations, key=lambda v: (v.start, v.rule)):
        if (v.rule, v.start) not in seen:
            seen.add((v.rule, v.start))
            out.append(v)
    return out


_AXIOMS_ANSWER = re.compile(r"^'(?P<name>.+?)' depends on axioms: \[(?P<axioms>.*)\]\s*$", re.S)
_NO_AXIOMS_ANSWER = re.compile(r"^'(?P<name>.+?)' does not depend on any axioms\s*$", re.S)


def parse_axioms_answer(data: str) -> tuple[str, list[str]] | None:
    """Read Lean's `#print axioms` answer: (name, axioms), or None if `data` is not that message."""
    match = _AXIOMS_ANSWER.match(data.strip())
    if match:
        axioms = [a.strip() for a in match.group("axioms").replace("\n", " ").split(",") if a.strip()]
        return match.group("name"), axioms
    match = _NO_AXIOMS_ANSWER.match(data.strip())
    if match:
        return match.group("name"), []
    return None
