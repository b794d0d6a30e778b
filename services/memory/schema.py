"""What one memory point is: a verified (statement, proof) pair, its keys and its payload.

Keys, all SHA-256 hex of normalised text:

* `statement_hash` — `services.leantext.statement_hash`: the statement without comments, proof tail or layout;
* `body_hash`      — the same with the declaration name replaced by `_` and `lemma` read as `theorem`:
  "is this the same theorem?" regardless of what it is called. Exclusion (the target, the caller's
  list, the benchmark file) is by this key, so a renamed copy of a benchmark problem is excluded too;
* `proof_hash`     — the proof up to layout (whitespace runs collapsed);
* the point id     — a UUID from (statement_hash, proof_hash), so a duplicate maps to the same point
  and an upsert of it can never create a second copy, in any process.
"""

from __future__ import annotations

__all__ = ["SCREEN_REASON", "VerifiedProof", "body_hash", "point_id", "proof_hash", "statement_hash"]

import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from services.leantext import leading_declaration, normalize_statement, statement_hash
from services.memory.tokenizer import normalized_statement_tokens

SCHEMA_VERSION = 1

SPARSE_VECTOR = "lex"  # Lean-aware lexical tokens, BM25 weights, Qdrant IDF modifier
DENSE_VECTOR = "dense"  # optional: an OpenAI-compatible /v1/embeddings model

# The screening's verdict (screening.py): the rule of the checker's policy that refused the proof, or null
# when it passed. A point with a reason is kept out of every search (an "is empty" filter, so points stored
# before screening existed, which lack the field, count as admitted).
SCREEN_REASON = "screen_reason"

# Payload fields that carry an index (they appear in filters or in facets).
KEYWORD_FIELDS = (
    "statement_hash",
    "body_hash",
    "proof_hash",
    "source",
    "model",
    "lean_version",
    "job_id",
    SCREEN_REASON,
)
FLOAT_FIELDS = ("created_at",)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _body_key(normalized: str) -> str:
    declaration = leading_declaration(normalized)
    if declaration is None:
        return _sha(normalized)
    return _sha(f"{normalized[: declaration.keyword_start]}theorem _{normalized[declaration.name_end :]}")


def body_hash(formal_statement: str) -> str:
    """Hash of the statement with its name blanked: equal for the same theorem under any name."""
    return _body_key(normalize_statement(formal_statement))


def proof_hash(proof: str) -> str:
    """Hash of the proof up to layout. Comments count: stripping them costs ~1 ms per proof in Python,
    too much for a multi-million-proof import, and copies that differ only in comments are rare."""
    return _sha(" ".join(proof.split()))


def point_id(statement_key: str, proof_key: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(f"{statement_key}:{proof_key}".encode()).digest()[:16]))


def _name_of(normalized: str) -> str | None:
    declaration = leading_declaration(normalized)
    return declaration.name if declaration else None


def declaration_name(formal_statement: str) -> str | None:
    return _name_of(normalize_statement(formal_statement))


@dataclass(frozen=True)
class VerifiedProof:
    """A proof Lean accepted for `formal_statement`, with where it came from.

    The keys are computed once per object (`cached_property` writes the instance dict directly, which a
    frozen dataclass allows).
    """

    formal_statement: str
    proof: str  # the full verified Lean text, as checked
    header: str = ""
    source: str = ""  # "job", "import:<file>", a dataset name, ...
    model: str | None = None
    lean_version: str | None = None
    job_id: str | None = None
    created_at: float = field(default_factory=time.time)
    name: str | None = None  # declaration name; derived from the statement when not given

    def __post_init__(self) -> None:
        if self.name is None:
            object.__setattr__(self, "name", _name_of(self.normalized))

    @cached_property
    def normalized(self) -> str:
        """`leantext.normalize_statement` of the statement, computed once (it is a Python char loop)."""
        return normalize_statement(self.formal_statement)

    @cached_property
    def statement_hash(self) -> str:
        return _sha(self.normalized)  # == leantext.statement_hash(self.formal_statement)

    @cached_property
    def body_hash(self) -> str:
        return _body_key(self.normalized)

    @cached_property
    def proof_hash(self) -> str:
        return proof_hash(self.proof)

    @cached_property
    def point_id(self) -> str:
        return point_id(self.statement_hash, self.proof_hash)

    def tokens(self) -> list[str]:
        return normalized_statement_tokens(self.normalized)

    def payload(self, screen_reason: str | None = None) -> dict[str, Any]:
        """What a point carries: the record, its hashes (indexed for filters), the screening's verdict
        (`screen_reason` None: admitted) and the schema version."""
        return {
            "schema": SCHEMA_VERSION,
            **self.to_record(),
            "statement_hash": self.statement_hash,
            "body_hash": self.body_hash,
            "proof_hash": self.proof_hash,
            SCREEN_REASON: screen_reason,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> VerifiedProof:
        return cls(
            formal_statement=payload["formal_statement"],
            proof=payload["proof"],
            header=payload.get("header") or "",
            source=payload.get("source") or "",
            model=payload.get("model"),
            lean_version=payload.get("lean_version"),
            job_id=payload.get("job_id"),
            created_at=float(payload.get("created_at") or 0.0),
            name=payload.get("name"),
        )

    def to_record(self) -> dict[str, Any]:
        """The JSONL form `export_proofs` writes and `import_proofs` reads back."""
        return {
            "name": self.name,
            "formal_statement": self.formal_statement,
            "proof": self.proof,
            "header": self.header,
            "source": self.source,
            "model": self.model,
            "lean_version": self.lean_version,
            "job_id": self.job_id,
            "created_at": float(self.created_at),
        }
