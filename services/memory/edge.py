"""The embedded store: Qdrant Edge (`qdrant-edge-py`), Qdrant's own segment engine inside this process.

Layout under `OPROVER_QDRANT_PATH` (one directory per machine):

    owner.lock          held (flock) by the one process that has the memory open; it names its pid
    <collection>/       the Edge shard: WAL, segments, edge_config.json
    inbox/              imports handed over to the owner while it runs (handoff.py)

The engine is the server's: an inverted index for the sparse vector with the IDF modifier computed from
live document frequencies, payload indexes that the exclusion filter uses inside the query, RRF fusion,
HNSW for the dense vector, a write-ahead log (an upsert that returned survives a killed process), the
payload on disk (memory-mapped), the sparse index in RAM. Opening reads the segments; nothing is
rebuilt.

One process per directory. The engine's WAL takes an exclusive lock of its own (a second opener gets
"Can't init WAL: WouldBlock"); `owner.lock` is taken first so the second opener gets a message that says
what to do instead, before any file of the shard is touched.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from services.errors import MemoryError_
from services.memory.backend import RRF_K, SEARCH_FIELDS, Hit, Point, Sparse
from services.memory.schema import (
    DENSE_VECTOR,
    FLOAT_FIELDS,
    KEYWORD_FIELDS,
    SCREEN_REASON,
    SPARSE_VECTOR,
)

logger = logging.getLogger(__name__)

LOCK_FILE = "owner.lock"
CONFIG_FILE = "edge_config.json"


class DirectoryLock:
    """An exclusive, non-blocking flock on `<dir>/owner.lock`, released by `release()` or process death."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MemoryError_(f"cannot lock {self.path}: {exc}", transient=False) from exc
            raise MemoryError_(
                f"the embedded memory {self.path.parent} is open in another process{holder} (or in another "
                "ProofMemory of this one). Exactly one process may open it: `oprover memory import` hands its "
                "proofs to that process by itself; for anything else stop it, or run a Qdrant server and set "
                "OPROVER_QDRANT_URL.",
                transient=False,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    @staticmethod
    def held(directory: Path) -> bool:
        """True when another process (or another open ProofMemory) owns `directory`."""
        path = directory / LOCK_FILE
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # also releases the probe's lock if it got one
        return False


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _error(exc: Exception, what: str) -> MemoryError_:
    # The engine raises plain Exceptions with the Rust error's text; a failing disk is worth a retry, a
    # rejected request or a broken shard is not.
    text = str(exc)
    transient = any(word in text for word in ("No space", "Too many open files", "Resource temporarily"))
    return MemoryError_(f"embedded Qdrant: {what} failed: {text[:300]}", transient=transient)


def _admitted() -> qe.IsEmptyCondition:
    return qe.IsEmptyCondition(SCREEN_REASON)


def _search_filter(excluded: Sequence[str]) -> qe.Filter:
    """Only admitted points; none of the excluded theorems."""
    must_not: list[Any] | None = None
    if excluded:
        must_not = [qe.FieldCondition("body_hash", match=qe.MatchAny(sorted(excluded)))]
    return qe.Filter(must=[_admitted()], must_not=must_not)


def _sparse_of(vector: Any) -> Sparse | None:
    if vector is None:
        return None
    return list(vector.indices), [float(v) for v in vector.values]


class EdgeBackend:
    kind = "embedded"

    def __init__(self, directory: Path, collection: str, *, dense_size: Any) -> None:
        """Open (or create) the shard `directory/collection`; `dense_size()` is asked only on creation."""
        self.directory = directory
        self.location = str(directory.resolve())
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MemoryError_(
                f"cannot create the embedded memory directory {directory}: {exc}", transient=False
            ) from exc
        self._legacy_check(directory, collection)
        self._lock = DirectoryLock(directory)
        self._lock.acquire()
        self._shard: qe.EdgeShard | None = None
        try:
            shard_dir = directory / collection
            if (shard_dir / CONFIG_FILE).exists():
                self._shard = self._call(qe.EdgeShard.load, str(shard_dir), what="opening the shard")
            else:
                size = dense_size()
                self._shard = self._call(qe.EdgeShard.create, str(shard_dir), self._config(size), what="creating")
                logger.info("memory: created embedded shard %s (dense=%s)", shard_dir, size)
            self.has_dense = self._shard_has_dense(shard_dir)
            self._ensure_payload_indexes()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- set-up

    @staticmethod
    def _legacy_check(directory: Path, collection: str) -> None:
        if (directory / "collection" / collection / "storage.sqlite").exists() and not (
            directory / collection
        ).exists():
            raise MemoryError_(
                f"{directory} holds a memory in the earlier embedded format (qdrant-client local mode). Move it "
                "aside, point OPROVER_QDRANT_PATH at a new directory and `oprover memory import` an export of it "
                "(made with the earlier release's `oprover memory export`).",
                transient=False,
            )

    @staticmethod
    def _config(dense_size: int | None) -> qe.EdgeConfig:
        vectors = {}
        if dense_size is not None:
            vectors[DENSE_VECTOR] = qe.EdgeVectorParams(size=dense_size, distance=qe.Distance.Cosine)
        return qe.EdgeConfig(
            vectors=vectors or None,
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            # Proof texts are most of the bytes: on disk, read only for the few points a search returns.
            payload_memory=qe.Memory.Cold,
        )

    @staticmethod
    def _shard_has_dense(shard_dir: Path) -> bool:
        import json

        try:
            config = json.loads((shard_dir / CONFIG_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise MemoryError_(f"cannot read {shard_dir / CONFIG_FILE}: {exc}", transient=False) from exc
        sparse = config.get("sparse_vectors") or {}
        if SPARSE_VECTOR not in sparse:
            raise MemoryError_(
                f"the shard {shard_dir} has no sparse vector {SPARSE_VECTOR!r}: it was not made by this service; "
                "choose another OPROVER_QDRANT_COLLECTION",
                transient=False,
            )
        return DENSE_VECTOR in (config.get("vectors") or {})

    def _ensure_payload_indexes(self) -> None:
        present = set(self._call(lambda: self.shard.info().payload_schema, what="reading the shard info"))
        wanted = [(name, qe.PayloadSchemaType.Keyword) for name in KEYWORD_FIELDS]
        wanted += [(name, qe.PayloadSchemaType.Float) for name in FLOAT_FIELDS]
        for name, schema in wanted:
            if name not in present:
                self._call(self.shard.update, qe.UpdateOperation.create_field_index(name, schema), what="indexing")

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise MemoryError_("the proof memory is closed", transient=False)
        return self._shard

    @staticmethod
    def _call(fn: Any, *args: Any, what: str) -> Any:
        try:
            return fn(*args)
        except MemoryError_:
            raise
        except Exception as exc:  # the bindings raise bare Exceptions carrying the engine's error text
            raise _error(exc, what) from exc

    # ----------------------------------------------------------------- reading

    def query(self, sparse: Sparse | None, dense: list[float] | None, excluded: Sequence[str], limit: int) -> list[Hit]:
        flt = _search_filter(excluded)
        lexical = qe.Query.Nearest(qe.SparseVector(*sparse), using=SPARSE_VECTOR) if sparse is not None else None
        if dense is None or not self.has_dense:
            if lexical is None:
                return []
            request = qe.QueryRequest(limit=limit, query=lexical, filter=flt, with_payload=SEARCH_FIELDS)
        else:
            prefetches = [qe.Prefetch(limit=limit, query=qe.Query.Nearest(dense, using=DENSE_VECTOR), filter=flt)]
            if lexical is not None:
                prefetches.append(qe.Prefetch(limit=limit, query=lexical, filter=flt))
            fusion: Any = qe.Fusion.Rrf(k=RRF_K)  # the stubs type the fusion classes apart from `Fusion`
            request = qe.QueryRequest(
                limit=limit, prefetches=prefetches, query=fusion, filter=flt, with_payload=SEARCH_FIELDS
            )
        points = self._call(self.shard.query, request, what="query")
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def existing(self, ids: Sequence[str]) -> set[str]:
        records = self._call(lambda: self.shard.retrieve(list(ids), False, False), what="retrieve")
        return {str(r.id) for r in records}

    def page(self, offset: Any, limit: int, *, flagged_only: bool, with_vectors: bool) -> tuple[list[Point], Any]:
        flt = qe.Filter(must_not=[_admitted()]) if flagged_only else None
        request = qe.ScrollRequest(offset=offset, limit=limit, filter=flt, with_payload=True, with_vector=with_vectors)
        records, next_offset = self._call(self.shard.scroll, request, what="scroll")
        points = []
        for r in records:
            vectors = r.vector if isinstance(r.vector, dict) else {}
            dense = vectors.get(DENSE_VECTOR)
            points.append(
                Point(
                    str(r.id),
                    dict(r.payload or {}),
                    _sparse_of(vectors.get(SPARSE_VECTOR)),
                    [float(x) for x in dense] if dense is not None else None,
                )
            )
        return points, next_offset

    def lookup(self, statement_hash: str, limit: int) -> list[Hit]:
        flt = qe.Filter(must=[qe.FieldCondition("statement_hash", match=qe.MatchValue(statement_hash)), _admitted()])
        records, _ = self._call(
            self.shard.scroll, qe.ScrollRequest(limit=limit, filter=flt, with_payload=True), what="scroll"
        )
        return [Hit(str(r.id), 1.0, dict(r.payload or {})) for r in records]

    def count(self, *, flagged: bool | None = None) -> int:
        flt = None
        if flagged is not None:
            flt = qe.Filter(must_not=[_admitted()]) if flagged else qe.Filter(must=[_admitted()])
        return int(self._call(self.shard.count, qe.CountRequest(exact=True, filter=flt), what="count"))

    def flag_reasons(self, limit: int) -> dict[str, int]:
        request = qe.FacetRequest(
            SCREEN_REASON,
            limit=limit,
            exact=True,
            filter=qe.Filter(must_not=[_admitted()]),
        )
        response = self._call(self.shard.facet, request, what="facet")
        return {str(hit.value): int(hit.count) for hit in response.hits}

    def describe(self) -> dict[str, Any]:
        info = self._call(self.shard.info, what="reading the shard info")
        return {"status": "ok", "segments": info.segments_count, "indexed_vectors": info.indexed_vectors_count}

    def health(self) -> None:
        self._call(self.shard.info, what="reading the shard info")

    # ----------------------------------------------------------------- writing

    def upsert(self, points: Sequence[Point]) -> None:
        edge_points = []
        for p in points:
            vector: dict[str, Any] = {}
            if p.sparse is not None:
                vector[SPARSE_VECTOR] = qe.SparseVector(*p.sparse)
            if p.dense is not None and self.has_dense:
                vector[DENSE_VECTOR] = p.dense
            edge_points.append(qe.Point(p.id, vector, p.payload))
        # InsertOnly: a point that exists keeps its first copy's provenance, even if two writers race.
        operation = qe.UpdateOperation.upsert_points(edge_points, update_mode=qe.UpdateMode.InsertOnly)
        self._call(self.shard.update, operation, what="upsert")

    def set_screen_reason(self, ids: Sequence[str], reason: str | None) -> None:
        operation = qe.UpdateOperation.set_payload(list(ids), {SCREEN_REASON: reason})
        self._call(self.shard.update, operation, what="set_payload")

    def close(self) -> None:
        try:
            if self._shard is not None:
                shard, self._shard = self._shard, None
                try:
                    shard.flush()
                finally:
                    shard.close()
        finally:
            self._lock.release()
