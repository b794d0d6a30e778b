"""The memory on a Qdrant server, through qdrant-client (`OPROVER_QDRANT_URL`): several machines, one store.

The collection is created on first use with the settings that suit millions of points (docs/memory.md):
payload on disk, the sparse inverted index on disk, the optional dense vector's originals on disk with an
int8 copy and an HNSW graph in RAM, and payload indexes on every filtered field (checked at every start,
so a collection whose creation was interrupted gets them too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from services.errors import MemoryError_
from services.memory.backend import SEARCH_FIELDS, Hit, Point, Sparse
from services.memory.schema import (
    DENSE_VECTOR,
    FLOAT_FIELDS,
    KEYWORD_FIELDS,
    SCREEN_REASON,
    SPARSE_VECTOR,
)
from services.settings import QdrantSettings


def collection_config(settings: QdrantSettings, *, dense_size: int | None) -> dict[str, Any]:
    """Arguments of `create_collection` for a server holding millions of points.

    Payload on disk (proof texts are most of the bytes); the sparse inverted index on disk (memory-mapped;
    the page cache keeps the hot posting lists); for the optional dense vector, originals on disk with an
    int8 copy in RAM (4x smaller, rescored against the originals) under an HNSW graph kept in RAM.
    """
    vectors: dict[str, models.VectorParams] = {}
    if dense_size is not None:
        vectors[DENSE_VECTOR] = models.VectorParams(size=dense_size, distance=models.Distance.COSINE, on_disk=True)
    config: dict[str, Any] = {
        "vectors_config": vectors,
        "sparse_vectors_config": {
            SPARSE_VECTOR: models.SparseVectorParams(
                modifier=models.Modifier.IDF, index=models.SparseIndexParams(on_disk=True)
            )
        },
        "on_disk_payload": True,
        "hnsw_config": models.HnswConfigDiff(m=settings.hnsw_m, ef_construct=settings.hnsw_ef_construct, on_disk=False),
    }
    if settings.int8:
        config["quantization_config"] = models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
        )
    return config


def _admitted() -> models.IsEmptyCondition:
    return models.IsEmptyCondition(is_empty=models.PayloadField(key=SCREEN_REASON))


def search_filter(excluded: Sequence[str]) -> models.Filter:
    """Only admitted points (no screening reason; points stored before screening existed have none);
    none of the excluded theorems."""
    must_not: list[Any] | None = None
    if excluded:
        must_not = [models.FieldCondition(key="body_hash", match=models.MatchAny(any=sorted(excluded)))]
    return models.Filter(must=[_admitted()], must_not=must_not)


class ServerBackend:
    kind = "server"

    def __init__(self, client: QdrantClient, settings: QdrantSettings, *, dense_size: Callable[[], int | None]) -> None:
        """Use `client` (a server's, or in tests an embedded qdrant-client one) for `settings.collection`."""
        self.client = client
        self.settings = settings
        self.collection = settings.collection
        self.location = settings.url or "qdrant-client"
        self.has_dense = False
        if self._call(client.collection_exists, self.collection):
            self.has_dense = self._check_schema()
        else:
            size = dense_size()
            try:
                self._call(client.create_collection, self.collection, **collection_config(settings, dense_size=size))
            except MemoryError_:
                # Another process may have created it a moment ago (a server is shared).
                if not self._call(client.collection_exists, self.collection):
                    raise
            self.has_dense = size is not None
        self._ensure_payload_indexes()

    @classmethod
    def connect(cls, settings: QdrantSettings, *, dense_size: Callable[[], int | None]) -> ServerBackend:
        client = QdrantClient(url=settings.url, api_key=settings.api_key, timeout=int(settings.timeout_s))
        try:
            return cls(client, settings, dense_size=dense_size)
        except BaseException:
            client.close()
            raise

    def _check_schema(self) -> bool:
        params = self._call(self.client.get_collection, self.collection).config.params
        if SPARSE_VECTOR not in (params.sparse_vectors or {}):
            raise MemoryError_(
                f"collection {self.collection} exists but has no sparse vector {SPARSE_VECTOR!r}: it was not made "
                "by this service; choose another OPROVER_QDRANT_COLLECTION",
                transient=False,
            )
        return DENSE_VECTOR in (params.vectors if isinstance(params.vectors, dict) else {})

    def _ensure_payload_indexes(self) -> None:
        present = set(self._call(self.client.get_collection, self.collection).payload_schema or {})
        wanted = [(name, models.PayloadSchemaType.KEYWORD) for name in KEYWORD_FIELDS]
        wanted += [(name, models.PayloadSchemaType.FLOAT) for name in FLOAT_FIELDS]
        for name, schema in wanted:
            if name not in present:
                self._call(self.client.create_payload_index, self.collection, name, field_schema=schema)

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call, turning every client/transport failure into `MemoryError_`."""
        try:
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
        except Exception as exc:  # transport errors of httpx/grpc, RuntimeError of a closed client
            raise MemoryError_(f"Qdrant call failed: {exc!r}") from exc

    # ----------------------------------------------------------------- reading

    def query(self, sparse: Sparse | None, dense: list[float] | None, excluded: Sequence[str], limit: int) -> list[Hit]:
        """One query: sparse, or sparse and dense fused by rank (RRF) inside Qdrant."""
        flt = search_filter(excluded)
        lexical = models.SparseVector(indices=sparse[0], values=sparse[1]) if sparse is not None else None
        kwargs: dict[str, Any] = {"limit": limit, "with_payload": SEARCH_FIELDS, "query_filter": flt}
        if dense is None or not self.has_dense:
            if lexical is None:
                return []
            kwargs.update(query=lexical, using=SPARSE_VECTOR)
        else:
            params = models.SearchParams(
                hnsw_ef=self.settings.hnsw_ef,
                quantization=models.QuantizationSearchParams(rescore=True, oversampling=2.0),
            )
            prefetch = [models.Prefetch(query=dense, using=DENSE_VECTOR, limit=limit, params=params)]
            if lexical is not None:
                prefetch.append(models.Prefetch(query=lexical, using=SPARSE_VECTOR, limit=limit))
            kwargs.update(prefetch=prefetch, query=models.FusionQuery(fusion=models.Fusion.RRF))
        points = self._call(self.client.query_points, self.collection, **kwargs).points
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def existing(self, ids: Sequence[str]) -> set[str]:
        points = self._call(
            self.client.retrieve, self.collection, ids=list(ids), with_payload=False, with_vectors=False
        )
        return {str(p.id) for p in points}

    def page(self, offset: Any, limit: int, *, flagged_only: bool, with_vectors: bool) -> tuple[list[Point], Any]:
        flt = models.Filter(must_not=[_admitted()]) if flagged_only else None
        records, next_offset = self._call(
            self.client.scroll,
            self.collection,
            scroll_filter=flt,
            limit=limit,
            offset=offset,
            with_payload=True,
            with_vectors=with_vectors,
        )
        points = []
        for r in records:
            vectors = r.vector if isinstance(r.vector, dict) else {}
            lexical = vectors.get(SPARSE_VECTOR)
            dense = vectors.get(DENSE_VECTOR)
            points.append(
                Point(
                    str(r.id),
                    dict(r.payload or {}),
                    (list(lexical.indices), list(lexical.values)) if lexical is not None else None,
                    list(dense) if dense is not None else None,
                )
            )
        return points, next_offset

    def lookup(self, statement_hash: str, limit: int) -> list[Hit]:
        flt = models.Filter(
            must=[
                models.FieldCondition(key="statement_hash", match=models.MatchValue(value=statement_hash)),
                _admitted(),
            ]
        )
        records, _ = self._call(self.client.scroll, self.collection, scroll_filter=flt, limit=limit, with_payload=True)
        return [Hit(str(r.id), 1.0, dict(r.payload or {})) for r in records]

    def count(self, *, flagged: bool | None = None) -> int:
        flt = None
        if flagged is not None:
            flt = models.Filter(must_not=[_admitted()]) if flagged else models.Filter(must=[_admitted()])
        return int(self._call(self.client.count, self.collection, count_filter=flt, exact=True).count)

    def flag_reasons(self, limit: int) -> dict[str, int]:
        response = self._call(
            self.client.facet,
            self.collection,
            key=SCREEN_REASON,
            facet_filter=models.Filter(must_not=[_admitted()]),
            limit=limit,
            exact=True,
        )
        return {str(hit.value): int(hit.count) for hit in response.hits}

    def describe(self) -> dict[str, Any]:
        info = self._call(self.client.get_collection, self.collection)
        return {
            "status": str(getattr(info.status, "value", info.status)),
            "segments": info.segments_count,
            "indexed_vectors": info.indexed_vectors_count,
        }

    def health(self) -> None:
        self._call(self.client.get_collection, self.collection)

    # ----------------------------------------------------------------- writing

    def upsert(self, points: Sequence[Point]) -> None:
        structs = []
        for p in points:
            vector: dict[str, Any] = {}
            if p.sparse is not None:
                vector[SPARSE_VECTOR] = models.SparseVector(indices=p.sparse[0], values=p.sparse[1])
            if p.dense is not None and self.has_dense:
                vector[DENSE_VECTOR] = p.dense
            structs.append(models.PointStruct(id=p.id, vector=vector, payload=p.payload))
        self._call(self.client.upsert, self.collection, points=structs, wait=True)

    def set_screen_reason(self, ids: Sequence[str], reason: str | None) -> None:
        self._call(
            self.client.set_payload,
            self.collection,
            payload={SCREEN_REASON: reason},
            points=list(ids),
            wait=True,
        )

    def close(self) -> None:
        self.client.close()
