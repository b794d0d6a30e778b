"""`ProofMemory`: the retrieval memory of verified proofs, over qdrant-client.

One class for both deployments: embedded Qdrant (`settings.path`, the default; brute force, one process
per directory) and a Qdrant server (`settings.url`; HNSW, int8 quantization, payload indexes). The
collection is created on first use with the settings that suit where it lives.

Retrieval (`search`):
1. the target's own theorem is found by hash, never by score: every point whose `body_hash` (the
   statement without comments, layout or name) equals the target's, the caller's `exclude` list's or the
   exclusion file's is filtered out inside Qdrant, and checked again on the way out;
2. lexical scoring of Lean-aware tokens (`tokenizer.py`) as a sparse vector with Qdrant's IDF modifier;
3. when an embeddings endpoint is configured, a dense vector as well, fused with the lexical list by
   reciprocal rank (Qdrant's RRF);
4. at most one proof per statement, so k retrieved proofs show k different theorems.

`lookup` answers the exact-hash question on its own ("is this very statement proved in memory?") for
callers that want a cache hit rather than prompt material.

Thread safety: every client call holds one lock. Embedded Qdrant is a Python object that is not
thread-safe, and the lock costs nothing next to a server round trip.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion

from services.domain import RetrievedProof
from services.errors import MemoryError_
from services.memory.embeddings import EmbeddingsClient
from services.memory.lexindex import LexicalIndex
from services.memory.schema import (
    DENSE_VECTOR,
    FLOAT_FIELDS,
    KEYWORD_FIELDS,
    SPARSE_VECTOR,
    VerifiedProof,
    body_hash,
    statement_hash,
)
from services.memory.tokenizer import document_vector, query_vector, statement_tokens
from services.settings import QdrantSettings

logger = logging.getLogger(__name__)

# How many candidates to fetch per proof asked for: duplicates of one statement are collapsed afterwards.
OVERFETCH = 4
SCROLL_PAGE = 512
INDEX_PAGE = 10_000  # embedded scroll sorts every id per page: few large pages when building the index


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


def _check_embedded_lock(path: Path) -> None:
    """Fail clearly, and without leaking a file handle, when another process holds the directory.

    qdrant-client raises a RuntimeError in that case but leaves its lock file open (a ResourceWarning
    later); probing the same flock first avoids constructing a client that cannot work.
    """
    import portalocker  # qdrant-client's own dependency for this very lock

    lock_path = path / ".lock"
    if not lock_path.exists():
        return
    with lock_path.open("r+") as handle:
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            raise MemoryError_(
                f"the embedded Qdrant directory {path} is locked by another process (or another ProofMemory "
                "in this one). Exactly one process may open it: reach the memory through that process, or run "
                "a Qdrant server and set OPROVER_QDRANT_URL.",
                transient=False,
            ) from None
        portalocker.unlock(handle)


def format_stats(stats: dict[str, Any]) -> str:
    """`ProofMemory.stats()` as aligned `key  value` lines, for `oprover memory stats`."""
    width = max(len(key) for key in stats)
    return "\n".join(f"{key.replace('_', ' '):<{width}}  {value}" for key, value in stats.items())


def collection_config(settings: QdrantSettings, *, dense_size: int | None, server: bool) -> dict[str, Any]:
    """Arguments of `create_collection` for where the collection lives.

    Server (millions of points): payload on disk (proof texts are most of the bytes); the sparse
    inverted index on disk (memory-mapped; the page cache keeps the hot posting lists); and for the
    optional dense vector, originals on disk with an int8 copy in RAM (4x smaller, rescored against the
    originals) under an HNSW graph kept in RAM. Embedded: none of that exists in local mode (it would
    only warn), so plain vectors.
    """
    vectors: dict[str, models.VectorParams] = {}
    if dense_size is not None:
        vectors[DENSE_VECTOR] = models.VectorParams(
            size=dense_size, distance=models.Distance.COSINE, on_disk=True if server else None
        )
    config: dict[str, Any] = {
        "vectors_config": vectors,
        "sparse_vectors_config": {
            SPARSE_VECTOR: models.SparseVectorParams(
                modifier=models.Modifier.IDF,
                index=models.SparseIndexParams(on_disk=True) if server else None,
            )
        },
    }
    if server:
        config["on_disk_payload"] = True
        config["hnsw_config"] = models.HnswConfigDiff(
            m=settings.hnsw_m, ef_construct=settings.hnsw_ef_construct, on_disk=False
        )
        if settings.int8:
            config["quantization_config"] = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
    return config


@contextlib.contextmanager
def _warnings_to_log() -> Iterator[None]:
    """Turn the embedded client's warnings into one log line each.

    Local mode warns, once per process, above 20k points ("not recommended", docs/memory.md says why
    and what to do) and when it ignores a server-only setting. Those are facts for the operator's log,
    not errors of the caller. Callers hold the memory lock, so only the rare warning from another
    thread inside this window would land in our log instead of its own handler.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        logger.warning("memory: embedded Qdrant: %s", warning.message)


class ProofMemory:
    """Verified proofs in Qdrant: add, search (never the target itself), count, export."""

    def __init__(
        self,
        settings: QdrantSettings,
        *,
        embeddings: EmbeddingsClient | None = None,
    ) -> None:
        self.settings = settings
        self.collection = settings.collection
        self.server = settings.url is not None
        self._lock = threading.RLock()
        self._closed = False
        self._excluded = load_exclusions(settings.exclude_file)
        self._client = self._connect()
        if embeddings is None and settings.embeddings_url is not None:
            embeddings = EmbeddingsClient(settings)
        self._embeddings = embeddings
        self._index: LexicalIndex | None = None
        try:
            self._ensure_collection()
            if not self.server:
                if settings.embedded_fast_writes:
                    self._tune_embedded_storage()
                if settings.embedded_index:
                    self._index = self._build_index()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- set-up

    def _connect(self) -> QdrantClient:
        if self.server:
            return QdrantClient(
                url=self.settings.url, api_key=self.settings.api_key, timeout=int(self.settings.timeout_s)
            )
        path = Path(self.settings.path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MemoryError_(f"cannot create the embedded Qdrant directory {path}: {exc}", transient=False) from exc
        _check_embedded_lock(path)
        with _warnings_to_log():
            try:
                # Every call holds our lock, so SQLite's same-thread check (on where SQLite is built with
                # THREADSAFE=2, e.g. macOS) would only stop the worker threads from sharing the store.
                return QdrantClient(path=str(path), force_disable_check_same_thread=True)
            except RuntimeError as exc:
                raise MemoryError_(f"cannot open embedded Qdrant at {path}: {exc}", transient=False) from exc

    def _tune_embedded_storage(self) -> None:
        """Put the embedded store's SQLite file in WAL mode with `synchronous=NORMAL`.

        qdrant-client persists every point of an upsert in its own SQLite transaction, and by default
        each commit waits for an fsync: 1-15 ms per point on this machine's disks, i.e. 70-700 points/s,
        which makes a large import take hours. In WAL mode with `synchronous=NORMAL` a commit is still
        atomic and survives a killed process (tested: tests/test_memory_import.py kills an import);
        only an OS crash or power cut can lose the last commits, which a re-import or the job records
        restore. The connection is not public API, hence the guarded reach and the setting to turn it off.
        """
        try:
            local = self._client._client  # QdrantLocal: private, hence the guard and the setting
            connection = local.collections[self.collection].storage.storage  # type: ignore[attr-defined]
            with self._lock:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
        except (AttributeError, KeyError, TypeError) as exc:
            logger.warning("memory: embedded SQLite tuning unavailable (%r); one fsync per stored point", exc)

    def _build_index(self) -> LexicalIndex:
        index = LexicalIndex()
        for point in self._scroll(INDEX_PAGE, ["statement_hash", "body_hash"], [SPARSE_VECTOR]):
            vector = (point.vector or {}).get(SPARSE_VECTOR)  # type: ignore[union-attr]
            payload = point.payload or {}
            if vector is not None:
                index.add(
                    str(point.id),
                    payload.get("statement_hash", ""),
                    payload.get("body_hash", ""),
                    vector.indices,
                    vector.values,
                )
        logger.info("memory: in-process lexical index over %d points", len(index))
        return index

    def _dense_size(self) -> int | None:
        if self._embeddings is None:
            return None
        return len(self._embeddings.embed(["theorem probe : True"])[0])

    def _ensure_collection(self) -> None:
        with self._lock:
            exists = self._call(self._client.collection_exists, self.collection)
        if exists:
            self._check_schema()
        else:
            self._create_collection()
        if self.server:
            self._ensure_payload_indexes()

    def _ensure_payload_indexes(self) -> None:
        """Server only (local mode ignores them, and warns): keyword/float indexes on the filtered fields.

        Checked at every start, so a collection whose creation was interrupted gets them too.
        """
        with self._lock:
            present = set(self._call(self._client.get_collection, self.collection).payload_schema or {})
            wanted = [(name, models.PayloadSchemaType.KEYWORD) for name in KEYWORD_FIELDS]
            wanted += [(name, models.PayloadSchemaType.FLOAT) for name in FLOAT_FIELDS]
            for name, schema in wanted:
                if name not in present:
                    self._call(self._client.create_payload_index, self.collection, name, field_schema=schema)

    def _create_collection(self) -> None:
        dense_size = self._dense_size()
        config = collection_config(self.settings, dense_size=dense_size, server=self.server)
        with self._lock:
            try:
                self._call(self._client.create_collection, self.collection, **config)
            except MemoryError_:
                # Another process may have created it a moment ago (a server is shared).
                if not self._call(self._client.collection_exists, self.collection):
                    raise
        logger.info(
            "memory: created collection %s (%s, dense=%s)",
            self.collection,
            "server" if self.server else "embedded",
            dense_size,
        )

    def _check_schema(self) -> None:
        with self._lock:
            info = self._call(self._client.get_collection, self.collection)
        params = info.config.params
        sparse = params.sparse_vectors or {}
        if SPARSE_VECTOR not in sparse:
            raise MemoryError_(
                f"collection {self.collection} exists but has no sparse vector {SPARSE_VECTOR!r}: it was not made "
                "by this service; choose another OPROVER_QDRANT_COLLECTION",
                transient=False,
            )
        dense = params.vectors if isinstance(params.vectors, dict) else {}
        if self._embeddings is not None and DENSE_VECTOR not in dense:
            raise MemoryError_(
                f"embeddings are configured but collection {self.collection} has no dense vector; import the "
                "proofs into a new collection (OPROVER_QDRANT_COLLECTION) to enable them",
                transient=False,
            )
        if self._embeddings is None and DENSE_VECTOR in dense:
            logger.warning(
                "memory: collection %s has dense vectors but no embeddings endpoint is configured; "
                "new proofs are stored without one and retrieval is lexical only",
                self.collection,
            )

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call, turning every client/transport failure into `MemoryError_`."""
        if self._closed:
            raise MemoryError_("the proof memory is closed", transient=False)
        try:
            if self.server:
                return fn(*args, **kwargs)
            with _warnings_to_log():
                return fn(*args, **kwargs)
        except MemoryError_:
            raise
        except UnexpectedResponse as exc:
            status = exc.status_code or 0
            raise MemoryError_(
                f"Qdrant answered {status}: {exc.content[:300]!r}", transient=status >= 500 or status == 429
            ) from exc
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise MemoryError_(f"Qdrant rejected the request: {exc}", transient=False) from exc
        except Exception as exc:  # transport errors of httpx/grpc, RuntimeError of a closed local client
            raise MemoryError_(f"Qdrant call failed: {exc!r}") from exc

    # ----------------------------------------------------------------- reading

    def _exclusion_filter(self, banned: set[str]) -> models.Filter:
        return models.Filter(
            must_not=[models.FieldCondition(key="body_hash", match=models.MatchAny(any=sorted(banned)))]
        )

    def search(self, formal_statement: str, *, top_k: int, exclude: Iterable[str] = ()) -> list[RetrievedProof]:
        """Up to `top_k` verified proofs of statements like `formal_statement`, best first.

        Never returns the target's own theorem (any name, layout or comments), a statement in
        `exclude`, or one in the configured exclusion file.
        """
        if top_k <= 0:
            return []
        if isinstance(exclude, str):  # one statement, not an iterable of characters
            exclude = [exclude]
        banned = {body_hash(formal_statement), *(body_hash(s) for s in exclude), *self._excluded}
        tokens = statement_tokens(formal_statement)
        dense = self._embeddings.embed([formal_statement])[0] if self._embeddings is not None else None
        if not tokens and dense is None:
            return []
        limit = top_k * OVERFETCH
        sparse = None
        if tokens:
            indices, values = query_vector(tokens)
            sparse = models.SparseVector(indices=indices, values=values)
        if self._index is not None:
            points = self._search_embedded(sparse, dense, banned, limit)
        else:
            points = self._search_qdrant(sparse, dense, banned, limit)
        results: list[RetrievedProof] = []
        seen: set[str] = set()
        for point in points:
            payload = point.payload or {}
            # Belt and braces: the filter already did this, but "never the target" must not hang on it.
            if payload.get("body_hash") in banned:
                continue
            # One proof per theorem: the same statement, or the same one renamed (same body hash), counts once.
            keys_ = {payload.get("statement_hash") or str(point.id), payload.get("body_hash") or str(point.id)}
            if keys_ & seen:
                continue
            seen |= keys_
            results.append(
                RetrievedProof(
                    id=str(point.id),
                    formal_statement=payload.get("formal_statement", ""),
                    proof=payload.get("proof", ""),
                    score=float(point.score),
                )
            )
            if len(results) == top_k:
                break
        return results

    def _search_qdrant(
        self,
        sparse: models.SparseVector | None,
        dense: list[float] | None,
        banned: set[str],
        limit: int,
    ) -> list[models.ScoredPoint]:
        """One query to Qdrant: sparse, or sparse and dense fused by rank (RRF) inside Qdrant."""
        kwargs: dict[str, Any] = {
            "limit": limit,
            "with_payload": True,
            "query_filter": self._exclusion_filter(banned),
        }
        if dense is None:
            kwargs.update(query=sparse, using=SPARSE_VECTOR)
        else:
            prefetch = [
                models.Prefetch(
                    query=dense,
                    using=DENSE_VECTOR,
                    limit=limit,
                    params=(
                        models.SearchParams(
                            hnsw_ef=self.settings.hnsw_ef,
                            quantization=models.QuantizationSearchParams(rescore=True, oversampling=2.0),
                        )
                        if self.server
                        else None
                    ),
                )
            ]
            if sparse is not None:
                prefetch.append(models.Prefetch(query=sparse, using=SPARSE_VECTOR, limit=limit))
            kwargs.update(prefetch=prefetch, query=models.FusionQuery(fusion=models.Fusion.RRF))
        with self._lock:
            return list(self._call(self._client.query_points, self.collection, **kwargs).points)

    def _search_embedded(
        self,
        sparse: models.SparseVector | None,
        dense: list[float] | None,
        banned: set[str],
        limit: int,
    ) -> list[models.ScoredPoint]:
        """The lexical list from the in-process index; a dense list from Qdrant; fused as Qdrant fuses."""
        assert self._index is not None
        with self._lock:
            hits = (
                self._index.search(sparse.indices, sparse.values, limit=limit, banned_bodies=banned)
                if sparse is not None
                else []
            )
            ranked = [models.ScoredPoint(id=h.point_id, score=h.score, version=0) for h in hits]
            if dense is not None:
                dense_points = self._call(
                    self._client.query_points,
                    self.collection,
                    query=dense,
                    using=DENSE_VECTOR,
                    limit=limit,
                    query_filter=self._exclusion_filter(banned),
                    with_payload=False,
                ).points
                ranked = reciprocal_rank_fusion([dense_points, ranked], limit=limit) if ranked else dense_points
            if not ranked:
                return []
            records = self._call(
                self._client.retrieve, self.collection, ids=[str(p.id) for p in ranked], with_payload=True
            )
        payloads = {str(r.id): r.payload for r in records}
        return [
            models.ScoredPoint(id=p.id, score=p.score, version=0, payload=payloads[str(p.id)])
            for p in ranked
            if str(p.id) in payloads
        ]

    def lookup(self, formal_statement: str, *, limit: int = 8) -> list[RetrievedProof]:
        """Proofs stored for exactly this statement (same `statement_hash`): a cache hit, not prompt material."""
        key = statement_hash(formal_statement)
        flt = models.Filter(must=[models.FieldCondition(key="statement_hash", match=models.MatchValue(value=key))])
        with self._lock:
            points, _ = self._call(
                self._client.scroll, self.collection, scroll_filter=flt, limit=limit, with_payload=True
            )
        return [
            RetrievedProof(
                id=str(p.id), formal_statement=p.payload["formal_statement"], proof=p.payload["proof"], score=1.0
            )
            for p in points
        ]

    def count(self) -> int:
        with self._lock:
            return int(self._call(self._client.count, self.collection, exact=True).count)

    def iter_proofs(self, *, page: int = SCROLL_PAGE) -> Iterator[VerifiedProof]:
        """Every stored proof, in id order, a page at a time (bounded memory)."""
        for point in self._scroll(page, True, False):
            yield VerifiedProof.from_payload(point.payload or {})

    def _scroll(self, page: int, with_payload: Any, with_vectors: Any) -> Iterator[Any]:
        """Every point of the collection, in id order, fetched `page` at a time (the lock held per page only)."""
        offset = None
        while True:
            with self._lock:
                points, offset = self._call(
                    self._client.scroll,
                    self.collection,
                    limit=page,
                    offset=offset,
                    with_payload=with_payload,
                    with_vectors=with_vectors,
                )
            yield from points
            if offset is None:
                return

    def stats(self) -> dict[str, Any]:
        with self._lock:
            info = self._call(self._client.get_collection, self.collection)
        vectors = info.config.params.vectors
        return {
            "backend": "server" if self.server else "embedded",
            "location": self.settings.url if self.server else str(Path(self.settings.path).resolve()),
            "collection": self.collection,
            "points": self.count(),
            "status": str(getattr(info.status, "value", info.status)),
            "segments": info.segments_count,
            "indexed_vectors": info.indexed_vectors_count,
            "dense_vector": DENSE_VECTOR in vectors if isinstance(vectors, dict) else False,
            "excluded_statements": len(self._excluded),
            "lexical_index": "in-process" if self._index is not None else "qdrant",
        }

    def health(self) -> None:
        """Raise `MemoryError_` unless the collection answers."""
        with self._lock:
            self._call(self._client.get_collection, self.collection)

    # ----------------------------------------------------------------- writing

    def _existing(self, ids: Sequence[str]) -> set[str]:
        with self._lock:
            points = self._call(
                self._client.retrieve, self.collection, ids=list(ids), with_payload=False, with_vectors=False
            )
        return {str(p.id) for p in points}

    def add(self, proofs: Sequence[VerifiedProof]) -> int:
        """Store the proofs not stored yet (by statement and proof hash); return how many were new."""
        unique: dict[str, VerifiedProof] = {}
        for proof in proofs:
            unique.setdefault(proof.point_id, proof)
        if not unique:
            return 0
        stored = self._existing(list(unique))
        fresh = [pid for pid in unique if pid not in stored]
        if not fresh:
            return 0
        dense: list[list[float]] | None = None
        if self._embeddings is not None:
            dense = self._embeddings.embed([unique[pid].formal_statement for pid in fresh])
        points: list[models.PointStruct] = []
        sparse: dict[str, tuple[list[int], list[float]]] = {}
        for i, pid in enumerate(fresh):
            proof = unique[pid]
            indices, values = sparse[pid] = document_vector(proof.tokens())
            vector: dict[str, Any] = {SPARSE_VECTOR: models.SparseVector(indices=indices, values=values)}
            if dense is not None:
                vector[DENSE_VECTOR] = dense[i]
            points.append(models.PointStruct(id=pid, vector=vector, payload=proof.payload()))
        with self._lock:
            # Re-check under the lock: another thread may have stored some of these meanwhile, and the
            # count returned must be exact within this process.
            already = self._existing(fresh)
            points = [p for p in points if p.id not in already]
            if points:
                self._call(self._client.upsert, self.collection, points=points, wait=True)
                if self._index is not None:
                    for point in points:
                        pid = str(point.id)
                        self._index.add(pid, unique[pid].statement_hash, unique[pid].body_hash, *sparse[pid])
        return len(points)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                client = getattr(self, "_client", None)
                if client is not None:
                    client.close()
            finally:
                if self._embeddings is not None:
                    self._embeddings.close()

    def __enter__(self) -> ProofMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
