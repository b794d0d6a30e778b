"""The Lean-aware tokenizer on real statements of the shared data, and its sparse vectors."""

from __future__ import annotations

import json
import math

import pytest

from services.memory.tokenizer import (
    BM25_AVG_LEN,
    BM25_B,
    BM25_K1,
    document_vector,
    query_vector,
    statement_tokens,
    token_index,
    tokenize,
)
from tests.shared_data import shared_path


def statement(name: str) -> str:
    for file in ("verified_proofs_sample.jsonl", "minif2f_valid.jsonl"):
        for line in shared_path(file).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["name"] == name:
                return record["formal_statement"]
    raise LookupError(name)


# (shared-data theorem, tokens that must appear, tokens that must not)
CASES = [
    pytest.param(
        "amc12b_2002_p11",
        ["Nat.Prime", "nat", "prime", "+", "-"],
        ["amc", "2002", "p", "11", "theorem", "h₀", "(", ":"],
        id="qualified-name-whole-and-split;name-and-keyword-dropped",
    ),
    pytest.param(
        "amc12a_2019_p21",
        ["∑", "Finset.Icc", "finset", "icc", "Complex.I", "complex", "Real.sqrt", "sqrt", "ℂ", "ℤ", "^", "36"],
        ["Finset", "Icc", "amc12a"],
        id="big-operator-and-dotted-names",
    ),
    pytest.param(
        "amc12a_2003_p24",
        ["IsGreatest", "is", "greatest", "Real.logb", "logb", "∃", "∧", "≤", "|"],
        ["{", "}"],
        id="camelCase-split",
    ),
    pytest.param(
        "amc12_2000_p15",
        ["⁻¹'", "toFinset", "to", "finset", "fintype", "→", "∀"],
        ["'", "⁻¹"],
        id="preimage-operator-kept-whole",
    ),
    pytest.param(
        "lean_workbook_10202",
        ["≡", "zmod", "21", "^"],
        ["[", "]", "ZMOD"],
        id="modular-congruence",
    ),
    pytest.param(
        "mathd_numbertheory_13",
        ["IsLeast", "∈", "↔", "\\", "ℚ", "set"],
        ["S"],
        id="set-difference-and-membership",
    ),
]


@pytest.mark.parametrize(("name", "present", "absent"), CASES)
def test_statement_tokens_on_real_statements(name: str, present: list[str], absent: list[str]) -> None:
    tokens = statement_tokens(statement(name))
    for token in present:
        assert token in tokens, f"{token!r} missing from {tokens}"
    for token in absent:
        assert token not in tokens, f"{token!r} should not be in {tokens}"


def test_exact_tokens_of_a_short_statement() -> None:
    assert statement_tokens(statement("mathd_numbertheory_335")) == (
        ["n", "ℕ", "h", "n", "%", "7", "=", "5", "5", "*", "n", "%", "7", "=", "4"]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "nlinarith [sq_nonneg (a - b)]",
            ["nlinarith", "sq_nonneg", "sq", "nonneg", "a", "-", "b"],
            id="tactic-whole-lemma-split",
        ),
        pytest.param("norm_num at h₀ ⊢", ["norm_num", "at", "h", "⊢"], id="tactic-not-split;subscripts-dropped"),
        pytest.param("field_simp <;> ring_nf", ["field_simp", "<;>", "ring_nf"], id="combinator"),
        pytest.param("by_contra! h", ["by_contra!", "h"], id="bang-tactic"),
        pytest.param("rcases h with ⟨x, hx⟩", ["rcases", "h", "with", "x", "hx"], id="anonymous-constructor"),
        pytest.param("Nat.succ_le_iff", ["Nat.succ_le_iff", "nat", "succ", "le", "iff"], id="dot-and-underscore"),
        pytest.param("x⁻¹ ≤ √2 ∧ 3 ∣ n", ["x", "⁻¹", "≤", "√", "2", "∧", "3", "∣", "n"], id="unicode-operators"),
        pytest.param("a <-> b -> c ≠ 1.5", ["a", "<->", "b", "->", "c", "≠", "1.5"], id="ascii-operators;decimals"),
        pytest.param("-- a comment\nx", ["--", "a", "comment", "x"], id="comments-are-the-callers-job"),
        pytest.param("ZMod.natAbs", ["ZMod.natAbs", "z", "mod", "nat", "abs"], id="camel-runs"),
    ],
)
def test_tokenize(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


def test_comments_and_proof_tail_do_not_change_the_tokens() -> None:
    plain = statement("mathd_algebra_43")
    noisy = "/-- doc -/\n" + plain.replace(":= by", "-- a remark\n:= by sorry").replace(" ", "  ")
    assert statement_tokens(noisy) == statement_tokens(plain)
    assert statement_tokens(plain.replace("theorem mathd_algebra_43", "lemma other")) == statement_tokens(plain)


def test_token_index_is_pinned() -> None:
    # Stored vectors depend on these numbers: they must not change between processes, machines or
    # releases (Python's own `hash` is salted per process; BLAKE2b is not). Changing the mapping
    # means re-importing every collection.
    assert {t: token_index(t) for t in ["Nat.Prime", "∑", "ℝ", "norm_num", "x"]} == {
        "Nat.Prime": 3739473364,
        "∑": 2261224896,
        "ℝ": 3296987740,
        "norm_num": 266895293,
        "x": 3842489009,
    }


def test_document_vector_holds_bm25_weights() -> None:
    tokens = ["a", "b", "a"]
    indices, values = document_vector(tokens)
    assert indices == sorted(indices) and len(indices) == 2
    norm = BM25_K1 * (1 - BM25_B + BM25_B * 3 / BM25_AVG_LEN)
    by_index = dict(zip(indices, values, strict=True))
    assert math.isclose(by_index[token_index("a")], 2 * (BM25_K1 + 1) / (2 + norm))
    assert math.isclose(by_index[token_index("b")], 1 * (BM25_K1 + 1) / (1 + norm))
    q_indices, q_values = query_vector(tokens)
    assert q_indices == indices and q_values == [1.0, 1.0]
