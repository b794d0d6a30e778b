"""Dense statement embeddings from an OpenAI-compatible `/v1/embeddings` endpoint (optional).

Only used when `OPROVER_QDRANT_EMBEDDINGS_URL` is set: nothing is downloaded or run locally. The
endpoint is any server speaking the OpenAI embeddings protocol (vLLM, SGLang, TEI, Infinity...).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx

from services.errors import MemoryError_
from services.settings import QdrantSettings

logger = logging.getLogger(__name__)

MAX_BATCH = 256  # inputs per request; servers commonly cap a request at a few hundred inputs


class EmbeddingsClient:
    """A small synchronous client: `embed(texts) -> vectors`, errors as `MemoryError_`."""

    def __init__(self, settings: QdrantSettings, *, transport: httpx.BaseTransport | None = None) -> None:
        if settings.embeddings_url is None:
            raise ValueError("EmbeddingsClient needs settings.embeddings_url")
        headers = {"Authorization": f"Bearer {settings.embeddings_api_key}"} if settings.embeddings_api_key else {}
        self._http = httpx.Client(
            base_url=str(settings.embeddings_url).rstrip("/") + "/",
            timeout=settings.embeddings_timeout_s,
            headers=headers,
            transport=transport,
        )
        self._model = settings.embeddings_model

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._first_model()
        return self._model

    def _first_model(self) -> str:
        data = self._request("GET", "models")
        models = data.get("data") or []
        if not models or not isinstance(models[0], dict) or "id" not in models[0]:
            raise MemoryError_("embeddings server lists no model; set OPROVER_QDRANT_EMBEDDINGS_MODEL", transient=False)
        return str(models[0]["id"])

    def _request(self, method: str, path: str, json: object | None = None) -> dict:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise MemoryError_(f"embeddings endpoint unreachable: {exc!r}") from exc
        if response.status_code >= 400:
            transient = response.status_code >= 500 or response.status_code == 429
            raise MemoryError_(
                f"embeddings endpoint answered {response.status_code}: {response.text[:300]}", transient=transient
            )
        try:
            data = response.json()
        except ValueError as exc:
            raise MemoryError_("embeddings endpoint sent a body that is not JSON") from exc
        if not isinstance(data, dict):
            raise MemoryError_("embeddings endpoint sent JSON that is not an object")
        return data

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), MAX_BATCH):
            chunk = list(texts[start : start + MAX_BATCH])
            data = self._request("POST", "embeddings", {"model": self.model, "input": chunk})
            items = data.get("data")
            if not isinstance(items, list) or len(items) != len(chunk):
                raise MemoryError_(f"embeddings endpoint returned {len(items or [])} vectors for {len(chunk)} inputs")
            # The protocol carries an `index` per item; order by it rather than trusting the list order.
            items = sorted(items, key=lambda item: item.get("index", 0))
            for item in items:
                vector = item.get("embedding")
                if not isinstance(vector, list) or not vector:
                    raise MemoryError_("embeddings endpoint returned an item without a float `embedding`")
                vectors.append([float(x) for x in vector])
        return vectors

    def close(self) -> None:
        self._http.close()
