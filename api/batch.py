"""`POST /v1/prove/batch`: many proof jobs in one request, all or none.

The body is a JSON list of `/v1/prove` bodies, or JSONL (one body per line; blank lines are skipped); this
module parses it. `ServingProve` (api/serving_prove.py) validates every item as `POST /v1/prove` would before
any job exists; the first bad item makes the whole batch a 400 whose `param` starts with the item's index
(`3.formal_statement`) and whose message also names the JSONL line. Then the jobs are created and started in
order; should Redis fail halfway, the jobs already created are cancelled again, so a batch never half-starts.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api import idempotency
from api.deps import CallerDep, ServingProveDep, require_api_key
from api.protocol import ErrorResponse
from services.errors import RequestError

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 503)}
_BODY_SCHEMA = {
    "required": True,
    "description": "A JSON list of `/v1/prove` bodies; a JSONL body (one per line) is accepted too.",
    "content": {
        "application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/ProveRequest"}}}
    },
}

router = APIRouter(prefix="/v1/prove", tags=["prove"], dependencies=[Depends(require_api_key)], responses=_ERRORS)


def parse_items(raw: bytes) -> list[tuple[Any, str]]:
    """The batch's items, each with where it was (for error messages)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise RequestError("the batch is not UTF-8 text", param="body", code="invalid_json") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise RequestError(
                f"the batch is not a valid JSON list: {exc}", param="body", code="invalid_json"
            ) from None
        return [(item, f"item {index}") for index, item in enumerate(items)]
    parsed: list[tuple[Any, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed.append((json.loads(line), f"item {len(parsed)} (line {number})"))
        except ValueError as exc:
            raise RequestError(
                f"item {len(parsed)} (line {number}) is not valid JSON: {exc}",
                param=str(len(parsed)),
                code="invalid_json",
            ) from None
    return parsed


@router.post("/batch", status_code=202, openapi_extra={"requestBody": _BODY_SCHEMA})
async def submit_batch(
    request: Request,
    serving: ServingProveDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None, Header(alias=idempotency.HEADER, description="A retry with the same key gets the same jobs.")
    ] = None,
) -> JSONResponse:
    raw = await request.body()
    items = parse_items(raw)

    def create() -> list[str]:
        return serving.submit_batch(caller, serving.build_specs(items))

    outcome = await run_in_threadpool(serving.once, caller, "batch", idempotency_key, raw, create)
    if outcome.replayed:  # the same jobs as the first answer, each with where it is now
        statuses = await run_in_threadpool(serving.statuses, outcome.job_ids)
    else:
        statuses = ["queued"] * len(outcome.job_ids)
    data = [
        {"index": index, "id": job_id, "status": status}
        for index, (job_id, status) in enumerate(zip(outcome.job_ids, statuses, strict=True))
    ]
    return JSONResponse(
        {"object": "list", "data": data}, status_code=202, headers=idempotency.replayed_headers(outcome)
    )
