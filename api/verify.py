"""`POST /v1/verify`: check one piece of Lean code on a verify worker, through the verify queue.

The route parses the body and calls `ServingVerify` (api/serving_verify.py), which holds what is refused, where
the check is enqueued and how its verdict comes back.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from api.deps import ServingVerifyDep, require_api_key
from api.protocol import ErrorResponse, VerifyRequest

router = APIRouter(
    prefix="/v1",
    tags=["verify"],
    dependencies=[Depends(require_api_key)],
    responses={code: {"model": ErrorResponse} for code in (400, 401, 503, 504)},
)


@router.post("/verify")
async def verify(body: VerifyRequest, serving: ServingVerifyDep) -> dict[str, Any]:
    request_id, timeout_s = await run_in_threadpool(serving.enqueue, body)
    return await serving.verdict(request_id, timeout_s)
