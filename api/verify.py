"""`POST /v1/verify`: check one piece of Lean code on a verify worker, through the verify queue."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from api.deps import GatewayDep, require_api_key
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
    if not body.code.strip():
        raise RequestError("code is empty", param="code", code="empty")
    if body.formal_statement is not None:
        parse_statement(body.formal_statement)
    service = ProveService(gateway)
    version = body.lean_version or gateway.settings.lean.version
    service.resolve_lean_version(body.lean_version)  # 400 listing the available versions
    if not service.lean_versions().get(version, {}).get("workers"):
        raise LeanError(f"no verify worker is serving Lean {version} right now")
    request_id = "vfy_" + secrets.token_hex(12)
    payload = {
        "code": body.code,
        "header": body.header,
        "formal_statement": body.formal_statement,
        "timeout_s": body.timeout_s,
    }
    gateway.dispatch.verify_code(request_id, payload, body.lean_version)
    return request_id, float(gateway.dispatch.verify_timeout_s)


@router.post("/verify")
async def verify(body: VerifyRequest, gateway: GatewayDep) -> dict[str, Any]:
    request_id, timeout_s = await run_in_threadpool(_enqueue, gateway, body)
    reply = await pop_verify_result(gateway.aredis, request_id, timeout_s, block_s=redis_clients.MAX_BLOCK_S)
    if reply is None:
        raise VerifyTimeout(
            f"no verdict within {timeout_s:.0f} s (are verify workers overloaded?)", code="verify_timeout"
        )
    return reply
