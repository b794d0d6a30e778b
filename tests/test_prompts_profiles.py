"""Prompt profiles: exact bytes (goldens), prefix sharing across chains and rounds, loading and overrides.

Goldens live in tests/golden/prompts/<profile>.<first|repair>.json (the messages as JSON). After a deliberate
change to a profile, bump its `version` and rewrite them with `UPDATE_GOLDEN=1 pytest tests/test_prompts_profiles.py`,
then read the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.domain import ProofTask, RetrievedProof, Verdict
from services.errors import RequestError
from services.prompts import (
    BUILTIN_DIR,
    PromptProfileError,
    available_profiles,
    load_profile,
    render,
    validate_profiles,
)
from services.rounds import previous_attempt

GOLDEN = Path(__file__).parent / "golden" / "prompts"
PROFILES = ["oprover", "goedel-v2", "deepseek-v2", "kimina"]

# A fixed input: a MiniF2F valid problem (DeepSeek-Prover-V1.5 datasets/minif2f.jsonl) and two real proofs
# from ../shared/data/verified_proofs_sample.jsonl as the retrieved ones.
HEADER = (
    "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen BigOperators Real Nat Topology Rat\n\n"
)
STATEMENT = (
    "theorem mathd_algebra_116 (k x : ℝ) (h₀ : x = (13 - Real.sqrt 131) / 4)\n"
    "    (h₁ : 2 * x ^ 2 - 13 * x + k = 0) : k = 19 / 4 := by\n"
)
INFORMAL = (
    "For what real value of $k$ is $\\frac{13-\\sqrt{131}}{4}$ a root of $2x^2-13x+k$? Show that it is $\\frac{19}{4}$."
)
RETRIEVED = (
    RetrievedProof(
        id="mathd_numbertheory_48",
        formal_statement="theorem mathd_numbertheory_48 (b : ℕ) (h₀ : 0 < b) (h₁ : 3 * b ^ 2 + 2 * b + 1 = 57) : "
        "b = 4 := by",
        proof="theorem mathd_numbertheory_48 (b : ℕ) (h₀ : 0 < b) (h₁ : 3 * b ^ 2 + 2 * b + 1 = 57) : b = 4 := by\n"
        "  have h₂ : b = 4 := by\n    nlinarith [sq_nonneg (b : ℤ), h₀, h₁]\n  simp_all\n",
        score=0.71,
    ),
    RetrievedProof(
        id="mathd_algebra_159",
        formal_statement="theorem mathd_algebra_159 (b : ℝ) (f : ℝ → ℝ)\n"
        "  (h₀ : ∀ x, f x = 3 * x ^ 4 - 7 * x ^ 3 + 2 * x ^ 2 - b * x + 1) (h₁ : f 1 = 1) : b = -2 := by",
        proof="theorem mathd_algebra_159 (b : ℝ) (f : ℝ → ℝ)\n"
        "  (h₀ : ∀ x, f x = 3 * x ^ 4 - 7 * x ^ 3 + 2 * x ^ 2 - b * x + 1) (h₁ : f 1 = 1) : b = -2 := by\n"
        "  simp_all only [rpow_two, mul_one, sub_eq_add_neg, add_assoc]\n  ring_nf\n  linarith\n",
        score=0.64,
    ),
)
PREVIOUS_CODE = (
    "theorem mathd_algebra_116 (k x : ℝ) (h₀ : x = (13 - Real.sqrt 131) / 4)\n"
    "    (h₁ : 2 * x ^ 2 - 13 * x + k = 0) : k = 19 / 4 := by\n"
    "  rw [h₀] at h₁\n"
    "  nlinarith [Real.sq_sqrt (show (0 : ℝ) ≤ 131 by norm_num)]\n"
)
FEEDBACK = (
    "Lean reported 1 error.\n"
    "error at line 4, column 2: linarith failed to find a contradiction\n"
    "  k x : ℝ\n  h₁ : 2 * ((13 - √131) / 4) ^ 2 - 13 * ((13 - √131) / 4) + k = 0\n  ⊢ k = 19 / 4"
)
LEAN_MESSAGES = [
    {
        "severity": "error",
        "pos": {"line": 4, "column": 2},
        "endPos": {"line": 4, "column": 62},
        "data": "linarith failed to find a contradiction",
        "goal": "k x : ℝ\nh₁ : 2 * ((13 - √131) / 4) ^ 2 - 13 * ((13 - √131) / 4) + k = 0\n⊢ k = 19 / 4",
    },
    {"severity": "warning", "pos": {"line": 1, "column": 0}, "endPos": None, "data": "unused variable"},
]


def first_task(**changes) -> ProofTask:
    values = {
        "formal_statement": STATEMENT,
        "header": HEADER,
        "informal_statement": INFORMAL,
        "retrieved": RETRIEVED,
    }
    values.update(changes)
    return ProofTask(**values)


def repair_task(
    code: str = PREVIOUS_CODE, feedback: str = FEEDBACK, messages: list[dict] = LEAN_MESSAGES, **changes
) -> ProofTask:
    """A round-2 task whose previous attempt carries `messages` (as a job's attempt stores them)."""
    values = {
        "previous": previous_attempt(
            {"code": code, "feedback": feedback, "verdict": Verdict.FAIL.value, "messages": messages}
        ),
        "round": 2,
    }
    values.update(changes)
    return first_task(**values)


def check_golden(name: str, messages: list[dict[str, str]]) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(messages, ensure_ascii=False, indent=2) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden {path}; run with UPDATE_GOLDEN=1 once and review it"
    assert text == path.read_text(encoding="utf-8"), f"{name}: prompt bytes changed (see module docstring)"


def test_builtin_profiles_are_the_four_and_all_load():
    assert sorted(available_profiles()) == sorted(PROFILES)
    assert validate_profiles() == {}


@pytest.mark.parametrize("name", PROFILES)
def test_golden_first_round(name):
    check_golden(f"{name}.first", load_profile(name).messages(first_task()))


@pytest.mark.parametrize("name", PROFILES)
def test_golden_repair_round(name):
    check_golden(f"{name}.repair", load_profile(name).messages(repair_task()))


def serialize(messages: list[dict[str, str]]) -> str:
    """How a ChatML template lays the messages out (Qwen3, the base of OProver), without the generation prompt."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


@pytest.mark.parametrize("name", PROFILES)
def test_chains_share_the_first_round_prefix_and_later_rounds_differ_only_after_it(name):
    profile = load_profile(name)
    chains = 4
    first = [serialize(profile.messages(first_task())) for _ in range(chains)]
    assert len(set(first)) == 1, "every chain's first round must be byte-identical"
    # The stable prefix: everything up to the end of the first user message's text.
    prefix = first[0][: -len("<|im_end|>\n")]
    repairs = [
        serialize(profile.messages(repair_task(code=PREVIOUS_CODE + f"  -- chain {c}\n", feedback=f"error {c}")))
        for c in range(chains)
    ]
    for text in repairs:
        assert text.startswith(prefix)
    tails = [text[len(prefix) :] for text in repairs]
    assert len(set(tails)) == chains, "chains with different attempts must differ (after the prefix)"
    third = serialize(profile.messages(repair_task(round=3)))
    assert third.startswith(prefix)


@pytest.mark.parametrize("name", PROFILES)
def test_per_round_text_is_last(name):
    profile = load_profile(name)
    messages = profile.messages(repair_task())
    last = messages[-1]["content"]
    assert "linarith failed" in last  # the feedback is in the final message
    assert all("linarith failed" not in m["content"] for m in messages[:-2] if m["role"] != "assistant")


def test_oprover_retrieval_block_comes_before_the_task_and_disappears_without_proofs():
    profile = load_profile("oprover")
    with_proofs = profile.messages(first_task())[0]["content"]
    assert with_proofs.index("mathd_numbertheory_48") < with_proofs.index("Complete the following Lean 4 code")
    without = profile.messages(first_task(retrieved=()))[0]["content"]
    assert without.startswith("Complete the following Lean 4 code:\n\n```lean4\nimport Mathlib")
    assert "Verified Proofs" not in without
    assert profile.uses_retrieval and not load_profile("goedel-v2").uses_retrieval


def test_goedel_feedback_marks_the_error_span_and_caps_at_eight():
    profile = load_profile("goedel-v2")
    messages = [
        {"severity": "error", "pos": {"line": 4, "column": 2}, "endPos": {"line": 4, "column": 10}, "data": f"e{i}"}
        for i in range(10)
    ]
    task = repair_task(messages=messages)
    repair = profile.messages(task)[-1]["content"]
    assert "  <error>nlinarit</error>h [Real.sq_sqrt" in repair
    assert repair.count("Error Message: ") == 8 and "[Omitted 2 more errors]" in repair


@pytest.mark.parametrize("name", ["goedel-v2", "kimina"])
def test_structured_styles_fall_back_to_plain_feedback(name):
    task = repair_task(messages=[])
    assert FEEDBACK in load_profile(name).messages(task)[-1]["content"]


def test_kimina_without_informal_statement_shows_the_formal_one():
    content = load_profile("kimina").messages(first_task(informal_statement=None))[1]["content"]
    assert "# Problem:theorem mathd_algebra_116" in content


def test_multi_turn_profiles_use_the_raw_previous_answer_when_given():
    task = repair_task(extra={"previous_output": "my earlier answer"})
    messages = load_profile("goedel-v2").messages(task)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "my earlier answer"


def test_sampling_defaults_come_from_the_file():
    sampling = load_profile("kimina").sampling
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (0.6, 0.95, 32768)


def test_unknown_profile_is_a_request_error_listing_the_known_ones():
    with pytest.raises(RequestError) as info:
        load_profile("nope")
    assert info.value.param == "prompt_profile"
    for name in PROFILES:
        assert name in info.value.message


@pytest.mark.parametrize("name", ["../oprover", "OPROVER", "", "a/b"], ids=["traversal", "upper", "empty", "slash"])
def test_odd_names_are_unknown_not_paths(name):
    with pytest.raises(RequestError):
        load_profile(name)


MINIMAL = """
schema = 1
name = "{name}"
version = "7"
keeps_history = false
[sampling]
temperature = 0.2
top_p = 0.9
max_tokens = 100
[templates]
user = "Prove {{{{statement_sorry}}}}"
repair = " Fix: {{{{feedback}}}}"
"""


def test_a_dropped_file_adds_a_profile_and_can_override_a_builtin(tmp_path):
    (tmp_path / "mine.toml").write_text(MINIMAL.format(name="mine"), encoding="utf-8")
    (tmp_path / "kimina.toml").write_text(MINIMAL.format(name="kimina"), encoding="utf-8")
    assert "mine" in available_profiles(tmp_path)
    mine = load_profile("mine", extra_dir=tmp_path)
    assert mine.version == "7"
    assert mine.messages(first_task()) == [
        {"role": "user", "content": "Prove " + STATEMENT.rstrip()[: -len(":= by")] + ":= by sorry"}
    ]
    assert mine.messages(repair_task())[0]["content"].endswith(" Fix: " + FEEDBACK)
    assert load_profile("kimina", extra_dir=tmp_path).version == "7"
    assert load_profile("kimina").version == "1"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.replace("Prove {{statement_sorry}}", "Prove {{feedback}}"), "per-round values"),
        (lambda s: s.replace("{{statement_sorry}}", "{{nope}}"), "unknown placeholders"),
        (lambda s: s.replace('version = "7"\n', ""), "missing version"),
        (lambda s: s.replace("top_p = 0.9", "top_p = 3.0"), "out of range"),
        (lambda s: s.replace("Prove {{statement_sorry}}", "{{#header}}x"), "open"),
        (lambda s: s + "\nbroken = [", "not valid"),
        (lambda s: s.replace('name = "mine"', 'name = "other"'), "differs from the file name"),
        (lambda s: s.replace("keeps_history = false", "keeps_history = true"), "templates.assistant is required"),
    ],
    ids=[
        "round-value-in-user",
        "unknown-placeholder",
        "no-version",
        "bad-sampling",
        "open-section",
        "bad-toml",
        "name-mismatch",
        "history-needs-assistant",
    ],
)
def test_broken_files_are_refused_with_a_reason(tmp_path, mutate, message):
    (tmp_path / "mine.toml").write_text(mutate(MINIMAL.format(name="mine")), encoding="utf-8")
    with pytest.raises(PromptProfileError) as info:
        load_profile("mine", extra_dir=tmp_path)
    assert message in str(info.value)
    assert "mine" in validate_profiles(tmp_path)


def test_an_edited_file_is_reloaded(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL.format(name="mine"), encoding="utf-8")
    assert load_profile("mine", extra_dir=tmp_path).version == "7"
    path.write_text(MINIMAL.format(name="mine").replace('"7"', '"8"') + "\n", encoding="utf-8")
    assert load_profile("mine", extra_dir=tmp_path).version == "8"


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("a {{x}} b", {"x": "{{y}}"}, "a {{y}} b"),
        ("{{#x}}has {{x}}{{/x}}{{^x}}none{{/x}}", {"x": ""}, "none"),
        ("{{#x}}has {{x}}{{/x}}{{^x}}none{{/x}}", {"x": "1"}, "has 1"),
        ("{{#x}}{{#y}}both{{/y}}{{/x}}", {"x": "1", "y": "1"}, "both"),
        ("lean {braces} {{x}}", {"x": "{ a := 1 }"}, "lean {braces} { a := 1 }"),
    ],
    ids=["values-not-rescanned", "inverted-section", "section", "nested", "braces"],
)
def test_render(template, values, expected):
    assert render(template, values) == expected


def test_builtin_files_are_package_data():
    assert {p.name for p in BUILTIN_DIR.glob("*.toml")} == {f"{n}.toml" for n in PROFILES}
