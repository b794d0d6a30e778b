"""`ProofMemory`: the retrieval memory of verified proofs.

One class for both deployments; the engine calls live in a backend (backend.py):

* embedded (the default, `settings.path`): Qdrant Edge, Qdrant's engine inside this process (edge.py);
  one process owns the directory, and `oprover memory import` hands proofs to it while it runs
  (handoff.py);
* a Qdrant server (`settings.url`) through qdrant-client (server.py).

Retrieval (`search`):
1. the target's own theorem is found by hash, never by score: every point whose `body_hash` (the
   statement without comments, layout or name) equals the target's, the caller's `exclude` list's or the
   exclusion file's is filtered out inside the engine's query, and checked again on the way out;
2. lexical scoring of Lean-aware tokens (`tokenizer.py`) as a sparse vector with Qdrant's IDF modifier;
3. when an embeddings endpoint is configured, a dense vector as well, fused with the lexical list by
   reciprocal rank (Qdrant's RRF);
4. k results are k different theorems: the query over-fetches, keeps the best proof of each theorem,
   and when copies of a few theorems filled the candidates it asks again with those theorems excluded
   inside the query too, so a theorem stored a hundred times takes one slot and costs one extra query;
5. only admitted points: a proof the checker's policy refuses (screening.py) is stored, flagged, and
   never retrieved.

`lookup` answers the exact-hash question on its own ("is this very statement proved in memory?") for
callers that want a cache hit rather than prompt material.

Thread safety: every engine call holds one lock (the engines' Python bindings are not documented as
thread-safe, and the lock costs microseconds next to a query).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.domain import RetrievedProof
from services.errors import MemoryError_
from services.memory.backend import Backend, Point
from services.memory.embeddings import EmbeddingsClient
from services.memory.schema import SCREEN_REASON, VerifiedProof, body_hash, declaration_name, statement_hash
from services.memory.screening import Screener, screen
from services.memory.tokenizer import document_vector, query_vector, statement_tokens
from services.settings import QdrantSettings

logger = logging.getLogger(__name__)

# Candidates fetched per proof asked for; copies of one theorem among them are collapsed, and a further
# query (with the theorems seen excluded) fills what copies took.
OVERFETCH = 4
SCROLL_PAGE = 512
MAX_REASONS = 50  # distinct screening reasons listed by stats()


def load_exclusions(path: Path | None) -> frozenset[str]:
    """Body hashes of the statements in an exclusion JSONL (`formal_statement` per line).

    Records in the layout of `minif2f_valid.jsonl` also carry alternative statements for other Lean
    versions (`alt_*: {"formal_statement": ...}`); those are excluded too.
    """
    if path is None:
        return frozenset()
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise MemoryError_(f"cannot read the exclusion file {path}: {exc}", transient=False) from exc
    hashes: set[str] = set()
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                statements = [record["formal_statement"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise MemoryError_(
                    f"exclusion file {path} line {number}: not a JSON object with formal_statement ({exc})",
                    transient=False,
                ) from exc
            statements += [
                value["formal_statement"]
                for key, value in record.items()
                if key.startswith("alt_") and isinstance(value, dict) and "formal_statement" in value
            ]
            hashes.update(body_hash(s) for s in statements if isinstance(s, str))
    logger.info("memory: %d excluded statements from %s", len(hashes), path)
    return frozenset(hashes)


def load_excluded_names(path: Path | None) -> frozenset[str]:
    """Problem names never to retrieve: each exclusion record's `name` and its statements' declaration names.

    A re-worded statement of a benchmark problem (a prover's corrected version) has another body hash, but
    is still stored under the problem's name; excluding by name as well keeps it out. Read after
    `load_exclusions`, which has reported any malformed line.
    """
    if path is None:
        return frozenset()
    names: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            if isinstance(record.get("name"), str) and record["name"]:
                names.add(record["name"])
            name = declaration_name(record["formal_statement"])
            if name:
                names.add(name)
    return frozenset(names)


def format_stats(stats: dict[str, Any]) -> str:
    """`ProofMemory.stats()` as aligned `key  value` lines for `oprover memory stats` (a mapping value, such
    as the screening reasons, as indented `count  key` lines under its key)."""
    width = max(len(key) for key in stats)
    lines = []
    for key, value in stats.items():
        if isinstance(value, Mapping):
            lines.append(f"{key.replace('_', ' '):<{width}}  {sum(value.values()) if value else 0}")
            lines += [f"    {count:>8}  {reason}" for reason, count in value.items()]
        else:
            lines.append(f"{key.replace('_', ' '):<{width}}  {value}")
    return "\n".join(lines)


@dataclass
class Stored:
    """What one `ProofMemory.store` call did: new points, and how many of them the screening flagged."""

    added: int = 0
    flagged: Counter[str] = field(default_factory=Counter)


@dataclass
class Rescreened:
    """What `ProofMemory.rescreen` did."""

    read: int = 0
    admitted: int = 0  # flagged before, admitted now
    flagged: int = 0  # admitted before, flagged now
    reasons: Counter[str] = field(default_factory=Counter)  # every point flagged after the run, by reason


class ProofMemory:
    """Verified proofs in Qdrant: add, search (never the target itself), count, export."""

    def __init__(
        self,
        settings: QdrantSettings,
        *,
        embeddings: EmbeddingsClient | None = None,
        backend: Backend | None = None,
        take_handoffs: bool = True,
    ) -> None:
        """Open the memory `settings` name. `backend` serves an already-open engine instead (a test's
        qdrant-client collection standing in for a server). An embedded memory takes in the imports handed
        to it while it is open (handoff.py) unless `take_handoffs` is false (a staging shard)."""
        self.settings = settings
        self.collection = settings.collection
        self.server = settings.url is not None
        self._lock = threading.RLock()
        self._closed = False
        self._backend: Backend | None = None
        self._handoff: Any = None
        if embeddings is None and settings.embeddings_url is not None:
            embeddings = EmbeddingsClient(settings)
        self._embeddings = embeddings
        try:
            self._excluded = load_exclusions(settings.exclude_file)
            self._excluded_names = load_excluded_names(settings.exclude_file)
            self._backend = backend if backend is not None else self._open_backend()
            self.server = self._backend.kind == "server"
            self._check_dense()
            if not self.server and backend is None and take_handoffs:
                from services.memory.handoff import InboxWatcher

                self._handoff = InboxWatcher(self, Path(settings.path))
                self._handoff.start()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- set-up

    def _open_backend(self) -> Backend:
        if self.settings.url is not None:
            from services.memory.server import ServerBackend

            return ServerBackend.connect(self.settings, dense_size=self._dense_size)
        from services.memory.edge import EdgeBackend

        return EdgeBackend(Path(self.settings.path), self.collection, dense_size=self._dense_size)

    def _dense_size(self) -> int | None:
        if self._embeddings is None:
            return None
        return len(self._embeddings.embed(["theorem probe : True"])[0])

    def _check_dense(self) -> None:
        assert self._backend is not None
        if self._embeddings is not None and not self._backend.has_dense:
            raise MemoryError_(
                f"embeddings are configured but collection {self.collection} has no dense vector; import the "
                "proofs into a new collection (OPROVER_QDRANT_COLLECTION) to enable them",
                transient=False,
            )
        if self._embeddings is None and self._backend.has_dense:
            logger.warning(
                "memory: collection %s has dense vectors but no embeddings endpoint is configured; "
                "new proofs are stored without one and retrieval is lexical only",
                self.collection,
            )

    @property
    def backend(self) -> Backend:
        if self._closed or self._backend is None:
            raise MemoryError_("the proof memory is closed", transient=False)
        return self._backend

    # ----------------------------------------------------------------- reading

    def search(
        self,
        formal_statement: str,
        *,
        top_k: int,
        exclude: Iterable[str] = (),
        exclude_hashes: Iterable[str] = (),
        exclude_names: Iterable[str] = (),
    ) -> list[RetrievedProof]:
        """Up to `top_k` verified proofs of `top_k` different theorems like `formal_statement`, best first.

        Never returns the target's own theorem (any name, layout or comments), a statement in
        `exclude` (or whose body hash is in `exclude_hashes`), one in the configured exclusion file, a proof
        stored under the target's declaration name, a name of `exclude_names` or of the exclusion file (the same
        problem re-worded), or a proof the screening flagged. The `exclude*` lists are one request's (a job's
        `exclude`); the file is the deployment's.
        """
        if top_k <= 0:
            return []
        if isinstance(exclude, str):  # one statement, not an iterable of characters
            exclude = [exclude]
        banned = {body_hash(formal_statement), *(body_hash(s) for s in exclude), *exclude_hashes, *self._excluded}
        own_name = declaration_name(formal_statement)
        banned_names = self._excluded_names | set(exclude_names) | ({own_name} if own_name else set())
        tokens = statement_tokens(formal_statement)
        dense = self._embeddings.embed([formal_statement])[0] if self._embeddings is not None else None
        if not tokens and dense is None:
            return []
        sparse = query_vector(tokens) if tokens else None
        limit = top_k * OVERFETCH
        results: list[RetrievedProof] = []
        seen: set[str] = set()
        # Each round excludes every theorem already taken, so it adds at least one new theorem or ends: at
        # most top_k rounds, and one when the candidates were diverse enough.
        while len(results) < top_k:
            with self._lock:
                hits = self.backend.query(sparse, dense, sorted(banned | seen), limit)
            before, banned_before = len(results), len(banned)
            for hit in hits:
                body = hit.payload.get("body_hash") or hit.id
                # Belt and braces: the filter already did this, but "never the target" must not hang on it.
                if body in banned or body in seen or hit.payload.get(SCREEN_REASON):
                    continue
                if hit.payload.get("name") in banned_names:
                    banned.add(body)  # the next query leaves this theorem out inside the engine
                    continue
                seen.add(body)
                results.append(
                    RetrievedProof(
                        id=hit.id,
                        formal_statement=hit.payload.get("formal_statement", ""),
                        proof=hit.payload.get("proof", ""),
                        score=hit.score,
                    )
                )
                if len(results) == top_k:
                    break
            if len(hits) < limit or (len(results) == before and len(banned) == banned_before):
                break  # the store has nothing more to give
        return results

    def lookup(self, formal_statement: str, *, limit: int = 8) -> list[RetrievedProof]:
        """Admitted proofs stored for exactly this statement (same `statement_hash`): a cache hit, not prompt
        material."""
        with self._lock:
            hits = self.backend.lookup(statement_hash(formal_statement), limit)
        return [
            RetrievedProof(id=h.id, formal_statement=h.payload["formal_statement"], proof=h.payload["proof"], score=1.0)
            for h in hits
        ]

    def count(self) -> int:
        with self._lock:
            return self.backend.count()

    def iter_proofs(self, *, page: int = SCROLL_PAGE) -> Iterator[VerifiedProof]:
        """Every stored proof (screened-out ones too: they are records kept), in id order, a page at a time."""
        for point in self.iter_points(page=page):
            yield VerifiedProof.from_payload(point.payload)

    def iter_points(
        self, *, page: int = SCROLL_PAGE, flagged_only: bool = False, with_vectors: bool = False
    ) -> Iterator[Point]:
        """Every stored point in id order, fetched `page` at a time (the lock held per page only)."""
        offset = None
        while True:
            with self._lock:
                points, offset = self.backend.page(offset, page, flagged_only=flagged_only, with_vectors=with_vectors)
            yield from points
            if offset is None:
                return

    def stats(self) -> dict[str, Any]:
        with self._lock:
            backend = self.backend
            described = backend.describe()
            points = backend.count()
            flagged = backend.count(flagged=True)
            reasons = backend.flag_reasons(MAX_REASONS) if flagged else {}
        return {
            "backend": backend.kind,
            "location": backend.location,
            "collection": self.collection,
            "points": points,
            "admitted": points - flagged,
            "screened_out": reasons if reasons else 0,
            **described,
            "dense_vector": backend.has_dense,
            "excluded_statements": len(self._excluded),
        }

    def health(self) -> None:
        """Raise `MemoryError_` unless the store answers."""
        with self._lock:
            self.backend.health()

    # ----------------------------------------------------------------- writing

    def add(self, proofs: Sequence[VerifiedProof]) -> int:
        """Store the proofs not stored yet (by statement and proof hash); return how many were new."""
        return self.store(proofs).added

    def store(
        self,
        proofs: Sequence[VerifiedProof],
        *,
        screener: Screener | None = None,
        verdicts: Mapping[str, str | None] | None = None,
    ) -> Stored:
        """`add`, saying how many new points the screening flagged. Only proofs not stored yet are screened:
        by `screener` (the importer's worker processes) or in this thread; `verdicts` (point id -> policy
        violation or None) are screenings known already."""
        unique: dict[str, VerifiedProof] = {}
        for proof in proofs:
            unique.setdefault(proof.point_id, proof)
        if not unique:
            return Stored()
        with self._lock:
            stored = self.backend.existing(list(unique))
        fresh = [pid for pid in unique if pid not in stored]
        if not fresh:
            return Stored()
        known = dict(verdicts or {})
        unknown = [pid for pid in fresh if pid not in known]
        if unknown and screener is not None:
            known.update(zip(unknown, screener.verdicts([unique[pid] for pid in unknown]), strict=True))
        else:
            known.update(
                (pid, screen(unique[pid].formal_statement, unique[pid].proof, unique[pid].header)) for pid in unknown
            )
        reasons = {pid: known[pid] for pid in fresh}
        dense: list[list[float]] | None = None
        if self._embeddings is not None:
            dense = self._embeddings.embed([unique[pid].formal_statement for pid in fresh])
        points = [
            Point(
                pid,
                unique[pid].payload(reasons[pid]),
                document_vector(unique[pid].tokens()),
                dense[i] if dense is not None else None,
            )
            for i, pid in enumerate(fresh)
        ]
        return self.put(points)

    def put(self, points: Sequence[Point]) -> Stored:
        """Store ready-made points (vectors and screened payload) that are not stored yet: the hand-over of a
        staged import. The check and the write hold one lock, so the count is exact within a process."""
        with self._lock:
            backend = self.backend
            already = backend.existing([p.id for p in points])
            new = [p for p in points if p.id not in already]
            if new:
                backend.upsert(new)
        flagged = Counter(str(p.payload[SCREEN_REASON]) for p in new if p.payload.get(SCREEN_REASON))
        return Stored(added=len(new), flagged=flagged)

    def rescreen(self, *, screener: Screener | None = None, page: int = SCROLL_PAGE) -> Rescreened:
        """Read every stored proof with the current policy again: flag what it refuses, re-admit what it
        passes. For after a policy change; costs one policy check per point."""
        result = Rescreened()
        own = screener is None
        screener = screener or Screener()
        try:
            batch: list[Point] = []

            def judge() -> None:
                proofs = [VerifiedProof.from_payload(p.payload) for p in batch]
                for point, reason in zip(batch, screener.verdicts(proofs), strict=True):
                    result.read += 1
                    was = point.payload.get(SCREEN_REASON) or None
                    if reason is not None:
                        result.reasons[reason] += 1
                    if reason == was:
                        continue
                    with self._lock:
                        self.backend.set_screen_reason([point.id], reason)
                    if reason is None:
                        result.admitted += 1
                    elif was is None:
                        result.flagged += 1
                batch.clear()

            for point in self.iter_points(page=page):
                batch.append(point)
                if len(batch) >= page:
                    judge()
            judge()
        finally:
            if own:
                screener.close()
        return result

    def close(self) -> None:
        handoff, self._handoff = self._handoff, None
        if handoff is not None:
            handoff.stop()  # outside the lock: a hand-over in progress finishes its batch first
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._backend is not None:
                    self._backend.close()
            finally:
                if self._embeddings is not None:
                    self._embeddings.close()

    def __enter__(self) -> ProofMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
