"""`POST /v1/chat/completions`: the OpenAI-compatible door. Model `oprover` is the proving loop; any other model
name is relayed to the generator unchanged (api/relay.py).

Routes parse, call one function and map its result; the semantics live in `OpenAIServingChat`
(api/serving_chat.py), built once at start-up. A client that disconnects before its answer cancels its proof job
unless it asked for `"background": true`: a streamed answer is cancelled by Starlette when the client goes (its
response races the body against the disconnect message), a non-streamed one races its wait against the
disconnect message here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api import idempotency
from api.deps import CallerDep, ServingChatDep, require_api_key
from api.openai_protocol import OPROVER_MODEL, ChatCompletionRequest
from api.protocol import ErrorResponse
from api.relay import RelayDep

T = TypeVar("T")

JOB_ID_HEADER = "x-oprover-job-id"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold progress back
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 503)}

router = APIRouter(prefix="/v1", tags=["chat"], dependencies=[Depends(require_api_key)], responses=_ERRORS)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    serving: ServingChatDep,
    relay: RelayDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None, Header(alias=idempotency.HEADER, description="A retry with the same key follows the same job.")
    ] = None,
) -> Response:
    if body.model != OPROVER_MODEL:
        return await relay.chat(await request.body(), stream=bool(body.stream))
    raw = await request.body()
    chat = await run_in_threadpool(
        serving.submit_once, caller, body, idempotency_key, raw
    )  # every 4xx is here, before a 200
    headers = {JOB_ID_HEADER: chat.job_id}
    if body.stream:
        return StreamingResponse(
            serving.stream(chat), media_type="text/event-stream", headers={**headers, **_SSE_HEADERS}
        )
    answer = await _unless_disconnected(request, serving.complete(chat))
    if answer is None:
        await serving.abandon(chat)
        return Response(status_code=499, headers=headers)  # nobody reads it; nginx's "client closed request"
    return JSONResponse(answer, headers=headers)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read already, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None if the client disconnected first (then `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, gone):
            pending.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)
    return None if task.cancelled() else task.result()
