"""One error envelope for every failure: `{"error": {"message", "type", "param", "code"}}` (OpenAI's shape).

`error_response` is the only function that builds it; the handlers below route FastAPI's own validation
errors, our `RequestError`s, HTTP errors and anything unexpected through it.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.errors import DependencyError, RequestError

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type_: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {"message": message, "type": type_ or _TYPES.get(status, "server_error"), "param": param, "code": code}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _param(loc: tuple[Any, ...]) -> str | None:
    """The offending field as a dotted path; `body` itself when the body as a whole is missing or of the wrong
    type (a client should still be told where to look)."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts and tuple(loc) == ("body",):
        return "body"
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = _param(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            return error_response(
                400, f"request body is not valid JSON: {first.get('msg')}", param="body", code="invalid_json"
            )
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        if len(exc.errors()) > 1:
            message += f" (and {len(exc.errors()) - 1} more problem(s))"
        return error_response(400, message, param=param, code=first.get("type"))

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
        # `headers`: e.g. the `retry-after` of a 429/503/409 (api/limits.py, api/admission.py, api/idempotency.py)
        headers = getattr(exc, "headers", None)
        return error_response(
            exc.status_code, exc.message, param=exc.param, code=exc.code, type_=exc.type, headers=headers
        )

    @app.exception_handler(DependencyError)
    async def _dependency(_request: Request, exc: DependencyError) -> JSONResponse:
        logger.warning("dependency unavailable: %s", exc)
        return error_response(503, str(exc), code=f"{exc.dependency}_unavailable")

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis_down(_request: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        # Unreachable, timed out, or refusing writes (noeviction at maxmemory): a 503 the client can retry.
        logger.warning("redis unavailable: %s", exc)
        return error_response(503, f"redis: {exc}", code="redis_unavailable")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", type_="server_error")
