"""Checks against the real parts, for the machines that have them (deselected by `make test`).

- `pytest -m lean` inside the Lean image (Dockerfile.lean sets OPROVER_LEAN_CMD, OPROVER_LEAN_REPLAY_CMD and
  OPROVER_LEAN_CWD): the checker against a real leanprover-community/repl with Mathlib, every pass decided by the
  real kernel replay program.
- `pytest -m gpu` with OPROVER_GENERATOR_URL pointing at SGLang serving OProver: one real generation.
"""

from __future__ import annotations

import os

import pytest

from services.domain import ProofTask, Sampling, Verdict
from services.settings import GeneratorSettings, LeanSettings

STATEMENT = "theorem real_stack_add_comm (a b : ℕ) : a + b = b + a := by sorry"


@pytest.fixture(scope="module")
def checker():
    from services.lean import LeanChecker

    names = ("OPROVER_LEAN_CMD", "OPROVER_LEAN_CWD", "OPROVER_LEAN_REPLAY_CMD")
    if not all(os.environ.get(name) for name in names):
        pytest.fail(f"the `lean` tests run in the Lean image: {', '.join(names)} must be set")
    checker = LeanChecker(
        LeanSettings(
            cmd=os.environ["OPROVER_LEAN_CMD"],
            cwd=os.environ["OPROVER_LEAN_CWD"],
            replay_cmd=os.environ["OPROVER_LEAN_REPLAY_CMD"],
            pool_size=1,
            timeout_s=300,
        )
    )
    checker.start()
    yield checker
    checker.close()


@pytest.mark.lean
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("body", "verdict"),
    [
        pytest.param("  omega", Verdict.PASS, id="genuine"),
        pytest.param("  omega", Verdict.PASS, id="genuine-on-a-reused-repl"),  # repeated in a fresh REPL, replayed
        pytest.param("  rfl", Verdict.FAIL, id="wrong-tactic"),
        pytest.param("  sorry", Verdict.REJECTED, id="sorry"),
        pytest.param("  native_decide", Verdict.REJECTED, id="native-decide"),
    ],
)
def test_real_lean_judges_the_imposed_statement(checker, body: str, verdict: Verdict) -> None:
    code = STATEMENT.removesuffix(" sorry") + "\n" + body + "\n"
    result = checker.check(code, formal_statement=STATEMENT)
    assert result.verdict is verdict, result.feedback
    if verdict is Verdict.PASS:
        assert set(result.axioms or ()) <= {"propext", "Classical.choice", "Quot.sound"}
        assert "fake_repl" not in checker.versions()["lean"]


@pytest.mark.gpu
@pytest.mark.timeout(1800)
def test_real_generation_yields_lean_code() -> None:
    from services.generation import GenerationClient, extract_code
    from services.prompts import load_profile

    url = os.environ.get("OPROVER_GENERATOR_URL")
    if not url:
        pytest.fail("the `gpu` tests need OPROVER_GENERATOR_URL (SGLang serving the model)")
    client = GenerationClient(GeneratorSettings(url=url, model=os.environ.get("OPROVER_GENERATOR_MODEL")))
    try:
        assert not client.model().startswith("standin-")
        profile = load_profile("oprover")
        messages = profile.messages(ProofTask(formal_statement=STATEMENT, header="import Mathlib"))
        completion = client.complete(
            messages, Sampling(temperature=0.6, top_p=0.95, max_tokens=8192), request_id="gpu-smoke"
        )
    finally:
        client.close()
    assert completion.usage["completion_tokens"] > 0
    extraction = extract_code(
        completion.content,
        completion.reasoning,
        finish_reason=completion.finish_reason,
        theorem_name="real_stack_add_comm",
        formal_statement=STATEMENT,
    )
    assert extraction.code is not None, extraction.problem
