"""Lean-aware lexical tokens and the sparse vectors built from them.

Retrieval compares *statements*, so the tokenizer is tuned for Lean 4 / Mathlib statement text:

* a qualified or compound name is kept whole (`Finset.Icc`, `Nat.Prime`, `sq_nonneg`) and is also split
  into lower-case parts on `.`, `_`, camelCase and letter/digit boundaries (`finset`, `icc`, `nat`,
  `prime`, `sq`, `nonneg`), so `Nat.Prime p` and `p.Prime` share the token `prime`;
* tactic names are kept whole and never split (`norm_num` stays `norm_num`: its parts mean nothing);
* Unicode and ASCII operators are tokens (`∑`, `√`, `≤`, `∣`, `⁻¹`, `⁻¹'`, `^`, `%`, `<;>`), a run of
  symbol characters being one token (`<->`, `=>`); brackets, commas, `:` and `:=` carry no meaning and go;
* subscripts are dropped from local names (`h₀`, `h₁` are all `h`: their numbering is arbitrary);
* the `theorem`/`lemma` keyword and the declaration's name are skipped by `statement_tokens`: a name
  such as `mathd_algebra_478` says where a problem came from, not what it says, and users name
  theorems anything.

A token becomes a sparse-vector index by hashing (`token_index`: 32 bits of BLAKE2b, deterministic
across processes and machines, no vocabulary file, no model). Document values are BM25 term
weights (`k1`, `b` with a fixed average length, since the corpus grows and Qdrant stores the values
as given); query values are 1 per distinct token. Qdrant's IDF modifier supplies the IDF at query
time from its own live document frequencies, so score = Σ idf(t)·bm25_tf(t) exactly as in BM25.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from functools import lru_cache

from services.leantext import leading_declaration, normalize_statement

# BM25 constants. AVG_LEN is the mean token count of a statement in the shared data (≈34 for MiniF2F and
# Lean Workbook statements); a fixed value keeps stored vectors valid as the corpus grows.
BM25_K1 = 1.2
BM25_B = 0.75
BM25_AVG_LEN = 34.0

SUBSCRIPTS = "₀₁₂₃₄₅₆₇₈₉ₐₑₒₓₔₕₖₗₘₙₚₛₜᵢᵣᵤᵥⱼ"
_SUBSCRIPT_SET = frozenset(SUBSCRIPTS)

# Tactic names (Lean core, Std/Batteries, Mathlib) that must stay whole. Splitting `norm_num` into
# `norm` + `num` would make every proof share tokens with every `Nat.norm`/`num` statement.
TACTICS = frozenset(
    [
        "abel",
        "aesop",
        "all_goals",
        "any_goals",
        "apply",
        "apply_fun",
        "assumption",
        "bound",
        "by_cases",
        "by_contra",
        "by_contra!",
        "calc",
        "cancel_denoms",
        "cases",
        "cases'",
        "change",
        "choose",
        "clear",
        "congr",
        "congr!",
        "constructor",
        "contradiction",
        "contrapose",
        "contrapose!",
        "conv",
        "decide",
        "exact",
        "exact_mod_cast",
        "exfalso",
        "ext",
        "field_simp",
        "filter_upwards",
        "fin_cases",
        "first",
        "funext",
        "gcongr",
        "generalize",
        "have",
        "induction",
        "induction'",
        "injection",
        "interval_cases",
        "intro",
        "intros",
        "linarith",
        "linear_combination",
        "lift",
        "match_target",
        "native_decide",
        "nlinarith",
        "nlinarith!",
        "norm_cast",
        "norm_num",
        "nth_rewrite",
        "nth_rw",
        "obtain",
        "omega",
        "polyrith",
        "positivity",
        "push_cast",
        "push_neg",
        "qify",
        "rcases",
        "refine",
        "refine'",
        "rename_i",
        "repeat",
        "revert",
        "rfl",
        "ring",
        "ring_nf",
        "rintro",
        "rw",
        "rwa",
        "show",
        "simp",
        "simp_all",
        "simp_arith",
        "simpa",
        "specialize",
        "split",
        "split_ifs",
        "subst",
        "swap",
        "symm",
        "tauto",
        "trans",
        "trivial",
        "try",
        "unfold",
        "use",
        "zify",
    ]
)

# Words of the statement syntax itself: every statement has them, so they only cost space.
_SKIP = frozenset({"theorem", "lemma"})

# Characters that never carry meaning on their own.
_PUNCT = frozenset("()[]{}⟨⟩⦃⦄,;:·`@\"'«»")

_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+|[^A-Za-z0-9]+")


def _is_ident_start(c: str) -> bool:
    return c.isalpha() or c == "_"


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c in "_'" or c in _SUBSCRIPT_SET


def _split_name(name: str) -> list[str]:
    """Lower-case parts of one qualified name: `.`, `_`, camelCase, letter/digit boundaries."""
    parts: list[str] = []
    for component in name.split("."):
        for word in component.split("_"):
            word = word.strip("'")
            if not word:
                continue
            parts.extend(piece.lower() for piece in _CAMEL.findall(word))
    return parts


def _name_tokens(name: str) -> list[str]:
    stripped = "".join(c for c in name if c not in _SUBSCRIPT_SET) or name
    if stripped in TACTICS:
        return [stripped]
    parts = _split_name(stripped)
    if len(parts) <= 1:
        return parts or [stripped.lower()]
    # Whole name first (exact matches count extra), then its parts.
    return [stripped, *parts]


def tokenize(text: str) -> list[str]:
    """Lean-aware tokens of `text` (comments should be removed by the caller; strings are kept)."""
    tokens: list[str] = []
    n = len(text)
    i = 0
    while i < n:
        c = text[i]
        if c == ":" and text.startswith(":=", i):
            i += 2  # definition syntax, in every statement and every `have`
        elif c == "<" and text.startswith("<;>", i):
            tokens.append("<;>")  # the tactic combinator, not two comparisons
            i += 3
        elif c.isspace() or c in _PUNCT:
            i += 1
        elif c.isdigit() and c.isascii():
            j = i
            while j < n and ((text[j].isdigit() and text[j].isascii()) or text[j] == "."):
                j += 1
            number = text[i:j].rstrip(".")
            tokens.append(number)
            i = i + len(number)
        elif _is_ident_start(c):
            j = i + 1
            while j < n:
                if _is_ident_char(text[j]):
                    j += 1
                elif text[j] == "." and j + 1 < n and _is_ident_start(text[j + 1]):
                    j += 1  # `Finset.Icc`, `p.Prime`: the dot belongs to the name
                elif text[j] in "!?" and text[i:j] + text[j] in TACTICS:
                    j += 1  # `nlinarith!`, `by_contra!`
                else:
                    break
            tokens.extend(_name_tokens(text[i:j]))
            i = j
        else:
            j = i + 1
            while j < n:
                d = text[j]
                if d == "'" and j == i + 2 and text.startswith("⁻¹", i):
                    j += 1  # `f ⁻¹' s`, the preimage, is not `x⁻¹`, the inverse
                    break
                if d.isspace() or d in _PUNCT or _is_ident_start(d) or (d.isdigit() and d.isascii()):
                    break
                j += 1
            tokens.append(text[i:j])
            i = j
    return tokens


def statement_tokens(formal_statement: str) -> list[str]:
    """Tokens of a statement without comments, proof tail, keyword or declaration name."""
    return normalized_statement_tokens(normalize_statement(formal_statement))


def normalized_statement_tokens(normalized: str) -> list[str]:
    """`statement_tokens` of text that already went through `leantext.normalize_statement`."""
    declaration = leading_declaration(normalized)
    text = normalized if declaration is None else " " + normalized[declaration.name_end :]
    return [t for t in tokenize(text) if t not in _SKIP]


@lru_cache(maxsize=1 << 18)
def token_index(token: str) -> int:
    """The sparse-vector dimension of `token`: 32 bits of BLAKE2b, the same in every process."""
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=4).digest(), "little")


def _merge(pairs: Counter[int]) -> tuple[list[int], list[int]]:
    indices = sorted(pairs)
    return indices, [pairs[i] for i in indices]


def document_vector(tokens: list[str]) -> tuple[list[int], list[float]]:
    """BM25 term weights of a stored statement, as (sorted indices, values)."""
    counts: Counter[int] = Counter(token_index(t) for t in tokens)
    length = max(len(tokens), 1)
    norm = BM25_K1 * (1 - BM25_B + BM25_B * length / BM25_AVG_LEN)
    indices, tfs = _merge(counts)
    return indices, [tf * (BM25_K1 + 1) / (tf + norm) for tf in tfs]


def query_vector(tokens: list[str]) -> tuple[list[int], list[float]]:
    """One per distinct token: Qdrant's IDF modifier weighs each by its rarity."""
    indices = sorted({token_index(t) for t in tokens})
    return indices, [1.0] * len(indices)
