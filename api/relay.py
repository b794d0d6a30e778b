"""The raw model through the gateway: chat requests for any model but `oprover` go to the generator unchanged.

One endpoint then serves both the proving loop and the model itself, so a chat UI can offer either. The body is
forwarded byte for byte (our bearer key is not: the generator gets its own, OPROVER_GENERATOR_API_KEY), and the
answer comes back as the generator sent it: a JSON completion, or its SSE stream chunk for chunk. The
generator's errors keep their status and are put in our error envelope (their message, type and code kept);
a generator that cannot be reached is a 503 naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import httpx
from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.errors import error_response
from services.errors import GeneratorError
from services.settings import Settings

logger = logging.getLogger(__name__)

# Response headers of the generator that describe its body's framing, which our server sets itself.
_HOP_HEADERS = {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive", "date", "server"}


class GeneratorRelay:
    def __init__(self, settings: Settings) -> None:
        gen = settings.generator
        self.base_url = str(gen.url).rstrip("/") if gen.url is not None else None
        self.models_timeout_s = settings.chat.relay_models_timeout_s
        headers = {"Authorization": f"Bearer {gen.api_key}"} if gen.api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(gen.request_timeout_s, connect=gen.connect_timeout_s),
            limits=httpx.Limits(max_connections=gen.max_connections, max_keepalive_connections=32),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url(self, path: str) -> str:
        if self.base_url is None:
            raise GeneratorError("OPROVER_GENERATOR_URL is not set: no model to relay to", transient=False)
        return f"{self.base_url}{path}"

    async def models(self) -> list[dict[str, Any]]:
        """The generator's own model list; empty (and logged) when it cannot be read."""
        if self.base_url is None:
            return []
        try:
            response = await self._http.get(self._url("/models"), timeout=self.models_timeout_s)
            response.raise_for_status()
            data = response.json()["data"]
            return [entry for entry in data if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            logger.warning("generator model list unavailable: %s", exc)
            return []

    async def chat(self, body: bytes, *, stream: bool) -> Response:
        url = self._url("/chat/completions")
        request = self._http.build_request("POST", url, content=body, headers={"Content-Type": "application/json"})
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise GeneratorError(f"not reachable at {self.base_url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400 or not stream:
            try:
                content = await response.aread()
            except httpx.HTTPError as exc:
                raise GeneratorError(f"the answer was cut off: {type(exc).__name__}: {exc}") from exc
            finally:
                await response.aclose()
            if response.status_code >= 400:
                return _generator_error(response.status_code, content)
            return Response(content, status_code=response.status_code, headers=_passed_headers(response))
        # Validated and answered 200 by the generator: from here on its stream is ours, chunk for chunk.
        return StreamingResponse(_passthrough(response), status_code=200, headers=_passed_headers(response))


async def _passthrough(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        # The status line is sent: the failure can only travel as a data frame, then the stream's end.
        logger.warning("relay: the generator's stream broke: %s", exc)
        envelope = {
            "error": {
                "message": f"generator: stream cut off ({exc})",
                "type": "server_error",
                "param": None,
                "code": "generator_stream_error",
            }
        }
        yield f"data: {json.dumps(envelope)}\n\ndata: [DONE]\n\n".encode()
    finally:
        # A client that went away cancels us: close the upstream stream anyway (the generator then aborts).
        with anyio.CancelScope(shield=True):
            await response.aclose()


def _passed_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.lower() not in _HOP_HEADERS}


def _generator_error(status: int, content: bytes) -> JSONResponse:
    """The generator's error, same status, in our envelope (its own fields kept when it used OpenAI's shape)."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        return error_response(
            status,
            str(error.get("message") or f"the generator answered {status}"),
            param=error.get("param") if isinstance(error.get("param"), str) else None,
            code=str(code) if code is not None else None,
            type_=str(error["type"]) if error.get("type") else None,
        )
    if isinstance(body, dict) and isinstance(body.get("message"), str):  # some servers send a bare message
        return error_response(status, body["message"], code="generator_error")
    text = content.decode(errors="replace").strip()[:500] or f"the generator answered {status}"
    return error_response(status, f"generator: {text}", code="generator_error")


def get_relay(request: Request) -> GeneratorRelay:
    return request.app.state.relay


RelayDep = Annotated[GeneratorRelay, Depends(get_relay)]
