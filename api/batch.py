"""`POST /v1/prove/batch`: many proof jobs in one request, all or none.

The body is a JSON list of `/v1/prove` bodies, or JSONL (one body per line; blank lines are skipped). Every
item is validated as `POST /v1/prove` would validate it before any job exists; the first bad item makes the
whole batch a 400 whose `param` starts with the item's index (`3.formal_statement`) and whose message also
names the JSONL line. Then the jobs are created and started in order; should Redis fail halfway, the jobs
already created are cancelled again, so a batch never half-starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api import idempotency
from api.deps import require_api_key
from api.protocol import ErrorResponse, ProveRequest
from api.prove import REPLAYED_HEADERS, ProveService, ServiceDep
from services import keys
from services.errors import RequestError
from services.store import JobSpec

logger = logging.getLogger(__name__)

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
        raise RequestError("the batch is not UTF-8 text", code="invalid_json") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise RequestError(f"the batch is not a valid JSON list: {exc}", code="invalid_json") from None
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


def validate(service: ProveService, items: list[tuple[Any, str]]) -> list[JobSpec]:
    """Every item's job spec, or a 400 naming the first bad item; nothing is created here."""
    limit = service.settings.prove.max_batch
    if not items:
        raise RequestError("the batch is empty: send a JSON list or JSONL of /v1/prove bodies", code="empty")
    if len(items) > limit:
        raise RequestError(f"the batch holds {len(items)} items; at most {limit} are accepted", code="too_many")
    specs = []
    for index, (item, where) in enumerate(items):
        try:
            specs.append(service.build_spec(ProveRequest.model_validate(item)))
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            param = f"{index}.{field}" if field else str(index)
            raise RequestError(f"{where}: {field or 'body'}: {first['msg']}", param=param, code=first["type"]) from None
        except RequestError as exc:
            param = f"{index}.{exc.param}" if exc.param else str(index)
            raise RequestError(f"{where}: {exc.message}", param=param, code=exc.code) from None
    return specs


def submit_all(service: ProveService, specs: list[JobSpec]) -> list[str]:
    reserved = service.reserve(len(specs))  # the whole batch fits the key's quotas, or a 429 before any job
    job_ids: list[str] = []
    try:
        for spec, job_id in zip(specs, reserved, strict=True):
            job_ids.append(service.submit_spec(spec, job_id))
    except Exception:
        for job_id in job_ids:  # all or none: the batch's client will retry the whole batch
            with contextlib.suppress(Exception):
                service.cancel(job_id)
        service.gw.quotas.release_jobs(service.caller.owner, reserved[len(job_ids) :])
        raise
    logger.info("batch of %d jobs submitted: %s .. %s", len(job_ids), job_ids[0], job_ids[-1])
    return job_ids


def _statuses(service: ProveService, job_ids: list[str]) -> list[str]:
    with service.gw.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(keys.job_key(job_id), "status")
        return [raw.decode() if raw else "expired" for raw in pipe.execute()]


@router.post("/batch", status_code=202, openapi_extra={"requestBody": _BODY_SCHEMA})
async def submit_batch(
    request: Request,
    service: ServiceDep,
    idempotency_key: Annotated[
        str | None, Header(alias=idempotency.HEADER, description="A retry with the same key gets the same jobs.")
    ] = None,
) -> JSONResponse:
    raw = await request.body()
    items = parse_items(raw)

    def create() -> list[str]:
        return submit_all(service, validate(service, items))

    outcome = await run_in_threadpool(service.once, "batch", idempotency_key, raw, create)
    if outcome.replayed:  # the same jobs as the first answer, each with where it is now
        statuses = await run_in_threadpool(_statuses, service, outcome.job_ids)
    else:
        statuses = ["queued"] * len(outcome.job_ids)
    data = [
        {"index": index, "id": job_id, "status": status}
        for index, (job_id, status) in enumerate(zip(outcome.job_ids, statuses, strict=True))
    ]
    return JSONResponse(
        {"object": "list", "data": data}, status_code=202, headers=REPLAYED_HEADERS.get(outcome.replayed, {})
    )
