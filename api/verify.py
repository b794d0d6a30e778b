"""`POST /v1/verify`: check one piece of Lean code on a verify worker, through the verify queue."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from api.deps import GatewayDep, require_api_key
from api.input_limits import check_text
from api.protocol import ErrorResponse, VerifyRequest
from api.prove import ProveService
from services import redis_clients
from services.errors import LeanError, RequestError
from services.leantext import parse_statement
from services.store import pop_verify_result

router = APIRouter(
    prefix="/v1",
    tags=["verify"],
    dependencies=[Depends(require_api_key)],
    responses={code: {"model": ErrorResponse} for code in (400, 401, 503, 504)},
)


class VerifyTimeout(RequestError):
    status_code = 504
    type = "timeout_error"


def _enqueue(gateway: Any, body: VerifyRequest) -> tuple[str, float]:
    """Check what the gateway can (a request that fails here never reaches a worker), then enqueue.

    Returns the request id and how long to wait for its result: the RQ timeout of the check, which follows the
    check's effective limit."""
    if not body.code.strip():
        raise RequestError("code is empty", param="code", code="empty")
    limit = gateway.settings.prove.max_statement_chars
    for param in ("formal_statement", "header"):
        check_text(getattr(body, param), param, max_chars=limit)
    check_text(body.code, "code", max_chars=gateway.settings.api.max_body_bytes)  # a proof may be long: bytes cap it
    if body.formal_statement is not None:
        parse_statement(body.formal_statement)
    limit_s = gateway.settings.lean.timeout_s
    if body.timeout_s is not None and body.timeout_s > limit_s:
        # A 400 rather than a silent clamp: the client learns the limit instead of getting a `timeout` verdict
        # for a check that stopped earlier than it asked.
        raise RequestError(
            f"timeout_s must be at most {limit_s:g} s (this deployment's OPROVER_LEAN_TIMEOUT_S)",
            param="timeout_s",
            code="out_of_range",
        )
    service = ProveService(gateway)
    version = body.lean_version or gateway.settings.lean.version
    lean_version = service.resolve_lean_version(body.lean_version)  # 400 listing the available versions
    if body.header is not None:
        service.check_header(body.header, lean_version)
    if not service.lean_versions().get(version, {}).get("workers"):
        raise LeanError(f"no verify worker is serving Lean {version} right now")
    request_id = "vfy_" + secrets.token_hex(12)
    payload = {
        "code": body.code,
        "header": body.header,
        "formal_statement": body.formal_statement,
        "timeout_s": body.timeout_s,
    }
    wait_s = gateway.dispatch.verify_code(
        request_id, payload, body.lean_version, check_timeout_s=body.timeout_s or limit_s
    )
    return request_id, float(wait_s)


@router.post("/verify")
async def verify(body: VerifyRequest, gateway: GatewayDep) -> dict[str, Any]:
    request_id, timeout_s = await run_in_threadpool(_enqueue, gateway, body)
    reply = await pop_verify_result(gateway.aredis, request_id, timeout_s, block_s=redis_clients.MAX_BLOCK_S)
    if reply is None:
        raise VerifyTimeout(
            f"no verdict within {timeout_s:.0f} s (are verify workers overloaded?)", code="verify_timeout"
        )
    if "request_error" in reply:  # the worker found what the gateway could not (e.g. an `open` of no namespace)
        raise RequestError.from_json(reply["request_error"])
    if "dependency_error" in reply:  # cut off by infrastructure after its retries: a 503, not a verdict
        raise LeanError(str(reply["dependency_error"].get("message") or "the check was cut off"))
    return reply
