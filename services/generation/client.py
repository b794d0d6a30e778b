"""The generation client: one OpenAI-compatible chat completion per call, over one pooled HTTP client.

Works with SGLang, vLLM or any server speaking `/v1/chat/completions`. Two faces:

- `AsyncGenerationClient`: the core, an `httpx.AsyncClient` with a connection pool;
- `GenerationClient`: the synchronous facade the generate worker's threads call. It owns one event loop in a
  background thread and submits each call to it, so every thread of the process shares one pool, one set of
  keep-alive connections and one place where timeouts are enforced.

Sampling is always explicit (`temperature`, `top_p`, `max_tokens`, `stop`): a server's defaults differ
between releases. k samples of one prompt are k concurrent single requests (`n>1` changed shape
between SGLang releases and broke behind the router); they share their prefix, which the radix cache reuses.

Failures, and what is retried (a bounded number of attempts within a total time budget):

    transient (retried, then GeneratorError(transient=True))   permanent (GeneratorError(transient=False))
    - connect errors, dropped connections, timeouts             - 400/413/422 (e.g. context too long)
    - 429 and 503, waiting `Retry-After` when given             - 401/403 (bad key), 404 (unknown model)
    - other 5xx, 408                                            - any other 4xx
    - an error frame or a cut-off in the middle of a stream

A 200 that ends with `finish_reason == "length"` is not an error: the completion is returned and the extractor
decides whether it holds code.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Mapping
from concurrent.futures import CancelledError as FutureCancelledError
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from services.domain import Sampling
from services.errors import GeneratorError
from services.settings import GeneratorSettings

logger = logging.getLogger(__name__)

# 5xx are retried except 501 (the server does not implement the route: retrying will not change that).
_PERMANENT_5XX = frozenset({501, 505})
_TRANSIENT_4XX = frozenset({408, 429})
# Longest single wait we accept from a `Retry-After` header; beyond it the budget decides.
_MAX_RETRY_AFTER_S = 120.0
# How much of an error body goes into a message (servers echo whole prompts back).
_ERROR_TEXT_CHARS = 500


@dataclass(frozen=True)
class Completion:
    """One finished generation: the answer, the thinking when the server separated it, and its costs."""

    content: str
    reasoning: str | None
    finish_reason: str | None
    usage: dict[str, int]  # prompt_tokens, completion_tokens, and cached_tokens/reasoning_tokens when reported
    model: str
    latency_ms: int  # from the call to the last byte, retries included
    request_id: str
    attempts: int = 1  # HTTP attempts this completion took
    ttft_ms: int | None = None  # time to the first streamed token of the successful attempt
    server_id: str | None = None  # the server's completion id, for its logs


class GenerationCancelled(Exception):
    """The caller cancelled the generation (the proof job was cancelled); the request was aborted."""


@dataclass
class _Failure(Exception):
    """One failed attempt; the retry loop decides whether another one is worth it."""

    message: str
    transient: bool
    retry_after_s: float | None = None
    status: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _error_text(response: httpx.Response) -> str:
    """The server's own message when it used the OpenAI error shape (SGLang and vLLM do), else the body."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return response.text[:_ERROR_TEXT_CHARS]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:_ERROR_TEXT_CHARS]
        if isinstance(body.get("message"), str):
            return body["message"][:_ERROR_TEXT_CHARS]
    return json.dumps(body)[:_ERROR_TEXT_CHARS]


def _status_failure(response: httpx.Response) -> _Failure:
    status = response.status_code
    text = _error_text(response)
    transient = status in _TRANSIENT_4XX or (status >= 500 and status not in _PERMANENT_5XX)
    retry_after = parse_retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
    return _Failure(f"HTTP {status}: {text}", transient=transient, retry_after_s=retry_after, status=status)


def _usage(raw: Any) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        return {}
    usage: dict[str, int] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        if isinstance(raw.get(key), int):
            usage[key] = raw[key]
    prompt_details = raw.get("prompt_tokens_details")
    if isinstance(prompt_details, Mapping) and isinstance(prompt_details.get("cached_tokens"), int):
        usage["cached_tokens"] = prompt_details["cached_tokens"]
    completion_details = raw.get("completion_tokens_details")
    if isinstance(completion_details, Mapping) and isinstance(completion_details.get("reasoning_tokens"), int):
        usage["reasoning_tokens"] = completion_details["reasoning_tokens"]
    if isinstance(raw.get("reasoning_tokens"), int):  # SGLang reports it at the top level
        usage.setdefault("reasoning_tokens", raw["reasoning_tokens"])
    return usage


def _reasoning_of(message: Mapping[str, Any]) -> str | None:
    # SGLang and older vLLM: `reasoning_content`; newer vLLM: `reasoning`.
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str):
            return value
    return None


# Error frames that name the request, not the server, as the cause: retrying sends the same bad request.
_PERMANENT_ERROR_MARKERS = ("context_length", "invalid_request", "badrequest", "too long", "maximum context")


def _error_frame_failure(error: Any) -> _Failure:
    message = error.get("message") if isinstance(error, Mapping) else str(error)
    code = error.get("code") if isinstance(error, Mapping) else None
    kind = error.get("type") if isinstance(error, Mapping) else None
    status = code if isinstance(code, int) else None
    if isinstance(code, str) and code.isdigit():
        status = int(code)
    described = " ".join(str(part) for part in (code, kind, message) if part).lower().replace(" ", "_")
    if status is None and any(marker.replace(" ", "_") in described for marker in _PERMANENT_ERROR_MARKERS):
        status = 400
    transient = status is None or status >= 500 or status in _TRANSIENT_4XX
    return _Failure(f"error in the stream: {message}", transient=transient, status=status)


class AsyncGenerationClient:
    """Chat completions against one OpenAI-compatible base URL (including `/v1`)."""

    def __init__(
        self,
        settings: GeneratorSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if settings.url is None:
            raise GeneratorError("OPROVER_GENERATOR_URL is not set", transient=False)
        self.settings = settings
        self.base_url = str(settings.url).rstrip("/")
        # The server root (health lives there, not under /v1).
        self.root_url = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        headers = {"Accept": "application/json"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._http = httpx.AsyncClient(
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(
                settings.request_timeout_s,
                connect=settings.connect_timeout_s,
                # Waiting for a pooled connection is part of the request's own time budget.
                pool=settings.request_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
                # Below the 5 s keep-alive of SGLang's and vLLM's HTTP servers: a pooled connection is dropped
                # before the server closes it, never reused as the server closes it (a failed send, a retry).
                keepalive_expiry=4.0,
            ),
        )
        self._model: str | None = settings.model
        self._model_lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- discovery -------------------------------------------------------------------------------------

    async def model(self) -> str:
        """The configured model, or the first one the server lists (asked once, then cached)."""
        if self._model:
            return self._model
        async with self._model_lock:
            if self._model:
                return self._model
            try:
                response = await self._http.get(f"{self.base_url}/models", timeout=self.settings.connect_timeout_s * 3)
            except httpx.HTTPError as exc:
                raise GeneratorError(f"listing models failed: {exc!r}", transient=True) from exc
            if response.status_code != 200:
                failure = _status_failure(response)
                raise GeneratorError(f"listing models failed: {failure}", transient=failure.transient)
            try:
                data = response.json()["data"]
                self._model = str(data[0]["id"])
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise GeneratorError(f"the server lists no model ({response.text[:200]!r})", transient=True) from exc
            logger.info("generator model: %s (first listed by %s)", self._model, self.base_url)
            return self._model

    async def health(self) -> None:
        """Raise GeneratorError unless the server says it is ready.

        SGLang and vLLM answer `GET /health` with 200 once the model is loaded (503 while starting or when
        the scheduler is stuck). Servers without it (404/405) are asked for their model list instead.
        """
        timeout = self.settings.connect_timeout_s * 3
        try:
            response = await self._http.get(f"{self.root_url}/health", timeout=timeout)
            if response.status_code in (404, 405):
                response = await self._http.get(f"{self.base_url}/models", timeout=timeout)
        except httpx.HTTPError as exc:
            raise GeneratorError(f"not reachable at {self.root_url}: {exc!r}", transient=True) from exc
        if response.status_code != 200:
            raise GeneratorError(
                f"not ready: {response.request.url.path} answered {response.status_code}", transient=True
            )

    # -- completion ------------------------------------------------------------------------------------

    async def complete(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling,
        *,
        request_id: str,
        extra: Mapping[str, Any] | None = None,
    ) -> Completion:
        """One completion, retried on transient failures within `max_retries` and `retry_budget_s`."""
        settings = self.settings
        started = time.monotonic()
        budget_end = started + settings.retry_budget_s
        attempt = 0
        while True:
            attempt += 1
            try:
                model = await self.model()
                async with asyncio.timeout(settings.request_timeout_s):
                    completion = await self._attempt(messages, sampling, model, request_id, attempt, extra)
            except GeneratorError as exc:  # the model list could not be read
                failure = _Failure(exc.message, transient=exc.transient)
            except TimeoutError:
                failure = _Failure(f"no complete answer within {settings.request_timeout_s:g}s", transient=True)
            except _Failure as exc:
                failure = exc
            else:
                latency_ms = int((time.monotonic() - started) * 1000)
                return replace(completion, latency_ms=latency_ms, attempts=attempt)

            prefix = f"request {request_id}: attempt {attempt}"
            if not failure.transient:
                logger.warning("%s rejected permanently: %s", prefix, failure)
                raise GeneratorError(f"{failure} (request {request_id})", transient=False)
            delay = self._backoff(attempt, failure.retry_after_s)
            remaining = budget_end - time.monotonic()
            if attempt > settings.max_retries or delay > remaining:
                why = (
                    f"{attempt} attempts"
                    if attempt > settings.max_retries
                    else f"retry budget of {settings.retry_budget_s:g}s"
                )
                logger.warning("%s failed, giving up after %s: %s", prefix, why, failure)
                raise GeneratorError(f"{failure} (request {request_id}; gave up after {why})", transient=True)
            logger.info("%s failed (%s); retrying in %.2fs", prefix, failure, delay)
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, _MAX_RETRY_AFTER_S)
        base = self.settings.backoff_base_s * (2 ** (attempt - 1))
        # "Equal jitter": at least half the exponential step, so k failed chains do not retry in lock step.
        return base / 2 + random.random() * base / 2

    def _body(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling,
        model: str,
        rid: str,
        extra: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "stream": self.settings.stream,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if self.settings.stream:
            body["stream_options"] = {"include_usage": True}
        if self.settings.send_rid:
            body["rid"] = rid
        if extra:
            for key, value in extra.items():
                body.setdefault(key, value)  # a profile's extras never override the explicit sampling
        return body

    async def _attempt(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling,
        model: str,
        request_id: str,
        attempt: int,
        extra: Mapping[str, Any] | None,
    ) -> Completion:
        # SGLang refuses a second live request with the same rid, and an aborted attempt may still be
        # winding down on the server when the next one arrives: each attempt gets its own rid.
        rid = request_id if attempt == 1 else f"{request_id}~{attempt}"
        body = self._body(messages, sampling, model, rid, extra)
        headers = {"X-Request-Id": rid}
        url = f"{self.base_url}/chat/completions"
        sent = time.monotonic()
        try:
            if not self.settings.stream:
                response = await self._http.post(url, json=body, headers=headers)
                if response.status_code != 200:
                    raise _status_failure(response)
                return self._parse_full(response, model, request_id)
            async with self._http.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _status_failure(response)
                return await self._parse_stream(response, model, request_id, sent)
        except httpx.TimeoutException as exc:
            raise _Failure(f"timed out: {exc!r}", transient=True) from exc
        except httpx.RequestError as exc:  # connect errors, resets, a cut-off stream, an undecodable body
            raise _Failure(f"transport error: {exc!r}", transient=True) from exc

    def _parse_full(self, response: httpx.Response, model: str, request_id: str) -> Completion:
        try:
            data = response.json()
            choice = data["choices"][0]
            message = choice["message"]
            if not isinstance(choice, Mapping) or not isinstance(message, Mapping):
                raise TypeError("choice or message is not an object")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Failure(f"malformed completion: {response.text[:200]!r}", transient=True) from exc
        content = message.get("content")
        return Completion(
            content=content if isinstance(content, str) else "",
            reasoning=_reasoning_of(message),
            finish_reason=choice.get("finish_reason"),
            usage=_usage(data.get("usage")),
            model=str(data.get("model") or model),
            latency_ms=0,
            request_id=request_id,
            server_id=data.get("id"),
        )

    async def _parse_stream(self, response: httpx.Response, model: str, request_id: str, sent: float) -> Completion:
        content: list[str] = []
        reasoning: list[str] = []
        finish_reason: str | None = None
        usage: dict[str, int] = {}
        served_model = model
        server_id: str | None = None
        ttft_ms: int | None = None
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, `: keep-alive` comments, `event:` lines
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(payload)
            except ValueError as exc:
                raise _Failure(f"unparseable stream frame {payload[:200]!r}", transient=True) from exc
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                raise _error_frame_failure(chunk["error"])
            served_model = str(chunk.get("model") or served_model)
            server_id = server_id or chunk.get("id")
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, Mapping) or not isinstance(choice.get("delta") or {}, Mapping):
                    raise _Failure(f"malformed stream frame {payload[:200]!r}", transient=True)
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                thought = _reasoning_of(delta)
                if (piece or thought) and ttft_ms is None:
                    ttft_ms = int((time.monotonic() - sent) * 1000)
                if isinstance(piece, str):
                    content.append(piece)
                if thought:
                    reasoning.append(thought)
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
        if not done and finish_reason is None:
            raise _Failure("the stream ended before the completion finished", transient=True)
        if not content and not reasoning and finish_reason is None:
            raise _Failure("the stream carried no completion at all", transient=True)
        return Completion(
            content="".join(content),
            reasoning="".join(reasoning) if reasoning else None,
            finish_reason=finish_reason,
            usage=usage,
            model=served_model,
            latency_ms=0,
            request_id=request_id,
            ttft_ms=ttft_ms,
            server_id=server_id,
        )


class GenerationClient:
    """Thread-safe synchronous facade: many worker threads, one event loop, one connection pool."""

    def __init__(
        self,
        settings: GeneratorSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="generation-client", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._client = self._call(self._make(settings, transport))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _make(settings: GeneratorSettings, transport: httpx.AsyncBaseTransport | None) -> AsyncGenerationClient:
        return AsyncGenerationClient(settings, transport=transport)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Any, cancel: threading.Event | None = None) -> Any:
        if self._closed:
            coro.close()
            raise GeneratorError("the generation client is closed", transient=True)
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            if cancel is None:
                return future.result()
            while True:
                try:
                    return future.result(timeout=0.25)
                except FutureTimeoutError:
                    if cancel.is_set():
                        # Cancelling the task closes the HTTP stream; SGLang aborts a request whose client left.
                        future.cancel()
                        raise GenerationCancelled("generation cancelled by the caller") from None
        except FutureCancelledError:
            # close() cancelled the calls still running: the round is worth retrying elsewhere.
            raise GeneratorError("the generation client was closed during the call", transient=True) from None

    def complete(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling,
        *,
        request_id: str,
        extra: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """Block until the completion is done; `cancel.set()` from another thread aborts it."""
        return self._call(self._client.complete(messages, sampling, request_id=request_id, extra=extra), cancel)

    def model(self) -> str:
        return self._call(self._client.model())

    def health(self) -> None:
        self._call(self._client.health())

    def close(self) -> None:
        """Cancel the calls still running (their threads get a transient GeneratorError), then close the pool."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._closed = True
        self._stop_loop()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._client.aclose()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> GenerationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
