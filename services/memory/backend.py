"""What `ProofMemory` needs from a store, and the two stores that provide it.

`ProofMemory` (store.py) owns the retrieval logic: tokens, exclusions, one proof per theorem, screening,
dedup. A backend owns one engine's calls and filters:

* `EdgeBackend` (edge.py): Qdrant Edge, Qdrant's segment engine as an in-process library, in a directory
  on this machine (the default);
* `ServerBackend` (server.py): a Qdrant server through qdrant-client (`OPROVER_QDRANT_URL`).

Both hold the same points (schema.py): a sparse vector `lex` with the IDF modifier, an optional dense
vector, the payload with its indexes, and the screening's verdict (screening.py). Every
engine failure leaves a backend as `MemoryError_` (transient or not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Payload fields a search reads: the texts shown in the prompt and the key of "one proof per theorem".
SEARCH_FIELDS = ["formal_statement", "proof", "body_hash", "statement_hash", "screen_reason", "name"]

# RRF's rank constant (score = Σ 1/(k + rank)): Qdrant's default, stated so the embedded engine, whose
# fusion takes it as an argument, ranks exactly as a server does.
RRF_K = 2

Sparse = tuple[list[int], list[float]]


@dataclass
class Point:
    """One stored point as a backend writes and reads it (vectors only when asked for)."""

    id: str
    payload: dict[str, Any]
    sparse: Sparse | None = None
    dense: list[float] | None = None


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    kind: str  # "embedded" | "server"
    location: str
    has_dense: bool

    def query(self, sparse: Sparse | None, dense: list[float] | None, excluded: Sequence[str], limit: int) -> list[Hit]:
        """The `limit` best admitted points whose `body_hash` is not in `excluded`, best first (RRF when both)."""
        ...

    def existing(self, ids: Sequence[str]) -> set[str]: ...

    def upsert(self, points: Sequence[Point]) -> None: ...

    def page(self, offset: Any, limit: int, *, flagged_only: bool, with_vectors: bool) -> tuple[list[Point], Any]: ...

    def lookup(self, statement_hash: str, limit: int) -> list[Hit]: ...

    def count(self, *, flagged: bool | None = None) -> int: ...

    def flag_reasons(self, limit: int) -> dict[str, int]: ...

    def set_screen_reason(self, ids: Sequence[str], reason: str | None) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def health(self) -> None: ...

    def close(self) -> None: ...
