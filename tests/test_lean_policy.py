"""The text policy and the imposed statement, without a REPL."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.lean.policy import (
    MAX_CODE_CHARS,
    MAX_VIOLATIONS,
    compose,
    header_parts,
    header_violations,
    parse_axioms_answer,
    print_axioms_command,
)
from services.lean.protocol import Pos
from services.settings import DEFAULT_LEAN_HEADER
from tests.cpu_time import cpu_seconds

STATEMENT = "theorem t (a b : ℕ)\n    (h : a < b) :\n    a ≤ b := by sorry"


def rules(code: str, statement: str | None = STATEMENT) -> list[str]:
    return [v.rule for v in compose(code, header=DEFAULT_LEAN_HEADER, formal_statement=statement).violations]


def test_header_repeats_and_print_lines_are_dropped_without_moving_lines() -> None:
    code = (
        "import Mathlib\nimport Aesop\nset_option maxHeartbeats 400000\nopen Real Nat\n\n"
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  omega\n#print axioms t\n"
    )
    composed = compose(code, header=DEFAULT_LEAN_HEADER, formal_statement=STATEMENT)
    assert composed.violations == []
    assert "import" not in composed.command and "#print" not in composed.command
    assert composed.command.startswith("\n\n\n\n\ntheorem t (a b : ℕ)\n    (h : a < b) :\n    a ≤ b := by\n  omega")


@pytest.mark.parametrize(
    "code",
    [
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  -- no sorry here, and /- admit -/ neither\n  omega",
        'theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  have : "sorry" = "sorry" := rfl\n  omega',
        "set_option maxHeartbeats 400000 in\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  omega",
        "lemma helper (n : ℕ) : n ≤ n + 1 := by omega\n\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega",
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  have h_axiom_free : a ≤ b := h.le\n  exact h_axiom_free",
    ],
    ids=["comment", "string", "heartbeats-in", "helper-lemma", "identifier-containing-axiom"],
)
def test_clean_code_is_not_flagged(code) -> None:
    assert rules(code) == []


@pytest.mark.parametrize(
    ("code", "rule"),
    [
        ("theorem t (a b : ℕ) (h : a < b) : a ≤ b\n  | _ => sorry", "sorry"),
        ("theorem t (a b : ℕ) (h : a < b) : a ≤ b\n  | 0, _ => by omega", "cannot find the `:=`"),
        ("namespace Foo\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega", "`namespace`"),
        ("import Cheat\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega", "`import Cheat` is not loaded"),
        ("theorem t (a b : ℕ) (h : a < b) : a ≤ b := by decide (config := {native := true})", "`native`"),
        ("set_option pp.maxSteps 5\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega", "`set_option pp.maxSteps`"),
        ("set_option trace.Meta.synthInstance true in\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega", "`set_"),
    ],
    ids=[
        "sorry-in-equations",
        "equation-compiler",
        "namespace-before",
        "import",
        "native-config",
        "printing-option-that-hides",
        "option-not-allowed-before-target",
    ],
)
def test_violations(code, rule) -> None:
    assert any(rule in found for found in rules(code))


def test_violation_positions_are_in_the_original_text() -> None:
    code = "/- a comment\n   spanning lines -/\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  exact?"
    composed = compose(code, header=DEFAULT_LEAN_HEADER, formal_statement=STATEMENT)
    message = composed.violations[0].message(code)
    assert (message.pos, message.end_pos) == (Pos(4, 2), Pos(4, 8))


def test_positions_map_back_through_a_multi_line_imposed_statement() -> None:
    code = "lemma helper : True := trivial\n\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  omega\n  simp"
    composed = compose(code, header=DEFAULT_LEAN_HEADER, formal_statement=STATEMENT)
    lines = composed.command.split("\n")
    assert lines[2:7] == ["theorem t (a b : ℕ)", "    (h : a < b) :", "    a ≤ b := by", "  omega", "  simp"]
    positions = composed.positions
    assert positions.to_code(Pos(1, 6)) == Pos(1, 6)  # helper
    assert positions.to_code(Pos(4, 5)) is None  # inside the imposed statement
    assert positions.to_code(Pos(5, 4)) is None  # `a ≤ b` on the statement's last line
    assert positions.to_code(Pos(6, 2)) == Pos(4, 2)  # `omega`
    assert positions.to_code(Pos(7, 2)) == Pos(5, 2)  # `simp`
    # `by` follows `:=` on both sides, at different columns
    by_in_command = lines[4].index("by")
    by_in_code = code.split("\n")[2].index(":= by") + 3
    assert positions.to_code(Pos(5, by_in_command)) == Pos(3, by_in_code)


def test_plain_code_without_statement() -> None:
    composed = compose("theorem a : True := trivial", header="", formal_statement=None)
    assert composed.target is None and composed.theorems == ["a"] and composed.violations == []


def test_header_parts() -> None:
    imports, rest = header_parts(DEFAULT_LEAN_HEADER)
    assert imports == ["Mathlib", "Aesop"]
    assert rest == "set_option maxHeartbeats 400000\n\nopen BigOperators Real Nat Topology Rat"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            "'t' depends on axioms: [propext, Classical.choice, Quot.sound]",
            ("t", ["propext", "Classical.choice", "Quot.sound"]),
        ),
        (
            "'A.b' depends on axioms: [propext,\n Classical.choice,\n Quot.sound]",
            ("A.b", ["propext", "Classical.choice", "Quot.sound"]),
        ),
        ("'t' does not depend on any axioms", ("t", [])),
        ("unknown constant 't'", None),
        ("'t' depends on axioms: propext", None),
    ],
    ids=["standard", "wrapped", "none", "error", "malformed"],
)
def test_axioms_answer(data, expected) -> None:
    assert parse_axioms_answer(data) == expected


@pytest.mark.parametrize(
    "code",
    [
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  open Nat in\n  omega",
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  set_option maxRecDepth 1000 in\n  omega",
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  exact (open Nat in h.le)",
        "/-- the doc -/\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega",
        "lemma aux : True := trivial\n\n/-- doc -/\nset_option maxHeartbeats 400000 in\n"
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega",
        "@[simp] lemma aux (n : ℕ) : n + 0 = n := rfl\n\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega",
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  cases' le_total a b with h' h'' <;> omega",
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  -- `theorem` in a comment, #check too\n  omega",
    ],
    ids=["open-in-tactic", "set-option-in-tactic", "open-in-term", "doc-comment", "heartbeats-prefix", "simp-helper",
         "primes", "comment-mentions-commands"],
)  # fmt: skip
def test_legitimate_proofs_are_not_flagged(code) -> None:
    assert rules(code) == []


def test_helpers_and_target_are_separate_commands_in_one_coordinate_system() -> None:
    code = (
        "lemma aux : True := trivial\n\n-- note\nset_option maxHeartbeats 400000 in\n"
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  omega\n"
    )
    composed = compose(code, header=DEFAULT_LEAN_HEADER, formal_statement=STATEMENT)
    assert composed.violations == []
    assert composed.helpers_command == "lemma aux : True := trivial\n"
    assert composed.target_command.startswith("\n\n-- note\nset_option maxHeartbeats 400000 in\ntheorem t (a b : ℕ)\n")
    assert composed.commands == [composed.helpers_command, composed.target_command]
    # both commands are in the coordinates of `command` (what `compiled` shows)
    assert composed.command.split("\n")[4] == composed.target_command.split("\n")[4] == "theorem t (a b : ℕ)"
    assert composed.command.startswith(composed.helpers_command)
    # no helpers: one command
    alone = compose("theorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega", header="", formal_statement=STATEMENT)
    assert alone.helpers_command == "" and alone.commands == [alone.target_command]


@pytest.mark.parametrize(
    ("code", "rule"),
    [
        ("lemma aux : True := trivial local instance : LT ℕ := ⟨fun _ _ => True⟩\n" + STATEMENT[:-6] + " omega", "loc"),
        ("theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  omega\ntheorem\n  t' : True := trivial", "a command after"),
        ("theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  omega\nlemma «t» : True := trivial", "more than once"),
        ("theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  #guard_msgs in omega", "`#` commands"),
        ("theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  exact (IO.println \"\" |> fun _ => h.le)", "meta"),
        ("@[init] def x : Nat := 0\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega", "attribute `init`"),
        ("@[my_parser] def x : Nat := 0\ntheorem t (a b : ℕ) (h : a < b) : a ≤ b := by omega", "attribute"),
        ("theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  decide +native", "`native`"),
        ("theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  exact (by_elab pure (Lean.mkConst ``h))", "`by_elab`"),
    ],
    ids=["local-instance-mid-line", "body-theorem", "body-guillemet-name", "guard-msgs", "io", "init-attr",
         "parser-attr", "decide-native", "by-elab"],
)  # fmt: skip
def test_more_violations(code, rule) -> None:
    assert any(rule in found for found in rules(code)), rules(code)


HONEST = "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  omega\n"


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("open Real in\n" + HONEST, id="open-in-before-target"),
        pytest.param("open scoped BigOperators\n\n" + HONEST, id="open-scoped"),
        pytest.param("open Classical\n\n" + HONEST, id="open-classical"),
        pytest.param("open Finset (range sum_range_succ)\nopen Nat hiding add_comm\n\n" + HONEST, id="open-forms"),
        pytest.param("import Mathlib.Tactic\nimport Mathlib.Data.Real.Basic\n\n" + HONEST, id="covered-imports"),
        pytest.param("set_option linter.unusedVariables false\n\n" + HONEST, id="linter-option"),
        pytest.param(
            "set_option maxHeartbeats 0\nset_option maxRecDepth 100000\nset_option tactic.hygienic false\n"
            "set_option pp.numericTypes true\nset_option pp.funBinderTypes true\n\n" + HONEST,
            id="seed-prover-options",
        ),
        pytest.param("set_option linter.unusedTactic false in\n" + HONEST, id="option-in-before-target"),
        pytest.param("noncomputable section\n\n" + HONEST + "\nend\n", id="noncomputable-section"),
        pytest.param("section Helpers\nlemma aux : True := trivial\nend Helpers\n\n" + HONEST, id="section-end"),
        pytest.param("instance : Fact (1 < 2) := ⟨by norm_num⟩\n\n" + HONEST, id="helper-instance"),
        pytest.param(
            "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  exact Nat.le_of_lt $ h\n", id="dollar-application"
        ),
        pytest.param(
            "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  have : (3 : ℕ) ≤ 5 := by decide +kernel\n  omega\n",
            id="decide-kernel",
        ),
        pytest.param(
            "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n"
            "  have : (3 : ℕ) ≤ 5 := by decide (config := { kernel := true })\n  omega\n",
            id="decide-config",
        ),
        pytest.param("@[simp]\nlemma aux (n : ℕ) : n + 0 = n := rfl\n\n" + HONEST, id="simp-attribute-own-line"),
        pytest.param("@[simp]\n" + HONEST, id="simp-attribute-on-target"),
        pytest.param("nonrec theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  omega\n", id="nonrec"),
        pytest.param(
            "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  have Name : a ≤ b := h.le\n"
            "  have Expr : a ≤ b := Name\n  have Lean : a ≤ b := Expr\n  have Tactic : a ≤ b := Lean\n"
            "  exact Tactic\n",
            id="identifiers-expr-name-lean-tactic",
        ),
        pytest.param(
            "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  have : #(Finset.range 3) = 3 := by simp\n"
            "  have : #{x ∈ Finset.range 4 | x < 2} = 2 := by decide\n  omega\n",
            id="finset-card-notation",
        ),
        pytest.param(
            "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  have : ['\\n', 'a'].length = 2 := rfl\n  omega\n",
            id="char-literals",
        ),
        pytest.param(
            "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  omega\n\n#print axioms t\n", id="print-axioms-line"
        ),
        pytest.param(
            "import Mathlib\nimport Aesop\nset_option maxHeartbeats 400000\nopen BigOperators Real Nat Topology Rat\n"
            "open Polynomial Classical\n\n/-- the doc -/\n" + HONEST,
            id="whole-file",
        ),
    ],
)
def test_honest_constructs_pass_the_policy(code) -> None:
    assert rules(code) == []


def test_a_let_in_the_statement_is_not_where_the_proof_starts() -> None:
    statement = "theorem t2 : let x := 5; x = 5 := by sorry"
    code = "theorem t2 : let x := 5; x = 5 := by\n  intro x\n  rfl\n"
    composed = compose(code, header=DEFAULT_LEAN_HEADER, formal_statement=statement)
    assert composed.violations == []
    assert composed.target_command == "theorem t2 : let x := 5; x = 5 := by\n  intro x\n  rfl\n"
    have = "theorem t3 (n : ℕ) : have h : n = n := rfl; n + 0 = n :=\n  by simp\n"
    composed = compose(have, header="", formal_statement=have.replace(":=\n  by simp\n", ":= by sorry"))
    assert composed.violations == [] and composed.target_command.endswith(":=\n  by simp\n")


def test_a_continuation_line_starting_with_a_bar_is_not_an_equation() -> None:
    statement = "theorem t3 (x : ℝ) (h : x = 0) :\n    |x| ≤ 1 := by sorry"
    code = "theorem t3 (x : ℝ) (h : x = 0) :\n    |x| ≤ 1 := by\n  simp [h]\n"
    composed = compose(code, header=DEFAULT_LEAN_HEADER, formal_statement=statement)
    assert composed.violations == []
    assert composed.target_command == "theorem t3 (x : ℝ) (h : x = 0) :\n    |x| ≤ 1 := by\n  simp [h]\n"
    # a real alternative still has no single `:=` to split at
    equations = "theorem t3 (x : ℝ) (h : x = 0) :\n    |x| ≤ 1\n  | _ => by simp [h]\n"
    assert any("cannot find the `:=`" in r for r in rules(equations, statement))


def test_open_and_options_before_the_target_go_to_lean_before_the_imposed_statement() -> None:
    code = "open Real in\nset_option maxHeartbeats 800000 in\n@[simp]\n" + HONEST
    composed = compose(code, header=DEFAULT_LEAN_HEADER, formal_statement=STATEMENT)
    assert composed.violations == []
    # nothing but scoping lines precede the target: one command, the lines right above the imposed statement
    assert composed.commands == [composed.target_command]
    assert composed.target_command.startswith("open Real in\nset_option maxHeartbeats 800000 in\n@[simp]\ntheorem t")
    helper = "open Polynomial\nlemma aux : True := trivial\n\nopen Real in\n" + HONEST
    composed = compose(helper, header=DEFAULT_LEAN_HEADER, formal_statement=STATEMENT)
    assert composed.violations == []
    assert composed.helpers_command == "open Polynomial\nlemma aux : True := trivial\n"
    assert composed.target_command.lstrip("\n").startswith("open Real in\ntheorem t (a b : ℕ)")


def test_print_axioms_names_the_target_at_the_root() -> None:
    assert print_axioms_command("sqrt_nonneg") == "#print axioms _root_.sqrt_nonneg"
    assert print_axioms_command("_root_.Foo.bar") == "#print axioms _root_.Foo.bar"
    composed = compose(HONEST, header=DEFAULT_LEAN_HEADER, formal_statement=STATEMENT)
    assert composed.axioms_commands == ["#print axioms _root_.t"]
    plain = compose("theorem a : True := trivial\nlemma b : True := trivial", header="", formal_statement=None)
    assert plain.axioms_commands == ["#print axioms _root_.a", "#print axioms _root_.b"]


@pytest.mark.parametrize(
    "header",
    [
        DEFAULT_LEAN_HEADER,
        "import Mathlib\nimport Aesop\nset_option maxHeartbeats 0\nset_option maxRecDepth 1000\n"
        "set_option tactic.hygienic false\nopen BigOperators Real Nat Topology Rat\n\n",
        "import Mathlib\nimport Aesop\nset_option pp.numericTypes true\nset_option pp.funBinderTypes true\n"
        "set_option maxHeartbeats 0\nopen BigOperators Real Nat Topology Rat Classical Polynomial\n\n",
        "import Mathlib -- the library\n/- options -/\nset_option linter.all false\nopen scoped BigOperators\n"
        "open Finset (range)\nuniverse u v\nnoncomputable section\nopen Real in\nset_option maxRecDepth 2000",
        "",
    ],
    ids=["default", "seed-prover", "seed-prover-pp", "comments-and-forms", "empty"],
)
def test_allowed_headers(header) -> None:
    assert header_violations(header) == []


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("import Mathlib\nrun_cmd Lean.logInfo \"x\"", "`run_cmd Lean.logInfo"),
        ("import Mathlib\nset_option debug.skipKernelTC true", "`set_option debug.skipKernelTC true`"),
        ("import Mathlib\nset_option pp.maxSteps 10", "`set_option pp.maxSteps 10`"),
        ("import Mathlib\nopen Real\nimport Aesop", "`import Aesop` comes after a command"),
        ("import Mathlib\nopen Real in", "`open Real in` scopes no allowed header line"),
        ("import Mathlib\nnamespace Foo", "`namespace Foo`"),
        ("import Mathlib\nattribute [-simp] Nat.add_comm", "`attribute [-simp] Nat.add_comm`"),
        ("import Mathlib\nopen private foo in Nat", "`open private foo in Nat`"),
        ("import Mathlib\nvariable (x : ℕ)", "`variable (x : ℕ)`"),
        ("import Mathlib\ninstance : Inhabited ℕ := ⟨0⟩", "`instance"),
        ("import Mathlib\n-- run_cmd in a comment\nopen Real", "`run_cmd` is refused anywhere"),
        ("import Mathlib\nopen Real set_option pp.all true", "`open Real set_option pp.all true`"),
        ("import Mathlib\nopen Nat hiding add_comm instance", "`open Nat hiding add_comm instance`"),
    ],
    ids=["run-cmd", "debug-option", "hiding-printing-option", "late-import", "dangling-in", "namespace",
         "attribute", "open-private", "variable", "instance", "code-running-word-in-comment",
         "command-after-open-names", "command-after-hiding-names"],
)  # fmt: skip
def test_header_lines_outside_the_allow_list_are_named(header, named) -> None:
    found = header_violations(header)
    assert any(named in v.rule for v in found), [v.rule for v in found]
    assert all(v.in_header for v in found)
    composed = compose(HONEST, header=header, formal_statement=STATEMENT)
    message = composed.violations[0].message(HONEST)
    assert message.data.startswith("rejected by the integrity policy: header: ")
    assert message.pos is None and message.end_pos is None


def test_code_running_words_are_refused_even_in_comments_and_strings() -> None:
    """After a syntax error Lean's recovery can start a command anywhere, also inside a string literal."""
    for code in (
        HONEST + "-- note: run_cmd would be faster\n",
        'def s := "elab"\n' + HONEST,
        "theorem t (a b : ℕ) (h : a < b) : a ≤ b := by\n  have hrun_cmd : a ≤ b := h.le\n  exact hrun_cmd\n",
    ):
        assert any("is refused anywhere" in r for r in rules(code)), code
    # ordinary words in comments are fine
    assert rules(HONEST + "-- no sorry here, no axiom either; Lean's omega does it\n") == []


def test_violations_are_capped() -> None:
    code = HONEST + "\n".join(["  sorry"] * 500)
    assert len(compose(code, header=DEFAULT_LEAN_HEADER, formal_statement=STATEMENT).violations) == MAX_VIOLATIONS


_POLICY_ALPHABET = "ab t:=()[]{}«»'\"`\\-/#@|$\n .0e"
_WORDS = [
    "theorem t", "lemma", "open", "set_option", "in", "sorry", "end", "section", "@[simp]", ":= by", "let",
    "instance", "import Mathlib", "#print axioms t", "r#\"", "s!\"{", "'\n'", "/-", "-/", "--", "«t»",
]  # fmt: skip
_CODE = st.lists(st.sampled_from(_WORDS) | st.text(alphabet=_POLICY_ALPHABET, max_size=8), max_size=40).map(" ".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(code=_CODE, header=_CODE | st.sampled_from([DEFAULT_LEAN_HEADER, ""]), with_statement=st.booleans())
def test_the_policy_never_raises(code: str, header: str, with_statement: bool) -> None:
    composed = compose(
        code + ("\n" + HONEST if with_statement else ""),
        header=header,
        formal_statement=STATEMENT if with_statement else None,
    )
    assert len(composed.violations) <= MAX_VIOLATIONS
    for violation in composed.violations:
        violation.message(code)  # renders
    header_violations(header)


POLICY_PATHOLOGICAL = ["sorry ", "open ", "@[", "«", "x.y ", "a\n", "-/", '"{', "'", "theorem t ", "|", "(("]


@pytest.mark.parametrize("unit", POLICY_PATHOLOGICAL)
def test_the_policy_is_linear_on_pathological_input(unit: str) -> None:
    """The whole policy (lexing, every rule, composing, re-reading the commands) on the same construct repeated
    before and after the target, in CPU time: four times the input takes about four times the time."""

    def cpu(size: int) -> float:
        text = (unit * (size // len(unit) + 1))[:size]
        best = []
        for code in (text + "\n" + HONEST, HONEST + text):
            best.append(cpu_seconds(compose, code, header=DEFAULT_LEAN_HEADER, formal_statement=STATEMENT))
        return max(best)

    small, large = cpu(60_000), cpu(240_000)
    assert large < 4.0  # typically well under a second
    assert large < 8 * small + 0.1


def test_code_over_the_size_limit_is_refused_at_once() -> None:
    code = HONEST + "-- " + "x" * MAX_CODE_CHARS
    started = time.process_time()
    composed = compose(code, header=DEFAULT_LEAN_HEADER, formal_statement=STATEMENT)
    assert time.process_time() - started < 0.5
    assert [v.rule for v in composed.violations] == [
        f"the code is longer than {MAX_CODE_CHARS} characters (no proof is that long)"
    ]
