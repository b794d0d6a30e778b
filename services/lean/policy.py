"""The integrity policy before Lean: the text policy and the imposed statement (docs/lean.md, "How a check goes").

The text policy is defence in depth and a fast, explained `rejected` for what is obviously not an honest proof;
what decides a pass is Lean's kernel (the checker's later steps), not these rules. It reads the code as Lean's own
lexer does (`leantext.lex`; code it cannot be sure to read as Lean does is rejected) and runs on the blanked text,
which keeps every offset, so a violation's position is right in the model's original text. Dropped lines (the
request header's imports, `#print`/`#check`) are emptied, not removed, so line numbers never move.

The text Lean compiles is composed, never trusted: the model's declarations before its target theorem (helper
lemmas, and a pasted file's own `set_option`/`open` lines) as one command, then the requested statement exactly as
the request gave it (`parse_statement(...).head`) and the model's proof body (everything after the `:=` of its
own target) as a second command. `PositionMap` maps Lean's positions in both (they share one coordinate system)
back to the model's code.

The request's header gets a policy of its own (`header_violations`): it is sent to Lean as a command, so it may
hold only imports, `open`s, allowed `set_option`s, `universe` and sections.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice

from services.lean.protocol import LeanMessage, Pos
from services.leantext import (
    DECLARATION_KEYWORDS,
    ID_FIRST,
    ID_REST,
    IDENTIFIER,
    MAX_GUILLEMET_NAME,
    Declaration,
    blank_comments_and_strings,
    declarations,
    is_id_first,
    is_id_rest,
    lex,
    parse_statement,
)

STANDARD_AXIOMS = frozenset({"propext", "Classical.choice", "Quot.sound"})
# Module roots that `import Mathlib` already brings in: a pasted file's `import Mathlib.Tactic` adds nothing.
COVERED_BY_MATHLIB = ("Mathlib", "Aesop", "Batteries", "Lean", "Std", "Qq", "ProofWidgets", "Plausible", "Init")
MAX_VIOLATIONS = 25  # reported per check (finding them all is linear; rendering each costs a pass over the code)
# Longer code is refused before any reading: the longest published proof in our data is about 70 000 characters.
MAX_CODE_CHARS = 400_000

# Left/right boundaries of a Lean token: identifiers hold letters (Unicode ones too), digits, `_`, `'`, `!`, `?`.
_L = r"(?<![\w'!?])"
_R = r"(?![\w'!?])"

# `#` commands (Lean, Batteries, Mathlib, Plausible, ProofWidgets). `#` followed by anything else is a term:
# Mathlib's `#s` / `#{x ∈ s | p x}` (`Finset.card`), `#[…]` arrays.
HASH_COMMANDS = frozenset(
    {
        "eval", "exit", "print", "check", "check_failure", "reduce", "synth", "guard_msgs", "guard", "guard_expr",
        "guard_hyp", "guard_target", "help", "lint", "find", "simp", "dsimp", "norm_num", "conv", "whnf", "whnfR",
        "explode", "where", "time", "count_heartbeats", "version", "test", "sample", "html", "widget", "leansearch",
        "loogle", "moogle", "statesearch", "find_home", "minimize_imports", "min_imports", "import_path",
        "list_linters", "instances", "kernel", "unfold", "push_neg", "norm_cast", "push_cast", "long_names",
        "long_instances", "trans_imports", "exact", "expr", "adaptation_note", "defeq_abuse", "info_trees",
        "compile", "reset", "show_unused", "parse", "eval!", "check_tactic", "check_simp", "discr_tree_key",
        "discr_tree_simp_key", "gen_injective_theorems", "print_axioms", "help_option", "sorry_axioms", "noncomputable",
    }
)  # fmt: skip


def _kw(words: str) -> str:
    r"""A regex for any of the `|`-separated keywords as a whole token. The left boundary is a lookbehind after
    the literal (`open(?<![\w'!?]open)`), so the regex engine can scan for the literal first."""
    alternatives = "|".join(f"{w}(?<![\\w'!?]{w})" for w in words.split("|"))
    return f"(?:{alternatives})(?![\\w'!?])"


# Forbidden anywhere in the code (outside comments and strings) as an identifier or a component of one: why.
FORBIDDEN_TOKENS: dict[str, str] = {
    "sorry": "`sorry` leaves the proof unfinished",
    "sorryAx": "`sorryAx` is sorry",
    "admit": "`admit` leaves the proof unfinished",
    "axiom": "a new `axiom` can prove anything",
    "native_decide": "`native_decide` trusts compiled code (axiom Lean.ofReduceBool)",
    "native": "`native` (`decide +native`, `native := …`) trusts compiled code",
    **dict.fromkeys(("ofReduceBool", "ofReduceNat"), "`ofReduceBool` trusts compiled code"),
    **dict.fromkeys(("reduceBool", "reduceNat", "trustCompiler"), "compiler-trusting primitives"),
    "implemented_by": "`implemented_by` swaps in unchecked code",
    "extern": "`extern` swaps in unchecked code",
    "unsafe": "`unsafe` code is not checked by the kernel",
    **dict.fromkeys(("run_cmd", "run_tac", "run_elab", "run_meta"), "`run_cmd`/`run_tac` run code while checking"),
    "by_elab": "`by_elab` runs code while checking",
    **dict.fromkeys(("initialize", "builtin_initialize"), "`initialize` runs code"),
    **dict.fromkeys(("elab", "elab_rules"), "`elab` defines new elaborators"),
    **dict.fromkeys(("macro", "macro_rules"), "`macro` rewrites syntax"),
    "syntax": "`syntax` changes the grammar",
    "declare_syntax_cat": "`declare_syntax_cat` changes the grammar",
    **dict.fromkeys(
        ("simproc", "dsimproc", "simproc_decl", "dsimproc_decl", "builtin_simproc", "builtin_dsimproc"),
        "`simproc`/`dsimproc` run code in `simp`",
    ),
    **dict.fromkeys(("notation", "notation3"), "`notation` changes what text means"),
    **dict.fromkeys(
        ("infix", "infixl", "infixr", "prefix", "postfix"), "`infix`/`prefix`/`postfix` change what text means"
    ),
    **dict.fromkeys(("apply?", "exact?", "rw?"), "`apply?`/`exact?`/`rw?` are searches, not proofs"),
    **dict.fromkeys(("include", "omit"), "`include`/`omit` bring `variable`s into a declaration"),
}
# Forbidden anywhere in the code, spanning more than one token: (regex, why).
FORBIDDEN: tuple[tuple[str, str], ...] = (
    (r"`", "quotations and name literals (`` ` ``) are meta-programming"),
    (_kw("open") + r"\s+private" + _R, "`open private` reaches private declarations"),
    (_kw("set_option") + r"\s+debug\.", "`set_option debug.*` can switch checks off"),
)

# Code-running entry points, refused even inside comments and strings: after a syntax error Lean's error recovery
# resumes at positions of its choosing (character by character, also inside a string literal or identifier), so
# text that is a comment or string to the first reading can still be parsed as a command. None of these occurs in
# the comments or strings of the published proofs in the test data.
CODE_RUNNING = (
    "run_cmd", "run_tac", "run_elab", "run_meta", "by_elab", "#eval", "elab", "elab_rules", "simproc", "dsimproc",
    "simproc_decl", "initialize", "command_elab", "term_elab", "addDecl", "addDeclWithoutChecking", "skipKernelTC",
    "implemented_by", "extern", "ofReduceBool", "native_decide", "TacticM", "TermElabM", "CommandElabM", "MetaM",
    "CoreM", "RuleTac", "CommandElab", "TermElab", "unsafe",
)  # fmt: skip

# Identifier components that belong to meta-programming (elaborators, the environment, IO): forbidden anywhere.
# Names that ordinary mathematics also uses (`Expr`, `Name`, `Lean`, `Tactic`) are not listed: a name does nothing
# by itself, only the entry points above run code.
META_NAMES = frozenset(
    {
        "Elab", "Meta", "Parser", "PrettyPrinter", "Syntax", "Environment", "Kernel", "Compiler",
        "IO", "EIO", "BaseIO", "MetaM", "TermElabM", "TacticM", "CommandElabM", "CoreM", "MacroM", "Macro",
        "Qq", "addDecl", "addAndCompile", "addDeclarationRanges", "addDeclWithoutChecking", "evalTactic",
        "withOptions", "skipKernelTC", "Declaration", "ConstantInfo", "mkConst", "mkApp", "unsafeCast", "unsafeIO",
        "unsafeBaseIO", "unsafeEIO", "ptrAddrUnsafe", "dbgTrace", "dbg_trace", "panic", "mkIdent",
        "instantiateMVars", "EnvExtension", "PersistentEnvExtension", "RuleTac", "Simproc", "DSimproc",
        "CommandElab", "TermElab", "setEnv", "modifyEnv",
    }
)  # fmt: skip
# Identifier components read as meta-programming by their shape: an `_`-separated word, a prefix or a suffix.
# (String tests, not a regex: a regex alternation tries every word at every character of a long component.)
_META_WORDS = frozenset({"elab", "elabs", "parser", "parsers", "macro", "delab", "unexpander", "extension"})
_META_PREFIXES = ("builtin_", "register_", "declare_")
_META_SUFFIXES = ("Elab", "Elaborator", "Parser", "Extension")


def _meta_component(part: str) -> bool:
    return (
        part.endswith(_META_SUFFIXES)
        or part.startswith(_META_PREFIXES)
        or ("_" in part and not _META_WORDS.isdisjoint(part.split("_")))
        or part in _META_WORDS
    )


# Attributes a helper may carry; any other (`command_elab`, `tactic`, `init`, `*_parser`, `instance`,
# `default_instance`, `to_additive`, `csimp`, norm_num/positivity extensions, `aesop` — whose `tactic` rule
# builder, also chosen by default for a tactic-typed declaration, runs the declaration as a tactic, …) is rejected.
SAFE_ATTRIBUTES = frozenset(
    {
        "simp", "simps", "reducible", "irreducible", "semireducible", "inline", "noinline", "specialize", "ext",
        "symm", "refl", "trans", "congr", "mono", "gcongr", "elab_as_elim", "nolint", "push_cast",
        "norm_cast", "field_simps", "fun_prop", "continuity", "measurability", "bound", "nontriviality",
        "pp_nodot", "match_pattern", "deprecated", "inherit_doc", "local", "scoped", "simp_arith",
    }
)  # fmt: skip

# Options a proof may set before its target (file top, `… in`) and a request header may set. They tune effort,
# naming hygiene, linters and how much printing shows; none can make two different statements print or check alike.
# (In the proof body, `set_option … in` may name any option but `debug.*`: it scopes only the proof.)
ALLOWED_OPTIONS = re.compile(
    r"(?:maxHeartbeats|maxRecDepth|synthInstance\.maxHeartbeats|synthInstance\.maxSize|tactic\.hygienic"
    r"|linter\.[\w.]+|pp\.(?:numericTypes|funBinderTypes|letVarTypes"
    r"|piBinderTypes|fullNames|explicit|universes|natLit|coercions\.types|structureInstanceTypes|instanceTypes"
    r"|proofs\.withType|unicode\.fun|fieldNotation))\Z"
)
_OPTION_LINE = re.compile(r"set_option\s+([^\s]+)\s+\S+")

# Forbidden before the target theorem, as tokens anywhere: they can change what the statement's text means or
# which declaration is checked. (`open`, `instance`, sections and allowed options are fine there: the statement
# is imposed and its elaborated type compared with the requested one's.)
BEFORE_TARGET: dict[str, str] = {
    "local": "local/scoped declarations",  # not after `open` (`open scoped X` is fine)
    "scoped": "local/scoped declarations",
    "deriving": "`deriving`",
    "attribute": "`attribute`",
    "namespace": "`namespace`",
    "export": "`export`",
    "variable": "`variable`",
    "mutual": "`mutual`",
}

# In the proof body (after the target's `:=`): tokens that end the declaration and start new commands.
# `open … in` and `set_option … in` are also tactics and terms, so only those forms are allowed; a bare `end`
# line may close a section opened before the target.
_OPEN_IN_REST = r"(?:[ \t]+(?!in" + _R + r")[\w.'!?«»]+){1,16}[ \t]+in" + _R
_SET_OPTION_IN_REST = r"[ \t]+[\w.«»]+[ \t]+\S+[ \t]+in" + _R
# Keywords that start a command: in the proof body they would end the declaration.
BODY_COMMANDS = frozenset(
    {
        "theorem", "lemma", "def", "abbrev", "instance", "example", "opaque", "structure", "class", "inductive",
        "coinductive", "namespace", "section", "universe", "variable", "attribute", "export", "mutual",
        "noncomputable", "private", "protected", "local", "scoped", "nonrec", "deriving", "alias", "proof_wanted",
        "irreducible_def", "add_decl_doc", "unif_hint", "initialize_simps_projections", "assert_not_exists",
        "library_note", "suppress_compilation", "compile_inductive", "recall", "end",
    }
)  # fmt: skip
_BODY_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"@\["), "an attribute in the proof body starts a new declaration"),
    (re.compile(_kw("open") + r"(?!" + _OPEN_IN_REST + r")"), "`open` in the proof body (only `open … in`)"),
    (
        re.compile(_kw("set_option") + r"(?!" + _SET_OPTION_IN_REST + r")"),
        "`set_option` in the proof body (only `… in`)",
    ),
)

_FORBIDDEN = tuple((re.compile(pattern), why) for pattern, why in FORBIDDEN)
# An identifier as Lean's `identFn` reads it (parts `«…»` or idFirst idRest*, joined by `.`), and its parts.
_IDENTIFIER = IDENTIFIER
_IDENTIFIER_PARTS = re.compile(f"«([^»]*)»|([{ID_FIRST}][{ID_REST}]*)")
_LINE = re.compile(r"(?m)^.*$")
# A line holding one of these is never dropped: it could open or close a comment, string or name (a string's
# opening quote survives blanking).
_DELIMITER = re.compile(r"[\"«»`]|--|/-|-/")
_HEADERISH_LINE = re.compile(r"(?m)^[ \t]*(?:import|open|set_option)(?![\w'!?]).*$")
_IMPORT = re.compile(r"(?m)^[ \t]*import[ \t]+(\S+)[ \t]*$")
_ANY_IMPORT = re.compile(_kw("import"))
_DROPPED_COMMAND = re.compile(r"(?m)^[ \t]*#(?:print|check)" + _R + r".*$")
_HASH_COMMAND = re.compile(r"#([^\W\d][\w!?']*)")
_SET_OPTION = re.compile(_kw("set_option") + r"(?:\s+([^\s]+))?")
_OPEN_BEFORE = re.compile(_kw("open") + r"\s*\Z")
_END_LINE_REST = re.compile(r"[ \t]*(?:[\w.«»'!?]+[ \t]*)?(?:\n|\Z)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_'.!?]*")
# Lines right above the target that belong to its command: they scope or decorate the next declaration.
_TARGET_PREFIX_LINE = re.compile(
    r"(?:set_option\s+(\S+)\s+\S+\s+in|open\s+(?!private\b)[^\n]*\s+in|@\[[^\]\n]*\])" + r"(?:\s+|\Z)"
)
_ATTRIBUTE_LIST = re.compile(r"@\[|" + _kw("attribute") + r"\s*\[")
_MAX_ATTRIBUTE_LIST = 2000  # characters; a longer `@[…]` is no attribute list a proof needs
_BRACKET = re.compile(r"[\[\]]")
# Each scan stops after this many findings: scans run in text order, so the first `MAX_VIOLATIONS` overall are
# among them, and a pathological input costs no more than an ordinary one.
_KEEP = 2 * MAX_VIOLATIONS
_BINDING_KEYWORDS = frozenset({"let", "have", "letI", "haveI"})
_OPEN = {"(": ")", "[": "]", "{": "}", "⦃": "⦄", "⟨": "⟩"}
_CLOSE = set(_OPEN.values())

# The request header, line by line (comments removed): what may be sent to Lean as the header's command.
_HEADER_LINES = (
    re.compile(r"open(?:\s+scoped)?(?:\s+(?!private\b|in\b)[\w.«»'!?]+(?:\s*\([\w.«»'!?\s]*\))?)+"),
    re.compile(r"open\s+[\w.«»'!?]+\s+hiding(?:\s+[\w.«»'!?]+)+"),
    re.compile(
        r"open\s+[\w.«»'!?]+\s+renaming\s+[\w.«»'!?]+\s*(?:→|->)\s*[\w.«»'!?]+"
        r"(?:\s*,\s*[\w.«»'!?]+\s*(?:→|->)\s*[\w.«»'!?]+)*"
    ),
    re.compile(r"universe(?:\s+[\w.«»'!?]+)+"),
    re.compile(r"(?:noncomputable\s+)?section(?:\s+[\w.«»'!?]+)?"),
    re.compile(r"end(?:\s+[\w.«»'!?]+)?"),
)
_COMMAND_KEYWORDS = BODY_COMMANDS | {
    "set_option", "open", "import", "in", "run_cmd", "run_elab", "run_meta", "elab", "macro", "syntax",
    "notation", "infix", "infixl", "infixr", "prefix", "postfix", "initialize", "axiom", "example",
}  # fmt: skip
HEADER_ALLOWED = (
    "`import` lines (first), `open` (also `scoped`, `hiding`, `renaming`), `set_option` of an allowed option, "
    "`universe`, `section`/`noncomputable section`/`end`, and `open …`/`set_option …` lines ending in `in` that "
    "scope another allowed line"
)


@dataclass(frozen=True)
class Violation:
    rule: str
    start: int
    end: int
    in_header: bool = False  # found in the request's header, not in the code (no position in the code)

    def message(self, code: str) -> LeanMessage:
        if self.in_header:
            return LeanMessage(
                severity="error", data=f"rejected by the integrity policy: header: {self.rule}", source="policy"
            )
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

    @property
    def axioms_commands(self) -> list[str]:
        """`#print axioms` for the target (or every named theorem), each naming its declaration unambiguously."""
        names = [self.target] if self.target else self.theorems
        return [print_axioms_command(name) for name in names]


def print_axioms_command(name: str) -> str:
    """`#print axioms _root_.<name>`: the declaration the code made at the top level, never one that an `open`
    namespace makes `<name>` resolve to (`sqrt_nonneg` under `open Real` is `Real.sqrt_nonneg`). Lean answers
    with the resolved name (`'<name>' depends on axioms: …`), which the caller compares with `name`."""
    return f"#print axioms _root_.{name.removeprefix('_root_.')}"


def offset_to_pos(text: str, offset: int) -> Pos:
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    return Pos(line, offset - (text.rfind("\n", 0, offset) + 1))


def header_parts(header: str) -> tuple[list[str], str]:
    """Split a header into its imported modules and the rest (options, `open`s), comments removed."""
    blanked = blank_comments_and_strings(header, strings=False)
    imports = _IMPORT.findall(blanked)
    rest_lines = [line for line in blanked.split("\n") if not _IMPORT.match(line)]
    rest = "\n".join(line.rstrip() for line in rest_lines).strip("\n")
    return imports, re.sub(r"\n{3,}", "\n\n", rest)


def import_covered(module: str, loaded: list[str]) -> bool:
    """Whether an environment importing `loaded` already holds `module` (`import Mathlib` holds `Mathlib.Tactic`,
    `Aesop`, `Batteries`, …)."""
    if module in loaded or any(module.startswith(m + ".") for m in loaded):
        return True
    return "Mathlib" in loaded and module.split(".")[0] in COVERED_BY_MATHLIB


def option_allowed(name: str) -> bool:
    """Options a proof may set before its target and a header may set (`ALLOWED_OPTIONS`)."""
    return ALLOWED_OPTIONS.match(name) is not None


def header_violations(header: str) -> list[Violation]:
    """The policy on the request's header, which is sent to Lean as a command of its own (on `/v1/verify` and
    `/v1/prove` alike): only `HEADER_ALLOWED` lines; anything else is named. Whether the imports are loaded by the
    worker is the checker's question (a 400, not a verdict)."""
    lexed = lex(header)
    found = [Violation(f"{problem.why}", problem.start, problem.end, True) for problem in lexed.problems]
    found += _code_running_in_text(header, lexed.blanked, in_header=True)
    if lexed.blanked != lex(header, strings=False).blanked:
        found.append(Violation("a header holds no string or character literal", 0, 0, True))
    for pattern, why in _FORBIDDEN:
        found += [Violation(why, m.start(), m.end(), True) for m in pattern.finditer(lexed.blanked)]
    for start, end, parts in _identifiers(lexed.blanked):
        rule = _token_rule(parts)
        if rule:
            found.append(Violation(rule, start, end, True))
    lines = [(m.start(), m.group(0).strip()) for m in _LINE.finditer(lexed.blanked) if m.group(0).strip()]
    seen_command = False
    for index, (start, line) in enumerate(lines):
        if _IMPORT.match(line):
            if seen_command:
                found.append(Violation(f"`{line}` comes after a command (imports come first)", start, start, True))
            continue
        seen_command = True
        scoped_line = re.fullmatch(r"(.*\S)\s+in", line)
        if scoped_line:
            following = lines[index + 1][1] if index + 1 < len(lines) else ""
            if not _header_line_allowed(scoped_line.group(1)) or not following or _IMPORT.match(following):
                found.append(Violation(f"`{line}` scopes no allowed header line after it", start, start, True))
            continue
        if not _header_line_allowed(line):
            found.append(
                Violation(f"`{_clip(line)}` is not allowed (a header holds {HEADER_ALLOWED})", start, start, True)
            )
    return found


def _header_line_allowed(line: str) -> bool:
    option = _OPTION_LINE.fullmatch(line)
    if option:
        return option_allowed(option.group(1))
    if not any(pattern.fullmatch(line) for pattern in _HEADER_LINES):
        return False
    # the names an allowed line lists must not start another command on the same line (`open Real set_option …`)
    words = re.findall(r"[\w.«»'!?]+", line)[1:]
    return not any(word in _COMMAND_KEYWORDS for word in words if word not in ("section", "scoped"))


def _clip(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"


def _blank_lines(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with the disjoint, ordered `spans` (each within one line) replaced by spaces."""
    if not spans:
        return text
    pieces: list[str] = []
    done = 0
    for start, end in spans:
        pieces += (text[done:start], " " * (end - start))
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def _find_assign(blanked: str, start: int) -> int | None:
    """Offset just after the `:=` that starts the proof, from `start` (just after the target's name).

    That is the first `:=` at bracket depth 0 that does not bind a `let`/`have` of the statement itself
    (`theorem t : let x := 5; x = 5 := …`). None when there is none, or when a line at depth 0 starts with a
    `|` alternative (`| pat => …`) first: equation-compiler proofs have no single `:=` to split at. A `|` line
    that is no alternative (`|x| ≤ 1` continuing the statement) is fine."""
    n = len(blanked)
    depth = 0
    bindings = 0  # `let`/`have` seen at depth 0 whose `:=` is still to come
    line_start = True
    k = start
    while k < n:
        c = blanked[k]
        if c == "«":  # a name: whatever it holds (`:=`, `/-`) is not syntax
            close = blanked.find("»", k + 1, k + 2 + MAX_GUILLEMET_NAME)
            if close == -1:
                return None
            k = close + 1
            line_start = False
            continue
        if c == "\n":
            line_start = True
            k += 1
            continue
        if is_id_first(c):
            j = k + 1
            while j < n and (
                is_id_rest(blanked[j]) or (blanked[j] == "." and j + 1 < n and is_id_first(blanked[j + 1]))
            ):
                j += 1
            if depth == 0 and blanked[k:j] in _BINDING_KEYWORDS:
                bindings += 1
            k = j
            line_start = False
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth = max(0, depth - 1)
        elif depth == 0 and c == ":" and blanked.startswith(":=", k):
            if bindings == 0:
                return k + 2
            bindings -= 1
            k += 2
            line_start = False
            continue
        elif depth == 0 and c == "|" and line_start and _is_alternative(blanked, k):
            return None
        if not c.isspace():
            line_start = False
        k += 1
    return None


def _is_alternative(blanked: str, k: int) -> bool:
    """Whether the line starting with `|` at `k` is a match alternative: a `=>` at its own bracket depth 0."""
    end = blanked.find("\n", k)
    line = blanked[k : len(blanked) if end == -1 else end]
    depth = 0
    for j, c in enumerate(line):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and line.startswith("=>", j):
            return True
    return False


def _clean(text: str) -> str:
    """Whitespace-only lines become empty: no line moves, and no column of a kept line moves."""
    return "\n".join(line if line.strip() else "" for line in text.split("\n"))


def _covered_open(line: str, opened: set[str]) -> bool:
    names = line.split()[1:]
    return bool(names) and all(name in opened for name in names)


def _parts(name: str) -> list[str]:
    """The components of an identifier as `_IDENTIFIER` reads it, without `«»`."""
    return [a or b for a, b in _IDENTIFIER_PARTS.findall(name)] if "«" in name else name.split(".")


def _identifiers(blanked: str) -> list[tuple[int, int, list[str]]]:
    """Every identifier of the (blanked) code as Lean's `identFn` reads it: (start, end, components without «»)."""
    parts_of: dict[str, list[str]] = {}  # one split per distinct name
    out = []
    for match in _IDENTIFIER.finditer(blanked):
        name = match.group(0)
        parts = parts_of.get(name)
        if parts is None:
            parts = parts_of[name] = _parts(name)
        out.append((match.start(), match.end(), parts))
    return out


def _closing_bracket(blanked: str, opening: int) -> int | None:
    """The `]` that closes the `[` at `opening`, if it is at most `_MAX_ATTRIBUTE_LIST` characters on."""
    depth = 0
    for bracket in _BRACKET.finditer(blanked, opening, opening + _MAX_ATTRIBUTE_LIST + 2):
        depth += 1 if bracket.group(0) == "[" else -1
        if depth == 0:
            return bracket.start()
    return None


def _attribute_violations(blanked: str) -> list[Violation]:
    """Attributes outside `SAFE_ATTRIBUTES` (elaborators, parsers, initializers, instances, aesop rules, …)."""
    found: list[Violation] = []
    lists = list(_ATTRIBUTE_LIST.finditer(blanked))
    for index, match in enumerate(lists):
        end = _closing_bracket(blanked, match.end() - 1)
        following = lists[index + 1].start() if index + 1 < len(lists) else len(blanked)
        if end is None or end - match.end() > _MAX_ATTRIBUTE_LIST or end > following:
            found.append(Violation("an attribute list that does not close where expected", match.start(), match.end()))
        else:
            for item in blanked[match.end() : end].split(","):
                words = [w for w in re.split(r"[\s←]+", item.strip().lstrip("-")) if w]
                words = words[1:] if words and words[0] in ("local", "scoped") else words
                if not words or words[0] not in SAFE_ATTRIBUTES:
                    name = words[0] if words else "(empty)"
                    found.append(Violation(f"attribute `{name}` is not allowed in a proof", match.start(), end + 1))
        if len(found) > _KEEP:
            break
    return found


def _code_running_in_text(text: str, blanked: str, *, in_header: bool = False) -> list[Violation]:
    """`CODE_RUNNING` words inside comments and strings (or inside a longer identifier): the code rules judge
    them where they are plain code tokens."""
    present = [word for word in CODE_RUNNING if word in text]  # a substring search first: most code has none
    if not present:
        return []
    found: list[Violation] = []
    for match in re.finditer("(?:" + "|".join(re.escape(word) for word in present) + ")" + _R, text):
        if len(found) > _KEEP:
            break
        start, end = match.span()
        if blanked[start:end] == text[start:end] and not (start and is_id_rest(text[start - 1])):
            continue  # a plain token: the rules below see it
        found.append(
            Violation(
                f"`{match.group(0)}` is refused anywhere, even in a comment, string or longer name (after a syntax "
                "error Lean's error recovery can read such text as code)",
                start,
                end,
                in_header,
            )
        )
    return found


def apply_text_policy(code: str, header: str, *, raw_scan: bool = True) -> tuple[str, str, list[Violation]]:
    """Return (`code` with dropped lines blanked to spaces, the same with comments and strings blanked,
    violations); all keep `code`'s offsets.

    Dropped: imports the header already covers (`import Mathlib.Tactic` under `import Mathlib`), lines repeating
    the request header (its `open`s, its `set_option`s) and `#print` / `#check` lines. Any other `import` and
    every forbidden token is a violation, and so is any place where the lexer cannot be sure it reads the code as
    Lean does (`leantext.lex`)."""
    lexed = lex(code)
    blanked = lexed.blanked
    dropped: list[tuple[int, int]] = []  # whole lines of plain code, blanked at the end (no copy when none)
    imports, _ = header_parts(header)
    header_blanked = blank_comments_and_strings(header, strings=False)
    header_lines = {line.strip() for line in header_blanked.split("\n") if line.strip()}
    opened = {name for line in header_lines if line.startswith("open ") for name in line.split()[1:]}
    violations = [Violation(problem.why, problem.start, problem.end) for problem in lexed.problems]
    if raw_scan:
        violations += _code_running_in_text(code, blanked)

    def drop(start: int, end: int) -> None:
        # Only a line that is plain code from end to end: one holding (or starting inside) a comment or string
        # would take a delimiter with it and change how Lean reads the rest. Such a line stays, and the rules
        # below judge it (`#check … /-` is then a forbidden `#` command).
        if code[start:end] != blanked[start:end] or _DELIMITER.search(code, start, end):
            return
        dropped.append((start, end))

    for match in _HEADERISH_LINE.finditer(blanked):
        line = match.group(0).strip()
        repeats_header = line in header_lines and line.startswith(("open", "set_option"))
        imported = _IMPORT.match(line)
        if imported and not import_covered(imported.group(1), imports):
            violations.append(
                Violation(
                    f"`import {imported.group(1)}` is not loaded by the request header (put imports in `header`)",
                    match.start(),
                    match.end(),
                )
            )
        elif repeats_header or imported or (re.match(r"open\s", line) and _covered_open(line, opened)):
            drop(match.start(), match.end())
    for match in _DROPPED_COMMAND.finditer(_blank_lines(blanked, dropped)):
        drop(match.start(), match.end())
    dropped.sort()
    text = _blank_lines(blanked, dropped)
    reported_imports = {v.start for v in violations}
    violations += _first(
        Violation("`import` outside the request header", match.start(), _line_end(text, match.start()))
        for match in _ANY_IMPORT.finditer(text)
        if text.rfind("\n", 0, match.start()) + 1 not in reported_imports
    )
    for pattern, why in _FORBIDDEN:
        violations += _first(Violation(why, match.start(), match.end()) for match in pattern.finditer(text))
    violations += _first(
        Violation(
            f"`#{match.group(1)}` is a command (`#` commands run, print or hide things; not in a proof)",
            match.start(),
            match.end(),
        )
        for match in _HASH_COMMAND.finditer(text)
        if match.group(1) in HASH_COMMANDS or match.group(1).rstrip("!?") in HASH_COMMANDS
    )
    # Each distinct name is judged once (`findall` lists them in C); only a refused name is looked for again.
    refused = {name for name in set(_IDENTIFIER.findall(text)) if _token_rule(_parts(name))}
    if refused:
        violations += _first(
            Violation(_token_rule(parts) or "", start, end)
            for start, end, parts in _identifiers(text)
            if text[start:end] in refused
        )
    violations += _attribute_violations(text)
    return _blank_lines(code, dropped), text, violations


def _first(violations: Iterable[Violation]) -> list[Violation]:
    return list(islice(violations, _KEEP))


def _line_end(text: str, offset: int) -> int:
    end = text.find("\n", offset)
    return len(text) if end < 0 else end


def _token_rule(parts: list[str]) -> str | None:
    """Why an identifier with these components is refused, if it is."""
    for part in parts:
        if part in FORBIDDEN_TOKENS:
            return FORBIDDEN_TOKENS[part]
        if part in META_NAMES or _meta_component(part):
            return f"`{part}` is meta-programming (elaborators, environment, IO)"
    return None


def _recheck_sent(commands: list[str], header: str, known: list[Violation]) -> list[Violation]:
    """The policy again, on the exact text Lean will get: dropping lines and splitting at `:=` must not have
    changed what is code (fail closed if it reads differently, whatever the reason). Only what the first
    reading did not already report is added."""
    reported = {violation.rule for violation in known}
    for command in commands:
        if not command.strip():
            continue
        _, _, again = apply_text_policy(command, header, raw_scan=False)
        new = [violation for violation in again if violation.rule not in reported]
        if new:
            return [Violation(f"the code reads differently once composed for Lean: {new[0].rule}", 0, 0)]
    return []


def _split_prefix(before: str) -> int:
    """Where the helpers end: the trailing whitespace, comments, attribute lines and `set_option … in` /
    `open … in` lines right above the target go with the target's command (they scope or decorate it). The split
    is at a line start; 0 when nothing but those precedes the target."""
    split = len(before)
    while split > 0:
        line_start = before.rfind("\n", 0, split - 1) + 1 if split > 1 else 0
        line = before[line_start:split].strip()
        prefix = _TARGET_PREFIX_LINE.match(line) if line else None
        if line and not (
            prefix and prefix.end() == len(line) and (not prefix.group(1) or option_allowed(prefix.group(1)))
        ):
            break
        split = line_start
    if not before[:split].strip():
        return 0
    return split


def _before_target_violations(
    before: str, identifiers: list[tuple[int, int, list[str]]], statement_idents: set[str]
) -> list[Violation]:
    found = []
    for start, end, _ in identifiers:
        if end > len(before):
            break
        why = BEFORE_TARGET.get(before[start:end])
        if why is None or (
            why == "local/scoped declarations" and _OPEN_BEFORE.search(before, max(0, start - 64), start)
        ):
            continue  # not a keyword, or `open scoped X`
        found.append(Violation(f"{why} before the target theorem can change its meaning", start, end))
    for match in _SET_OPTION.finditer(before):
        name = match.group(1) or ""
        if not option_allowed(name) and not name.startswith("debug."):  # `debug.*` has its own rule
            found.append(
                Violation(
                    f"`set_option {name}` before the target theorem (allowed there: effort, hygiene, linter and "
                    "printing options)",
                    match.start(),
                    match.end(),
                )
            )
    for declaration in declarations(before, DECLARATION_KEYWORDS):  # a helper of any kind
        helper = declaration.name
        if helper and (helper in statement_idents or helper.rsplit(".", 1)[-1] in statement_idents):
            found.append(
                Violation(
                    f"helper `{helper}` shadows a name used in the statement",
                    declaration.name_start,
                    declaration.name_end,
                )
            )
    return found


def _body_violations(blanked: str, assign: int, identifiers: list[tuple[int, int, list[str]]]) -> list[Violation]:
    found = []
    why = "a command after the proof (the proof body must not end the declaration)"
    for start, end, _ in identifiers:
        word = blanked[start:end]
        if start < assign or word not in BODY_COMMANDS:
            continue
        if word == "end":
            if not _bare_end_line(blanked, start):
                found.append(Violation("`end` in the proof body (only a bare `end` line)", start, end))
        else:
            found.append(Violation(why, start, end))
    for pattern, rule in _BODY_PATTERNS:
        for match in pattern.finditer(blanked, assign):
            found.append(Violation(rule, match.start(), match.end()))
    return found


def _bare_end_line(blanked: str, start: int) -> bool:
    """`end` (or `end Name`) alone on its line, at column 0: it closes a section opened before the target."""
    return (start == 0 or blanked[start - 1] == "\n") and _END_LINE_REST.match(blanked, start + 3) is not None


def compose(code: str, *, header: str, formal_statement: str | None) -> Composed:
    """Apply the text policy (to the code and the header) and build the commands Lean checks in the header's
    environment."""
    if len(code) > MAX_CODE_CHARS:
        too_long = Violation(f"the code is longer than {MAX_CODE_CHARS} characters (no proof is that long)", 0, 0)
        return Composed(code, None, [], PositionMap([Segment(1, code.count("\n") + 1, 1)]), [too_long])
    kept, blanked, violations = apply_text_policy(code, header)
    violations = header_violations(header) + violations
    declared = list(declarations(blanked))
    theorems = [d.name for d in declared if d.name]
    whole = PositionMap([Segment(1, kept.count("\n") + 1, 1)])

    if formal_statement is None:
        if not theorems:
            violations.append(Violation("the code declares no named theorem or lemma to check", 0, 0))
        violations = _sorted(violations) or _recheck_sent([_clean(kept)], header, violations)
        return Composed(_clean(kept), None, theorems, whole, _capped(violations))

    statement = parse_statement(formal_statement)
    name = statement.name
    decl = _target_declaration(blanked, declared, name)
    if decl is None:
        violations.append(Violation(f"the code has no `theorem {name}` (the requested theorem, with its name)", 0, 0))
        return Composed(_clean(kept), name, theorems, whole, _capped(_sorted(violations)))
    # Any other mention of the target's name (a second declaration of it under any keyword, layout, namespace,
    # `_root_.`, `«…»`, a doc comment swallowing it, a self-reference) is rejected.
    mention = re.compile(_L + re.escape(_name_parts(name)[-1]) + _R)
    name_at = decl.name_start
    identifiers = _identifiers(blanked)
    mentions: dict[int, bool] = {}  # judged once per distinct name
    for start, end, parts in identifiers:
        if id(parts) not in mentions:
            mentions[id(parts)] = any(mention.search(part) for part in parts)
        if mentions[id(parts)] and start != name_at:
            violations.append(Violation(f"`{name}` is declared or named more than once", start, end))
            if len(violations) > 4 * _KEEP:
                break
    before = blanked[: decl.start]
    statement_idents = set(_IDENT.findall(blank_comments_and_strings(statement.head)))
    statement_idents |= {part for ident in list(statement_idents) for part in ident.split(".")}
    violations += _before_target_violations(before, identifiers, statement_idents)
    assign = _find_assign(blanked, decl.name_end)
    if assign is None:
        violations.append(
            Violation(f"cannot find the `:=` that starts the proof of `{name}`", decl.start, decl.name_end)
        )
        return Composed(_clean(kept), name, theorems, whole, _capped(_sorted(violations)))
    violations += _body_violations(blanked, assign, identifiers)

    split = _split_prefix(before)
    helpers_command = _clean(kept[:split])
    helpers = helpers_command + _clean(kept[split : decl.start])
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
    # the re-read only matters for code that is otherwise accepted
    violations = _sorted(violations) or _recheck_sent([helpers_command, target_command], header, violations)
    return Composed(
        helpers + head + body,
        name,
        theorems,
        PositionMap(segments),
        _capped(violations),
        helpers_command=helpers_command if blanked[:split].strip() else "",
        target_command=target_command if blanked[:split].strip() else helpers + head + body,
    )


def _target_declaration(blanked: str, declared: list[Declaration], name: str) -> Declaration | None:
    """The theorem named `name` whose declaration begins its line (only indentation before its attributes and
    modifiers), as `Declaration` whose `start` is that line's start: the imposed statement is composed at a line
    start, and what precedes the line is the helpers' command."""
    for declaration in declared:
        if declaration.name == name:
            line_start = blanked.rfind("\n", 0, declaration.start) + 1
            if not blanked[line_start : declaration.start].strip(" \t"):
                return declaration._replace(start=line_start)
    return None


def _name_parts(name: str) -> list[str]:
    parts = re.findall(r"«([^»]*)»|([^.«»]+)", name)
    return [a or b for a, b in parts] or [name]


def _sorted(violations: list[Violation]) -> list[Violation]:
    seen: set[tuple[str, int]] = set()
    out = []
    for v in sorted(violations, key=lambda v: (not v.in_header, v.start, v.rule)):
        if (v.rule, v.start) not in seen:
            seen.add((v.rule, v.start))
            out.append(v)
    return out


def _capped(violations: list[Violation]) -> list[Violation]:
    return violations[:MAX_VIOLATIONS]


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
