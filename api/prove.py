"""`/v1/prove`: submit a proof job, read it, stream its events, cancel it.

Routes parse and map; `ProveService` holds the semantics (defaults, bounds, enqueueing, waiting).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api import admission, idempotency
from api.deps import CallerDep, Gateway, GatewayDep, require_api_key
from api.input_limits import check_text
from api.protocol import ErrorResponse, ProveRequest
from api.tenancy import OPEN, Caller, require_visible
from services import keys, lean_workers, redis_clients
from services.domain import TERMINAL_STATUSES, JobStatus
from services.errors import RequestError
from services.lean.checker import require_imports_loaded
from services.lean.policy import header_parts, header_violations
from services.leantext import parse_statement
from services.prompts import PromptProfile, load_profile
from services.store import JobSpec, new_job_id, read_events_async

logger = logging.getLogger(__name__)

_EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")
_TERMINAL_EVENTS = {f"job.{status.value}" for status in TERMINAL_STATUSES}
# One blocking read on the event stream waits at most this long (the gateway's Redis client is built for it), so
# a gone client or an expired job is noticed; FastAPI sends a keep-alive comment after 15 s without an event.
_EVENT_BLOCK_MS = int(redis_clients.MAX_BLOCK_S * 1000)


class Conflict(RequestError):
    status_code = 409
    type = "conflict_error"


class ProveService:
    def __init__(self, gateway: Gateway, caller: Caller = OPEN) -> None:
        self.gw = gateway
        self.settings = gateway.settings
        self.caller = caller  # jobs it creates belong to this caller; it reads and cancels only those it may see

    def build_spec(self, req: ProveRequest) -> JobSpec:
        prove = self.settings.prove
        for param in ("formal_statement", "header", "informal_statement"):  # before any parsing: a clear 400
            check_text(getattr(req, param), param, max_chars=prove.max_statement_chars)
        parse_statement(req.formal_statement)
        rounds = req.rounds if req.rounds is not None else prove.rounds
        attempts = req.attempts if req.attempts is not None else prove.attempts
        if rounds > prove.max_rounds:
            raise RequestError(f"rounds must be at most {prove.max_rounds}", param="rounds", code="out_of_range")
        if attempts > prove.max_attempts:
            raise RequestError(f"attempts must be at most {prove.max_attempts}", param="attempts", code="out_of_range")
        header = req.header if req.header is not None and req.header.strip() else self.settings.lean.header
        profile = self._profile(req.prompt_profile)
        lean_version = self.resolve_lean_version(req.lean_version)
        self.check_header(header, lean_version)
        # request > deployment override > the profile's own default (what the model was trained with)
        asked = req.sampling.model_dump(exclude_none=True) if req.sampling else {}
        sampling = {
            name: asked.get(
                name, getattr(prove, name) if getattr(prove, name) is not None else getattr(profile.sampling, name)
            )
            for name in ("temperature", "top_p", "max_tokens")
        }
        return JobSpec(
            formal_statement=req.formal_statement,
            header=header,
            rounds=rounds,
            attempts=attempts,
            top_k=req.top_k if req.top_k is not None else self.settings.qdrant.top_k,
            temperature=sampling["temperature"],
            top_p=sampling["top_p"],
            max_tokens=sampling["max_tokens"],
            informal_statement=req.informal_statement,
            prompt_profile=profile.name,
            lean_version=lean_version,
            metadata=req.metadata or {},
            callback_url=self._callback_url(req.callback_url),
        )

    def _profile(self, name: str | None) -> PromptProfile:
        try:
            return load_profile(name or self.settings.prompt.profile, extra_dir=self.settings.prompt.dir)
        except RequestError as exc:
            raise RequestError(exc.message, param="prompt_profile", code="unknown_prompt_profile") from None

    def lean_versions(self) -> dict[str, dict[str, Any]]:
        """Lean versions served right now, from what live verify workers announce, plus the default."""
        versions: dict[str, dict[str, Any]] = {self.settings.lean.version: {"default": True, "workers": 0}}
        for info in lean_workers.live(self.gw.redis):
            entry = versions.setdefault(info["version"], {"default": False, "workers": 0})
            entry["workers"] += 1
            entry.update({k: v for k, v in info.items() if k in ("lean", "mathlib", "repl", "imports")})
        return versions

    def check_header(self, header: str, lean_version: str | None) -> None:
        """A 400 (param `header`) now for a header the verify workers could never check, instead of a job that
        fails in its first verification. The workers' REPLs import the deployment's header (OPROVER_LEAN_HEADER,
        the same setting the gateway reads) unless live workers of that version announce their own imports."""
        if len(header) > self.settings.prove.max_statement_chars:
            raise RequestError(
                f"header is longer than {self.settings.prove.max_statement_chars} characters",
                param="header",
                code="too_long",
            )
        # The header is sent to Lean as a command of its own: the checker's allow-list refuses it there too, but
        # only after a round has been generated; the requester's own text earns a 400 now.
        refused = header_violations(header)
        if refused:
            raise RequestError(
                f"header is refused by the integrity policy: {refused[0].rule}", param="header", code="header_refused"
            )
        version = lean_version or self.settings.lean.version
        announced = self.lean_versions().get(version, {}).get("imports") if lean_version else None
        loaded = announced if isinstance(announced, list) else header_parts(self.settings.lean.header)[0]
        require_imports_loaded(header_parts(header)[0], loaded)

    def resolve_lean_version(self, requested: str | None) -> str | None:
        if requested is None or requested == self.settings.lean.version:
            return None
        available = self.lean_versions()
        if requested not in available:
            raise RequestError(
                f"lean_version {requested!r} is not served here; available: {', '.join(sorted(available))}",
                param="lean_version",
                code="unknown_lean_version",
            )
        return requested

    def _callback_url(self, url: object) -> str | None:
        if url is None:
            return None
        if not self.settings.callback.secret:
            raise RequestError(
                "callback_url needs the deployment to sign deliveries, and OPROVER_CALLBACK_SECRET is not set",
                param="callback_url",
                code="callbacks_disabled",
            )
        return str(url)

    def once(self, route: str, idempotency_key: str | None, body: bytes, create: Any) -> idempotency.Outcome:
        """`create` at most once per Idempotency-Key of this caller on `route` (api/idempotency.py)."""
        return idempotency.once(
            self.gw.redis,
            owner=self.caller.owner,
            route=route,
            idempotency_key=idempotency_key,
            body=body,
            ttl_s=self.settings.api.idempotency_ttl_s,
            create=create,
        )

    def submit(self, req: ProveRequest, *, interactive: bool = False) -> str:
        return self.submit_spec(self.build_spec(req), interactive=interactive)

    def reserve(self, count: int) -> list[str]:
        """Ids for `count` new jobs, admitted against the queues' backlog (api/admission.py: else a 503) and the
        caller's quotas (api/quotas.py: else a 429): all of them, or none."""
        admission.admit(self.gw.redis, self.settings.admission)  # a 503 while the queues are too far behind
        job_ids = [new_job_id() for _ in range(count)]
        self.gw.quotas.admit_jobs(self.caller.owner, job_ids)
        return job_ids

    def submit_spec(self, spec: JobSpec, job_id: str | None = None, *, interactive: bool = False) -> str:
        """Create a validated job and enqueue round 1 of each chain (the chat door and batches come here too).

        `job_id`: one `reserve` returned; without it the job is admitted here. `interactive`: someone waits for
        the answer (chat, `?wait=`), so its rounds take the priority queue ahead of batches."""
        if job_id is None:
            job_id = self.reserve(1)[0]
        try:
            self.gw.store.create(spec, job_id=job_id, owner=self.caller.owner, interactive=interactive)
        except Exception:
            self.gw.quotas.release_jobs(self.caller.owner, [job_id])
            raise
        try:
            self.gw.dispatch.start_job(job_id, spec.attempts)
        except Exception as exc:
            # A job whose rounds were not all enqueued would wait forever: end it, and let the client retry.
            with contextlib.suppress(Exception):
                self.gw.store.fail_with_error(job_id, f"redis: could not enqueue the job's rounds ({exc})")
            raise
        return job_id

    async def wait_finished(self, job_id: str, wait_s: float) -> bool:
        """Follow the job's events until it is terminal or `wait_s` passes; True if it finished."""
        deadline = time.monotonic() + wait_s
        after = "0-0"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            events = await read_events_async(
                self.gw.aredis, job_id, after, block_ms=max(1, int(min(remaining * 1000, _EVENT_BLOCK_MS)))
            )
            for event in events:
                after = event.id
                if event.type in _TERMINAL_EVENTS:
                    return True

    def check_visible(self, job_id: str) -> None:
        """A 404 for an unknown job and, worded the same, for another key's job (api/tenancy.py)."""
        require_visible(self.caller, job_id, self.gw.store.owner(job_id))

    def get(self, job_id: str) -> dict[str, Any]:
        self.check_visible(job_id)
        return self.gw.store.get(job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] in {s.value for s in TERMINAL_STATUSES}:
            if job["status"] == JobStatus.CANCELLED.value:
                return job
            raise Conflict(f"job {job_id} already ended as {job['status']}", param="id", code="already_finished")
        if self.gw.store.cancel(job_id):
            spec = self.gw.store.spec(job_id)
            self.gw.dispatch.drop_pending(job_id, spec.attempts, spec.rounds)
        return self.gw.store.get(job_id)


def get_service(gateway: GatewayDep, caller: CallerDep) -> ProveService:
    return ProveService(gateway, caller)


ServiceDep = Annotated[ProveService, Depends(get_service)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 429, 503)
}
# A response to a retried submission says so (the jobs are the ones the first request created).
REPLAYED_HEADERS = {True: {"idempotent-replayed": "true"}}

router = APIRouter(prefix="/v1/prove", tags=["prove"], dependencies=[Depends(require_api_key)], responses=_ERRORS)


@router.post("", status_code=202)
async def submit(
    body: ProveRequest,
    request: Request,
    service: ServiceDep,
    wait: Annotated[float | None, Query(ge=0, description="Seconds to wait for the job to finish.")] = None,
    idempotency_key: Annotated[
        str | None, Header(alias=idempotency.HEADER, description="A retry with the same key gets the same job.")
    ] = None,
) -> JSONResponse:
    if wait is not None and wait > service.settings.api.max_wait_s:
        raise RequestError(f"wait must be at most {service.settings.api.max_wait_s} seconds", param="wait")
    raw = await request.body()
    interactive = bool(wait)  # a client waiting on the answer is served before batches (services/keys.py)
    outcome = await run_in_threadpool(
        service.once, "prove", idempotency_key, raw, lambda: [service.submit(body, interactive=interactive)]
    )
    job_id = outcome.job_ids[0]
    finished = bool(wait) and await service.wait_finished(job_id, wait or 0)
    job = await run_in_threadpool(service.get, job_id)
    headers = {"Location": f"/v1/prove/{job_id}", **REPLAYED_HEADERS.get(outcome.replayed, {})}
    return JSONResponse(job, status_code=200 if finished else 202, headers=headers)


@router.get("/{job_id}")
async def read(job_id: str, service: ServiceDep) -> dict[str, Any]:
    return await run_in_threadpool(service.get, job_id)


@router.delete("/{job_id}")
async def cancel(job_id: str, service: ServiceDep) -> dict[str, Any]:
    return await run_in_threadpool(service.cancel, job_id)


async def existing_job(job_id: str, service: ServiceDep) -> str:
    """A dependency, so that an unknown id is a 404 before a stream starts."""
    await run_in_threadpool(service.check_visible, job_id)
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
    service: ServiceDep,
) -> AsyncIterator[ServerSentEvent]:
    """One event per state change, ending after the terminal one; resume with `Last-Event-ID`."""
    while True:
        events = await read_events_async(service.gw.aredis, job_id, after, block_ms=_EVENT_BLOCK_MS)
        for event in events:
            after = event.id
            yield ServerSentEvent(id=event.id, event=event.type, data=event.data)
            if event.type in _TERMINAL_EVENTS:
                return
        if not events:
            if await request.is_disconnected():
                return
            if await service.gw.aredis.exists(keys.job_key(job_id)) == 0:
                yield ServerSentEvent(event="error", data={"error": {"message": "job expired", "type": "not_found"}})
                return
