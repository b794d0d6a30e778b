"""`ServingProve`: the semantics of proof jobs behind `/v1/prove`, its batch door and the chat door.

Built once at start-up over the gateway's resources (api/app.py, as vLLM builds its `OpenAIServing*` classes);
every call names its caller, so one object serves every key. It fills a request's defaults and checks its
bounds (every refusal a 4xx naming the field), admits jobs against the queues' backlog and the caller's quotas,
creates and enqueues them, follows their events, and reads or cancels only the jobs the caller may see.
Routes (api/prove.py, api/batch.py) parse HTTP and map what this returns.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pydantic

from api import admission, idempotency
from api.demo import demo_labelled
from api.gateway import Gateway
from api.input_limits import check_text
from api.lean_versions import LeanVersions
from api.protocol import ProveRequest
from api.tenancy import Caller, require_visible
from services import keys, redis_clients
from services.domain import TERMINAL_STATUSES, JobStatus
from services.errors import RequestError
from services.leantext import parse_statement
from services.prompts import PromptProfile, load_profile
from services.store import Event, JobSpec, new_job_id, read_events_async

logger = logging.getLogger(__name__)

TERMINAL_EVENTS = {f"job.{status.value}" for status in TERMINAL_STATUSES}
_TERMINAL_VALUES = {status.value for status in TERMINAL_STATUSES}


class Conflict(RequestError):
    status_code = 409
    type = "conflict_error"


class JobExpired(RequestError):
    """The job's record vanished (its lifetime ran out) while someone was following it."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"proof job {job_id} expired before it finished", code="job_expired")


class ServingProve:
    def __init__(self, gateway: Gateway, lean: LeanVersions) -> None:
        self.gw = gateway
        self.settings = gateway.settings
        self.lean = lean

    # --- a request becomes a job spec (no I/O but the served Lean versions) ---------------------------------------
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
        lean_version = self.lean.resolve(req.lean_version)
        self.lean.check_header(header, lean_version)
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
            exclude_hashes=req.exclude.body_hashes() if req.exclude else [],
            exclude_names=sorted(set(req.exclude.names)) if req.exclude else [],
        )

    def build_specs(self, items: list[tuple[Any, str]]) -> list[JobSpec]:
        """A batch's job specs (each item with where it was, for messages), or a 400 naming the first bad item
        by its index (`3.formal_statement`); nothing is created here."""
        limit = self.settings.prove.max_batch
        if not items:
            raise RequestError(
                "the batch is empty: send a JSON list or JSONL of /v1/prove bodies", param="body", code="empty"
            )
        if len(items) > limit:
            raise RequestError(
                f"the batch holds {len(items)} items; at most {limit} are accepted", param="body", code="too_many"
            )
        specs = []
        for index, (item, where) in enumerate(items):
            try:
                specs.append(self.build_spec(ProveRequest.model_validate(item)))
            except pydantic.ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(part) for part in first["loc"])
                param = f"{index}.{field}" if field else str(index)
                raise RequestError(
                    f"{where}: {field or 'body'}: {first['msg']}", param=param, code=first["type"]
                ) from None
            except RequestError as exc:
                param = f"{index}.{exc.param}" if exc.param else str(index)
                raise RequestError(f"{where}: {exc.message}", param=param, code=exc.code) from None
        return specs

    def _profile(self, name: str | None) -> PromptProfile:
        try:
            return load_profile(name or self.settings.prompt.profile, extra_dir=self.settings.prompt.dir)
        except RequestError as exc:
            raise RequestError(exc.message, param="prompt_profile", code="unknown_prompt_profile") from None

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

    # --- creating jobs (sync: store and RQ calls; routes call these in the thread pool) --------------------------
    def once(
        self, caller: Caller, route: str, idempotency_key: str | None, body: bytes, create: Callable[[], list[str]]
    ) -> idempotency.Outcome:
        """`create` at most once per Idempotency-Key of this caller on `route` (api/idempotency.py)."""
        return idempotency.once(
            self.gw.redis,
            owner=caller.owner,
            route=route,
            idempotency_key=idempotency_key,
            body=body,
            ttl_s=self.settings.api.idempotency_ttl_s,
            create=create,
        )

    def submit(self, caller: Caller, req: ProveRequest, *, interactive: bool = False) -> str:
        return self.submit_spec(caller, self.build_spec(req), interactive=interactive)

    def reserve(self, caller: Caller, count: int) -> list[str]:
        """Ids for `count` new jobs, admitted against the queues' backlog (api/admission.py: else a 503) and the
        caller's quotas (api/quotas.py: else a 429): all of them, or none."""
        admission.admit(self.gw.redis, self.settings.admission)  # a 503 while the queues are too far behind
        job_ids = [new_job_id() for _ in range(count)]
        self.gw.quotas.admit_jobs(caller.owner, job_ids)
        return job_ids

    def submit_spec(
        self, caller: Caller, spec: JobSpec, job_id: str | None = None, *, interactive: bool = False
    ) -> str:
        """Create a validated job, owned by `caller`, and enqueue round 1 of each chain.

        `job_id`: one `reserve` returned; without it the job is admitted here. `interactive`: someone waits for
        the answer (chat, `?wait=`), so its rounds take the priority queue ahead of batches."""
        if job_id is None:
            job_id = self.reserve(caller, 1)[0]
        try:
            self.gw.store.create(spec, job_id=job_id, owner=caller.owner, interactive=interactive)
        except Exception:
            self.gw.quotas.release_jobs(caller.owner, [job_id])
            raise
        try:
            self.gw.dispatch.start_job(job_id, spec.attempts)
        except Exception as exc:
            # A job whose rounds were not all enqueued would wait forever: end it, and let the client retry.
            with contextlib.suppress(Exception):
                self.gw.store.fail_with_error(job_id, f"redis: could not enqueue the job's rounds ({exc})")
            raise
        return job_id

    def submit_batch(self, caller: Caller, specs: list[JobSpec]) -> list[str]:
        """Every job of a batch, or none: the whole batch fits the caller's quotas (else a 429 before any job),
        and should Redis fail halfway the jobs already created are cancelled again."""
        reserved = self.reserve(caller, len(specs))
        job_ids: list[str] = []
        try:
            for spec, job_id in zip(specs, reserved, strict=True):
                job_ids.append(self.submit_spec(caller, spec, job_id))
        except Exception:
            for job_id in job_ids:  # all or none: the batch's client will retry the whole batch
                with contextlib.suppress(Exception):
                    self.cancel(caller, job_id)
            self.gw.quotas.release_jobs(caller.owner, reserved[len(job_ids) :])
            raise
        logger.info("batch of %d jobs submitted: %s .. %s", len(job_ids), job_ids[0], job_ids[-1])
        return job_ids

    # --- reading and cancelling ------------------------------------------------------------------------------------
    def check_visible(self, caller: Caller, job_id: str) -> None:
        """A 404 for an unknown job and, worded the same, for another key's job (api/tenancy.py)."""
        require_visible(caller, job_id, self.gw.store.owner(job_id))

    def get(self, caller: Caller, job_id: str) -> dict[str, Any]:
        self.check_visible(caller, job_id)
        return self._job(job_id)

    def _job(self, job_id: str) -> dict[str, Any]:
        """The job object as clients get it: a demo's says so (`"demo": true`, api/demo.py)."""
        return demo_labelled(self.gw.store.get(job_id), self.settings.api.demo)

    def statuses(self, job_ids: list[str]) -> list[str]:
        """Each job's status in one round trip (`expired` for a record that is gone)."""
        with self.gw.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(keys.job_key(job_id), "status")
            return [raw.decode() if raw else "expired" for raw in pipe.execute()]

    def cancel(self, caller: Caller, job_id: str) -> dict[str, Any]:
        job = self.get(caller, job_id)
        if job["status"] in _TERMINAL_VALUES:
            if job["status"] == JobStatus.CANCELLED.value:
                return job
            raise Conflict(f"job {job_id} already ended as {job['status']}", param="id", code="already_finished")
        if self.gw.store.cancel(job_id):
            spec = self.gw.store.spec(job_id)
            self.gw.dispatch.drop_pending(job_id, spec.attempts, spec.rounds)
        return self._job(job_id)

    # --- following a job's events (async: on the event loop) -------------------------------------------------------
    async def follow(
        self,
        job_id: str,
        after: str = "0-0",
        *,
        idle_s: float = redis_clients.MAX_BLOCK_S,
        deadline: float | None = None,
    ) -> AsyncGenerator[Event | None, None]:
        """The job's events after `after`, up to its terminal one; None after each `idle_s` without any.

        Each blocking read lasts at most `idle_s` (capped at what the gateway's Redis client is built for, and at
        `deadline`, a `time.monotonic()` after which the iteration just ends), so a caller can send keep-alives
        or notice a gone client, and a job whose record vanished is noticed: `JobExpired`."""
        idle_ms = int(min(idle_s, redis_clients.MAX_BLOCK_S) * 1000)
        while True:
            block_ms = idle_ms
            if deadline is not None:
                remaining_ms = (deadline - time.monotonic()) * 1000
                if remaining_ms <= 0:
                    return
                block_ms = max(1, int(min(remaining_ms, idle_ms)))
            events = await read_events_async(self.gw.aredis, job_id, after, block_ms=block_ms)
            for event in events:
                after = event.id
                yield event
                if event.type in TERMINAL_EVENTS:
                    return
            if not events:
                if not await self.gw.aredis.exists(keys.job_key(job_id)):
                    raise JobExpired(job_id)
                yield None

    async def wait_finished(self, job_id: str, wait_s: float) -> bool:
        """Follow the job's events until it is terminal or `wait_s` passes; True if it finished."""
        following = self.follow(job_id, deadline=time.monotonic() + wait_s)
        with contextlib.suppress(JobExpired):  # then reading it is the 404 that says so
            async with contextlib.aclosing(following):
                async for event in following:
                    if event is not None and event.type in TERMINAL_EVENTS:
                        return True
        return False
