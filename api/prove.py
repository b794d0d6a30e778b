"""`/v1/prove`: submit a proof job, read it, stream its events, cancel it.

Routes parse HTTP and map results; `ServingProve` (api/serving_prove.py) holds the semantics (defaults, bounds,
admission, enqueueing, following, who may see a job).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api import idempotency
from api.deps import CallerDep, ServingProveDep, require_api_key
from api.protocol import ErrorResponse, ProveRequest
from api.serving_prove import JobExpired
from services.errors import RequestError

_EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 429, 503)
}
router = APIRouter(prefix="/v1/prove", tags=["prove"], dependencies=[Depends(require_api_key)], responses=_ERRORS)


@router.post("", status_code=202)
async def submit(
    body: ProveRequest,
    request: Request,
    serving: ServingProveDep,
    caller: CallerDep,
    wait: Annotated[float | None, Query(ge=0, description="Seconds to wait for the job to finish.")] = None,
    idempotency_key: Annotated[
        str | None, Header(alias=idempotency.HEADER, description="A retry with the same key gets the same job.")
    ] = None,
) -> JSONResponse:
    max_wait_s = serving.settings.api.max_wait_s
    if wait is not None and wait > max_wait_s:
        raise RequestError(f"wait must be at most {max_wait_s} seconds", param="wait")
    raw = await request.body()
    interactive = bool(wait)  # a client waiting on the answer is served before batches (services/keys.py)
    outcome = await run_in_threadpool(
        serving.once,
        caller,
        "prove",
        idempotency_key,
        raw,
        lambda: [serving.submit(caller, body, interactive=interactive)],
    )
    job_id = outcome.job_ids[0]
    finished = bool(wait) and await serving.wait_finished(job_id, wait or 0)
    job = await run_in_threadpool(serving.get, caller, job_id)
    headers = {"Location": f"/v1/prove/{job_id}", **idempotency.replayed_headers(outcome)}
    return JSONResponse(job, status_code=200 if finished else 202, headers=headers)


@router.get("/{job_id}")
async def read(job_id: str, serving: ServingProveDep, caller: CallerDep) -> dict[str, Any]:
    return await run_in_threadpool(serving.get, caller, job_id)


@router.delete("/{job_id}")
async def cancel(job_id: str, serving: ServingProveDep, caller: CallerDep) -> dict[str, Any]:
    return await run_in_threadpool(serving.cancel, caller, job_id)


async def existing_job(job_id: str, serving: ServingProveDep, caller: CallerDep) -> str:
    """A dependency, so that an unknown id (or another key's job) is a 404 before a stream starts."""
    await run_in_threadpool(serving.check_visible, caller, job_id)
    return job_id


def event_cursor(last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None) -> str:
    """Where a resumed stream starts; checked before the stream does, so a bad id is a 400."""
    if last_event_id is None:
        return "0-0"
    if not _EVENT_ID.fullmatch(last_event_id):
        raise RequestError("Last-Event-ID must be an event id from this stream", param="Last-Event-ID")
    return last_event_id


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def events(
    job_id: Annotated[str, Depends(existing_job)],
    after: Annotated[str, Depends(event_cursor)],
    request: Request,
    serving: ServingProveDep,
) -> AsyncIterator[ServerSentEvent]:
    """One event per state change, ending after the terminal one; resume with `Last-Event-ID`."""
    # FastAPI sends a keep-alive comment after 15 s without an event; between blocking reads (`follow` yields
    # None) a gone client is noticed and the stream ends.
    try:
        async with aclosing(serving.follow(job_id, after)) as following:
            async for event in following:
                if event is None:
                    if await request.is_disconnected():
                        return
                    continue
                yield ServerSentEvent(id=event.id, event=event.type, data=event.data)
    except JobExpired:
        yield ServerSentEvent(event="error", data={"error": {"message": "job expired", "type": "not_found"}})
