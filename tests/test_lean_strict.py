"""Strict mode: services/lean/lean_files/StrictCheck.lean replays a proof in a fresh kernel environment.

The `lean`-marked tests run it with real Lean + Mathlib (the Lean image: OPROVER_LEAN_CMD/OPROVER_LEAN_CWD set,
`lake` on PATH); the others drive the Python side with a stand-in `lean` executable.
"""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from services.domain import Verdict
from services.lean.strict import STRICT_CHECK, run_strict
from services.settings import LeanSettings
from tests.lean_cases import GOOD_PROOF, PASS_POSITIVITY, STATEMENT, stand_in_checker

FAKE_LEAN = """#!/bin/sh
# stand-in `lean --run StrictCheck.lean COMPILED REFERENCE NAME`: ok iff COMPILED uses positivity
if [ -n "$STRICT_GARBAGE" ]; then echo "PANIC at something"; exit 1; fi
if grep -q positivity "$3"; then
  echo '{"ok":true,"typeMatches":true,"replayed":1,"axioms":["propext"],"errors":[]}'
else
  echo '{"ok":false,"typeMatches":false,"axioms":[],"errors":["type of target_thm differs from the reference"]}'
  exit 1
fi
"""


@pytest.fixture
def fake_lean_on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lean = bin_dir / "lean"
    lean.write_text(FAKE_LEAN)
    lean.chmod(lean.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def test_strict_mode_keeps_a_pass_that_replays(tmp_path, fake_lean_on_path) -> None:
    with stand_in_checker(tmp_path, [PASS_POSITIVITY], strict=True, sandbox=False) as checker:
        assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS


def test_strict_mode_turns_a_mismatch_into_fail(tmp_path, fake_lean_on_path) -> None:
    rules = [{"match": "nlinarith", "outcome": "pass"}]
    code = GOOD_PROOF.replace("positivity", "nlinarith [sq_nonneg x]")
    with stand_in_checker(tmp_path, rules, strict=True, sandbox=False) as checker:
        result = checker.check(code, formal_statement=STATEMENT)
    assert result.verdict is Verdict.FAIL and "strict mode: type of target_thm differs" in result.detail


def test_strict_mode_fails_closed_without_a_verdict(tmp_path, fake_lean_on_path, monkeypatch) -> None:
    monkeypatch.setenv("STRICT_GARBAGE", "1")
    with stand_in_checker(tmp_path, [PASS_POSITIVITY], strict=True, sandbox=False) as checker:
        result = checker.check(GOOD_PROOF, formal_statement=STATEMENT)
    assert result.verdict is Verdict.FAIL and "gave no verdict" in result.detail


def test_strict_check_file_is_shipped() -> None:
    text = STRICT_CHECK.read_text(encoding="utf-8")
    assert "replay" in text and "collectAxioms" in text and "def main" in text


# ---------------------------------------------------------------------------------------------------------------
# With real Lean (the Lean image)
# ---------------------------------------------------------------------------------------------------------------
HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen BigOperators Real Nat Topology Rat"
REFERENCE = HEADER + "\n\ntheorem strict_t (a b : ℕ) : a + b = b + a := by\n  sorry\n"


def real_settings() -> LeanSettings:
    if not (os.environ.get("OPROVER_LEAN_CMD") and os.environ.get("OPROVER_LEAN_CWD") and shutil.which("lake")):
        pytest.skip("needs the Lean image (OPROVER_LEAN_CMD, OPROVER_LEAN_CWD, lake)")
    return LeanSettings(cmd=os.environ["OPROVER_LEAN_CMD"], cwd=os.environ["OPROVER_LEAN_CWD"], timeout_s=600)


@pytest.mark.lean
@pytest.mark.timeout(1200)
def test_real_strict_accepts_a_genuine_proof() -> None:
    compiled = HEADER + "\n\ntheorem strict_t (a b : ℕ) : a + b = b + a := by\n  omega\n"
    result = run_strict(real_settings(), compiled=compiled, reference=REFERENCE, name="strict_t")
    assert result.ok, result.reason


@pytest.mark.lean
@pytest.mark.timeout(1200)
def test_real_strict_rejects_a_different_type() -> None:
    compiled = HEADER + "\n\ntheorem strict_t (a b : ℕ) : a + b = a + b := by\n  rfl\n"
    result = run_strict(real_settings(), compiled=compiled, reference=REFERENCE, name="strict_t")
    assert not result.ok and "differs" in result.reason


@pytest.mark.lean
@pytest.mark.timeout(1200)
def test_real_strict_rejects_a_new_axiom() -> None:
    compiled = HEADER + "\n\naxiom cheat : False\n\ntheorem strict_t (a b : ℕ) : a + b = b + a := cheat.elim\n"
    result = run_strict(real_settings(), compiled=compiled, reference=REFERENCE, name="strict_t")
    assert not result.ok and "cheat" in result.reason
