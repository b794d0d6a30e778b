"""The integrity policy before Lean (DESIGN §5 steps 1-2): the text policy and the imposed statement.

Everything runs on `blank_comments_and_strings(code)`, which keeps every offset, so a violation's position is
right in the model's original text. Dropped lines (repeats of the request header, `#print`/`#check`) are
emptied, not removed, so line numbers never move.

The text Lean compiles is composed, never trusted: the model's declarations before its target theorem (helper
lemmas) as one command, then the requested statement exactly as the request gave it (`parse_statement(...).head`)
and the model's proof body (everything after the `:=` of its own target) as a second command. `PositionMap` maps
Lean's positions in both (they share one coordinate system) back to the model's code.

The lexer (`leantext.lex`) follows Lean's own, and code it cannot be sure to read as Lean does is rejected.
Keywords are matched as tokens anywhere, not only at a line start; the checker's type check (`checker.py`) does
not rely on any of this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.lean.protocol import LeanMessage, Pos
from services.leantext import blank_comments_and_strings, is_id_first, is_id_rest, lex, parse_statement

STANDARD_AXIOMS = frozenset({"propext", "Classical.choice", "Quot.sound"})

# Left/right boundaries of a Lean token: identifiers hold letters (Unicode ones too), digits, `_`, `'`, `!`, `?`.
_L = r"(?<![\w'!?])"
_R = r"(?![\w'!?])"

# Forbidden anywhere in the code: each (regex, why).
FORBIDDEN: tuple[tuple[str, str], ...] = (
    (_L + r"sorry" + _R, "`sorry` leaves the proof unfinished"),
    (_L + r"sorryAx" + _R, "`sorryAx` is sorry"),
    (_L + r"admit" + _R, "`admit` leaves the proof unfinished"),
    (_L + r"axiom" + _R, "a new `axiom` can prove anything"),
    (_L + r"native_decide" + _R, "`native_decide` trusts compiled code (axiom Lean.ofReduceBool)"),
    (_L + r"native" + _R, "`native` (`decide +native`, `native := …`) trusts compiled code"),
    (_L + r"decide\s*(?:\(|\+|-(?!-)|←)", "`decide` with options (`+native`, `(config := …)`) is not allowed"),
    (_L + r"(?:Lean\.)?ofReduce(?:Bool|Nat)" + _R, "`ofReduceBool` trusts compiled code"),
    (_L + r"(?:Lean\.)?(?:reduceBool|reduceNat|trustCompiler)" + _R, "compiler-trusting primitives"),
    (_L + r"implemented_by" + _R, "`implemented_by` swaps in unchecked code"),
    (_L + r"extern" + _R, "`extern` swaps in unchecked code"),
    (_L + r"unsafe" + _R, "`unsafe` code is not checked by the kernel"),
    (r"#exit" + _R, "`#exit` stops checking early"),
    (r"#eval" + _R, "`#eval` runs code while checking"),
    (r"#(?!\[)(?=[^\W\d])", "`#` commands (`#guard_msgs`, `#eval`, …) are not allowed in a proof"),
    (r"`", "quotations and name literals (`` ` ``) are meta-programming"),
    (r"\$", "`$` antiquotations are meta-programming"),
    (_L + r"run_(?:cmd|tac|elab|meta)" + _R, "`run_cmd`/`run_tac` run code while checking"),
    (_L + r"by_elab" + _R, "`by_elab` runs code while checking"),
    (_L + r"(?:builtin_)?initialize" + _R, "`initialize` runs code"),
    (_L + r"elab(?:_rules)?" + _R, "`elab` defines new elaborators"),
    (_L + r"macro(?:_rules)?" + _R, "`macro` rewrites syntax"),
    (_L + r"syntax" + _R, "`syntax` changes the grammar"),
    (_L + r"declare_syntax_cat" + _R, "`declare_syntax_cat` changes the grammar"),
    (_L + r"notation3?" + _R, "`notation` changes what text means"),
    (_L + r"(?:infixl?|infixr|prefix|postfix)" + _R, "`infix`/`prefix`/`postfix` change what text means"),
    (_L + r"open\s+private" + _R, "`open private` reaches private declarations"),
    (_L + r"set_option\s+debug\.", "`set_option debug.*` can switch checks off"),
    (_L + r"(?:apply|exact|rw)\?", "`apply?`/`exact?`/`rw?` are searches, not proofs"),
    (_L + r"(?:include|omit)" + _R, "`include`/`omit` bring `variable`s into a declaration"),
)

# Identifier components that belong to meta-programming (elaborators, the environment, IO): forbidden anywhere.
META_NAMES = frozenset(
    {
        "Lean", "Elab", "Meta", "Parser", "PrettyPrinter", "Syntax", "Environment", "Kernel", "Compiler",
        "IO", "EIO", "BaseIO", "MetaM", "TermElabM", "TacticM", "CommandElabM", "CoreM", "MacroM", "Macro",
        "Qq", "addDecl", "addAndCompile", "addDeclarationRanges", "evalTactic", "withOptions", "skipKernelTC",
        "Declaration", "ConstantInfo", "mkConst", "mkApp", "unsafeCast", "unsafeIO", "unsafeBaseIO", "unsafeEIO",
        "ptrAddrUnsafe", "DecideConfig", "dbgTrace", "dbg_trace", "panic", "mkIdent", "instantiateMVars",
        "Expr", "Name", "Tactic", "EnvExtension", "PersistentEnvExtension",
    }
)  # fmt: skip
_META_COMPONENT = re.compile(
    r"(?:^|_)(?:elab|elabs|parser|parsers|macro|delab|unexpander|extension)(?:_|$)|^(?:builtin|register|declare)_"
    r"|Elab(?:orator)?$|Parser$|Extension$"
)
# Attributes a helper may carry; any other (`command_elab`, `tactic`, `init`, `*_parser`, `instance`,
# `default_instance`, `to_additive`, `csimp`, norm_num/positivity extensions, …) is rejected.
SAFE_ATTRIBUTES = frozenset(
    {
        "simp", "simps", "reducible", "irreducible", "semireducible", "inline", "noinline", "specialize", "ext",
        "symm", "refl", "trans", "congr", "mono", "gcongr", "elab_as_elim", "nolint", "aesop", "push_cast",
        "norm_cast", "field_simps", "fun_prop", "continuity", "measurability", "bound", "nontriviality",
        "pp_nodot", "match_pattern", "deprecated", "inherit_doc", "local", "scoped", "simp_arith",
    }
)  # fmt: skip

_ALLOWED_OPTION = r"(?:maxHeartbeats|maxRecDepth|synthInstance\.maxHeartbeats)"
# Forbidden before the target theorem, as tokens anywhere: they can change what the statement's text means.
BEFORE_TARGET: tuple[tuple[str, str], ...] = (
    (_L + r"(?:local|scoped)" + _R, "local/scoped declarations"),
    (_L + r"instance" + _R, "an `instance`"),
    (_L + r"deriving" + _R, "`deriving`"),
    (_L + r"attribute" + _R, "`attribute`"),
    (_L + r"namespace" + _R, "`namespace`"),
    (_L + r"section" + _R, "`section`"),
    (_L + r"end" + _R, "`end`"),
    (_L + r"open" + _R, "`open`"),
    (_L + r"export" + _R, "`export`"),
    (_L + r"variable" + _R, "`variable`"),
    (_L + r"universe" + _R, "`universe`"),
    (_L + r"mutual" + _R, "`mutual`"),
    (_L + r"set_option(?!\s+" + _ALLOWED_OPTION + r"\s)", "`set_option`"),
)

# In the proof body (after the target's `:=`): tokens that end the declaration and start new commands.
# `open … in` and `set_option … in` are also tactics and terms, so only those forms are allowed.
_OPEN_IN_REST = r"(?:\s+(?!in" + _R + r")[\w.'!?«»]+)+\s+in" + _R
_SET_OPTION_IN_REST = r"\s+[\w.«»]+\s+\S+\s+in" + _R
BODY_COMMANDS: tuple[tuple[str, str], ...] = (
    (
        _L + r"(?:theorem|lemma|def|abbrev|instance|example|opaque|structure|class|inductive|coinductive|namespace"
        r"|section|end|universe|variable|attribute|export|mutual|noncomputable|private|protected|local|scoped"
        r"|deriving|alias|proof_wanted|irreducible_def|add_decl_doc|unif_hint|initialize_simps_projections"
        r"|assert_not_exists|library_note|suppress_compilation|compile_inductive|recall)" + _R,
        "a command after the proof (the proof body must not end the declaration)",
    ),
    (r"@\[", "an attribute in the proof body starts a new declaration"),
    (_L + r"open" + _R + r"(?!" + _OPEN_IN_REST + r")", "`open` in the proof body (only `open … in`)"),
    (_L + r"set_option" + _R + r"(?!" + _SET_OPTION_IN_REST + r")", "`set_option` in the proof body (only `… in`)"),
)

_FORBIDDEN = tuple((re.compile(pattern), why) for pattern, why in FORBIDDEN)
_BEFORE_TARGET = tuple((re.compile(pattern), why) for pattern, why in BEFORE_TARGET)
_BODY_COMMANDS = tuple((re.compile(pattern), why) for pattern, why in BODY_COMMANDS)
_LINE = re.compile(r"(?m)^.*$")
_IMPORT = re.compile(r"(?m)^[ \t]*import[ \t]+(\S+)[ \t]*$")
_ANY_IMPORT = re.compile(_L + r"import" + _R)
_DROPPED_COMMAND = re.compile(r"(?m)^[ \t]*#(?:print|check)" + _R + r".*$")
_DECL_KEYWORDS = r"(?:theorem|lemma|def|abbrev|instance|structure|class|inductive|opaque|axiom)"
_HELPER_NAME = re.compile(_L + _DECL_KEYWORDS + r"\s+([^\s(){}\[\]:,⦃⦄]+)")
_TARGET_DECL = (
    r"(?m)^[ \t]*(?:@\[[^\]]*\][ \t]*)*(?:(?:private|protected)[ \t]+)?(?:theorem|lemma)\s+{name}(?=[\s(\[{{:⦃])"
)
_NAMED_THEOREM = re.compile(_L + r"(?:theorem|lemma)\s+([^\s(){}\[\]:,⦃⦄]+)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_'.!?]*")
_PREFIX = re.compile(r"(?:\s|set_option\s+" + _ALLOWED_OPTION + r"\s+\d+\s+in" + _R + r")*\Z")
_ATTRIBUTE_LIST = re.compile(r"@\[|" + _L + r"attribute\s*\[")
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
    """What the policy produced: the commands for Lean and how to read Lean's answers.

    With a requested statement Lean gets two commands: `helpers_command` (the model's declarations before its
    target; "" when there are none) on the header's environment, then `target_command` (the imposed statement and
    the model's body) on the environment that returns. A helper therefore cannot reach into the statement's text
    (an unterminated comment, string or `«` name ends with an error in its own command). `target_command` starts
    with as many newlines as `helpers_command` has, so both are in the coordinates of `command` (the two joined,
    what `CheckResult.compiled` shows after the header)."""

    command: str
    target: str | None  # the theorem whose axioms are checked (None: check every named theorem)
    theorems: list[str]
    positions: PositionMap
    violations: list[Violation]
    helpers_command: str = ""
    target_command: str = ""

    @property
    def commands(self) -> list[str]:
        if self.target is None or not self.target_command:
            return [self.command]
        return [c for c in (self.helpers_command, self.target_command) if c]


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
    k = start - 1
    while k + 1 < len(blanked):
        k += 1
        c = blanked[k]
        if c == "«":  # a name: whatever it holds (`:=`, `/-`) is not syntax
            close = blanked.find("»", k + 1)
            if close == -1:
                return None
            k = close
            line_start = False
            continue
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


def _identifiers(blanked: str) -> list[tuple[int, int, list[str]]]:
    """Every identifier of the (blanked) code as Lean's `identFn` reads it: (start, end, components without «»)."""
    out = []
    i, n = 0, len(blanked)
    while i < n:
        c = blanked[i]
        if not (c == "«" or is_id_first(c)):
            i += 1
            continue
        start, parts = i, []
        while i < n:
            if blanked[i] == "«":
                end = blanked.find("»", i + 1)
                end = n if end == -1 else end
                parts.append(blanked[i + 1 : end])
                i = end + 1
            elif is_id_first(blanked[i]):
                j = i + 1
                while j < n and is_id_rest(blanked[j]):
                    j += 1
                parts.append(blanked[i:j])
                i = j
            else:
                break
            if i + 1 < n and blanked[i] == "." and (blanked[i + 1] == "«" or is_id_first(blanked[i + 1])):
                i += 1
                continue
            break
        out.append((start, i, parts))
    return out


def _attribute_violations(blanked: str) -> list[Violation]:
    """Attributes outside `SAFE_ATTRIBUTES` (elaborators, parsers, initializers, instances, …)."""
    found = []
    for match in _ATTRIBUTE_LIST.finditer(blanked):
        depth, k = 1, match.end()
        while k < len(blanked) and depth:
            depth += {"[": 1, "]": -1}.get(blanked[k], 0)
            k += 1
        inner = blanked[match.end() : k - 1]
        for item in re.split(r",", inner):
            words = [w for w in re.split(r"[\s←]+", item.strip().lstrip("-")) if w]
            words = words[1:] if words and words[0] in ("local", "scoped") else words
            if not words or words[0] not in SAFE_ATTRIBUTES:
                name = words[0] if words else "(empty)"
                found.append(Violation(f"attribute `{name}` is not allowed in a proof", match.start(), k))
    return found


def apply_text_policy(code: str, header: str) -> tuple[str, str, list[Violation]]:
    """Return (`code` with dropped lines blanked to spaces, the same with comments and strings blanked,
    violations); all keep `code`'s offsets.

    Dropped: lines repeating the request header (its imports, its `open`s, its `set_option`s) and `#print` /
    `#check` lines. Any other `import` and every forbidden token is a violation, and so is any place where the
    lexer cannot be sure it reads the code as Lean does (`leantext.lex`)."""
    lexed = lex(code)
    blanked = lexed.blanked
    kept = list(code)
    scan = list(blanked)
    imports, _ = header_parts(header)
    header_blanked = blank_comments_and_strings(header, strings=False)
    header_lines = {line.strip() for line in header_blanked.split("\n") if line.strip()}
    opened = {name for line in header_lines if line.startswith("open ") for name in line.split()[1:]}
    violations = [Violation(problem.why, problem.start, problem.end) for problem in lexed.problems]

    def drop(start: int, end: int) -> None:
        # Only a line that is plain code from end to end: one holding (or starting inside) a comment or string
        # would take a delimiter with it and change how Lean reads the rest. Such a line stays, and the rules
        # below judge it (`#check … /-` is then a forbidden `#` command).
        if code[start:end] != blanked[start:end]:
            return
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
    for start, end, parts in _identifiers(text):
        for part in parts:
            if part in META_NAMES or _META_COMPONENT.search(part):
                violations.append(Violation(f"`{part}` is meta-programming (elaborators, environment, IO)", start, end))
                break
    violations += _attribute_violations(text)
    return "".join(kept), text, violations


def _recheck_sent(commands: list[str], header: str, known: list[Violation]) -> list[Violation]:
    """The policy again, on the exact text Lean will get: dropping lines and splitting at `:=` must not have
    changed what is code (fail closed if it reads differently, whatever the reason). Only what the first
    reading did not already report is added."""
    reported = {violation.rule for violation in known}
    for command in commands:
        if not command.strip():
            continue
        _, _, again = apply_text_policy(command, header)
        new = [violation for violation in again if violation.rule not in reported]
        if new:
            return [Violation(f"the code reads differently once composed for Lean: {new[0].rule}", 0, 0)]
    return []


def _split_prefix(before: str) -> int:
    """Where the helpers end: the trailing whitespace, comments and `set_option <heartbeats/depth> N in` lines
    before the target go with the target's command (the `in` scopes it), starting at a line start."""
    match = _PREFIX.search(before)
    if match is None or match.start() == 0 or not before[: match.start()].strip():
        return 0
    newline = before.find("\n", match.start())
    return len(before) if newline == -1 else newline + 1


def compose(code: str, *, header: str, formal_statement: str | None) -> Composed:
    """Apply the text policy and build the commands Lean checks in the header's environment."""
    kept, blanked, violations = apply_text_policy(code, header)
    theorems = [m.group(1) for m in _NAMED_THEOREM.finditer(blanked)]
    whole = PositionMap([Segment(1, kept.count("\n") + 1, 1)])

    if formal_statement is None:
        if not theorems:
            violations.append(Violation("the code declares no named theorem or lemma to check", 0, 0))
        violations = _sorted(violations) + _recheck_sent([_clean(kept)], header, violations)
        return Composed(_clean(kept), None, theorems, whole, violations)

    statement = parse_statement(formal_statement)
    name = statement.name
    decls = list(re.finditer(_TARGET_DECL.format(name=re.escape(name)), blanked))
    if not decls:
        violations.append(Violation(f"the code has no `theorem {name}` (the requested theorem, with its name)", 0, 0))
        return Composed(_clean(kept), name, theorems, whole, _sorted(violations))
    decl = decls[0]
    # Any other mention of the target's name (a second declaration of it under any keyword, layout, namespace,
    # `_root_.`, `«…»`, a doc comment swallowing it, a self-reference) is rejected.
    mention = re.compile(_L + re.escape(_name_parts(name)[-1]) + _R)
    name_at = decl.end() - len(name)
    for start, end, parts in _identifiers(blanked):
        if start != name_at and any(mention.search(part) for part in parts):
            violations.append(Violation(f"`{name}` is declared or named more than once", start, end))
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
    for pattern, why in _BODY_COMMANDS:
        for match in pattern.finditer(blanked, assign):
            violations.append(Violation(why, match.start(), match.end()))

    split = _split_prefix(before)
    helpers_command = _clean(kept[:split])
    helpers = helpers_command + _clean(kept[split : decl.start()])
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
    target_command = "\n" * helpers_command.count("\n") + helpers[len(helpers_command) :] + head + body
    violations = _sorted(violations) + _recheck_sent([helpers_command, target_command], header, violations)
    return Composed(
        helpers + head + body,
        name,
        theorems,
        PositionMap(segments),
        violations,
        helpers_command=helpers_command if blanked[:split].strip() else "",
        target_command=target_command if blanked[:split].strip() else helpers + head + body,
    )


def _name_parts(name: str) -> list[str]:
    parts = re.findall(r"«([^»]*)»|([^.«»]+)", name)
    return [a or b for a, b in parts] or [name]


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
