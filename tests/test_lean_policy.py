"""The text policy and the imposed statement, without a REPL."""

from __future__ import annotations

import pytest

from services.lean.policy import compose, header_parts, parse_axioms_answer
from services.lean.protocol import Pos
from services.settings import DEFAULT_LEAN_HEADER

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
