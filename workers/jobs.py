"""RQ job functions: one round of one chain is `generate_round` then `verify_round`.

Each function takes ids only, reads what it needs from the job store, does its step, and enqueues the next
step itself: a chain's length is unknown until a proof passes, so no dependency chain is built ahead
(docs/architecture.md, section 6). Every step first checks whether the proof
job is already finished (proved by another chain, cancelled, failed): that is how cancellation works, since
a running in-process job cannot be killed from outside. Steps are idempotent: the next step is enqueued with
RQ's atomic `unique=True` under its deterministic id, a chain ends once, and a generate step whose attempt is
already on record resumes from it instead of calling the model again, so a retried or duplicated RQ job is
harmless.

Infrastructure failures raise (so RQ retries the step); `on_stage_failure` ends the proof job as `error`
once the retries are used up, naming the dependency. A non-transient dependency failure ends it at once, and so
does a `RequestError` (e.g. a header importing a module the verify worker does not load): the same input would
fail the same way on every retry, so the job ends `error` with a message naming the field, and a one-off
verification answers the gateway with the error, which it returns as a 400.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

from rq.job import Job

from services import metrics
from services.domain import JobStatus, RetrievedProof, Sampling, Verdict
from services.errors import DependencyError, MemoryError_, NotFound, RequestError
from services.leantext import parse_statement, strip_header_lines
from services.rounds import round_task
from services.store import JobSpec
from workers import context

logger = logging.getLogger(__name__)


def _ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


class WorkerMisconfigured(RuntimeError):
    """A step reached a worker process that lacks what the step needs (e.g. the generate queue consumed by a
    process started without a generator): a deployment mistake, reported as such. It is not an `assert`, which
    `python -O` would remove, turning the mistake into an `AttributeError` on None."""


def _need(resource: Any, what: str, step: str) -> Any:
    if resource is None:
        raise WorkerMisconfigured(
            f"{step} reached a worker process without {what}; run this queue with `oprover worker "
            f"{'verify' if 'checker' in what else 'generate'}`"
        )
    return resource


# --- generate ----------------------------------------------------------------------------------------------------
def generate_round(job_id: str, chain: int, round_: int) -> dict[str, Any]:
    from services.generation import GenerationCancelled, extract_code
    from services.prompts import load_profile

    ctx = context.current()
    store = ctx.store
    # One round trip for everything the step reads (status, request, retrieved proofs, this and the previous
    # attempt): a round's latency is mostly such round trips (docs/benchmarks.md, latency).
    state = store.round_state(job_id, chain, round_)
    if state.finished or state.spec is None:
        return {"skipped": "job finished"}
    generator = _need(ctx.generator, "a generator client", "generate_round")
    cancellation = _need(ctx.cancellation, "a cancellation watcher", "generate_round")
    spec = state.spec
    if state.status is JobStatus.QUEUED:
        store.mark_running(job_id)
    if state.attempt is not None:
        return _resume_generated(job_id, chain, round_, spec, state.attempt, state.interactive)

    try:
        started = time.monotonic()
        retrieved = _retrieve(ctx, job_id, spec, state.retrieved)
        retrieve_ms = _ms(started)
        profile = load_profile(spec.prompt_profile or ctx.settings.prompt.profile, extra_dir=ctx.settings.prompt.dir)
        task = round_task(spec, retrieved, round_, state.previous)
        messages = profile.messages(task)
        sampling = Sampling(
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
            stop=profile.sampling.stop,
        )
        started = time.monotonic()
        with cancellation.watch(job_id) as cancelled, metrics.IN_FLIGHT.track_inprogress():
            completion = generator.complete(
                messages,
                sampling,
                request_id=f"{job_id}-c{chain}-r{round_}",
                extra=profile.request_extra,
                cancel=cancelled,
            )
        generate_ms = _ms(started)
        metrics.observe_generation(
            seconds=generate_ms / 1000,
            retrieval_seconds=retrieve_ms / 1000,
            finish=completion.finish_reason,
            usage=completion.usage,
            ttft_ms=completion.ttft_ms,
        )
    except GenerationCancelled:
        logger.info("job %s: generation of round %d chain %d aborted: the job is finished", job_id, round_, chain)
        return {"skipped": "job finished during generation"}
    except DependencyError as exc:
        if exc.transient:
            raise
        _end_with_error(job_id, f"{exc} (round {round_} of chain {chain}; not retried)")
        return {"error": str(exc)}
    except RequestError as exc:  # e.g. a prompt profile this worker does not have
        return _end_with_request_error(job_id, exc, chain, round_)

    extraction = extract_code(
        completion.content,
        completion.reasoning,
        finish_reason=completion.finish_reason,
        theorem_name=parse_statement(spec.formal_statement).name,
        formal_statement=spec.formal_statement,
    )
    attempt: dict[str, Any] = {
        "chain": chain,
        "round": round_,
        "code": extraction.code,
        "verdict": None if extraction.code is not None else Verdict.NO_CODE.value,
        "feedback": extraction.problem,
        "retrieved": [proof.id for proof in retrieved],
        "finish_reason": completion.finish_reason,
        "model": completion.model,
        "prompt_profile": profile.name,
        "usage": completion.usage,
        "timings": {"retrieve_ms": retrieve_ms, "generate_ms": generate_ms},
        "request_id": completion.request_id,
    }
    # The model's work is spent: keep it on the record even if the job finished meanwhile.
    status = store.put_attempt(job_id, attempt, event="attempt.generated", usage=completion.usage)
    if status is None:
        return {"skipped": "job expired"}
    if status.terminal:
        return {"skipped": "job finished during generation"}
    return _resume_generated(job_id, chain, round_, spec, attempt, state.interactive)


def _resume_generated(
    job_id: str, chain: int, round_: int, spec: JobSpec, attempt: dict[str, Any], interactive: bool
) -> dict[str, Any]:
    """The step after a recorded generation: verify its code, or (no code) go on to the next round."""
    if attempt.get("verdict") is None and attempt.get("code") is not None:
        context.current().dispatch.verify(job_id, chain, round_, spec.lean_version)
    elif attempt.get("verdict") == Verdict.NO_CODE.value:
        _advance(job_id, chain, round_, spec, interactive)
    return {"verdict": attempt.get("verdict"), "chars": len(attempt.get("code") or "")}


def _retrieve(
    ctx: context.WorkerContext, job_id: str, spec: JobSpec, kept: list[RetrievedProof] | None
) -> list[RetrievedProof]:
    """The job's retrieved proofs: searched once (`kept` is what an earlier round kept), then the same for every
    chain and round.

    Retrieval helps the model but is not required: a memory outage degrades the prompt, not the job.
    """
    if spec.top_k == 0 or ctx.memory is None:
        return []
    if kept is not None:
        return kept
    try:
        found = ctx.memory.search(
            spec.formal_statement,
            top_k=spec.top_k,
            exclude_hashes=spec.exclude_hashes,
            exclude_names=spec.exclude_names,
        )
    except MemoryError_ as exc:
        logger.warning("job %s: retrieval skipped: %s", job_id, exc)
        ctx.store.event(job_id, "memory.unavailable", {"error": str(exc)})
        return []
    # The memory keeps whole files; the prompt shows the target's header once, not once per proof.
    shown = _within_budget(
        [replace(proof, proof=strip_header_lines(proof.proof)) for proof in found],
        ctx.settings.prompt.retrieved_max_chars,
    )
    return ctx.store.keep_retrieved(job_id, shown)


def _within_budget(proofs: list[RetrievedProof], max_chars: int) -> list[RetrievedProof]:
    """In rank order, the proofs that fit the budget (a long one is skipped, shorter ones after it still fit):
    a prompt longer than the model's context is refused by the server and would end the job."""
    shown, used = [], 0
    for proof in proofs:
        size = len(proof.formal_statement) + len(proof.proof)
        if used + size <= max_chars:
            shown.append(proof)
            used += size
    return shown


# --- verify --------------------------------------------------------------------------------------------------------
def verify_round(job_id: str, chain: int, round_: int) -> dict[str, Any]:
    ctx = context.current()
    store = ctx.store
    state = store.round_state(job_id, chain, round_)
    if state.finished or state.spec is None:
        if state.proved_by == (chain, round_):
            # This step proved the job and then failed before the proof reached the memory: finish that part.
            ctx.dispatch.remember(job_id)
        return {"skipped": "job finished"}
    checker = _need(ctx.checker, "a Lean checker", "verify_round")
    spec, attempt = state.spec, state.attempt
    if attempt is None or attempt.get("code") is None:
        raise RuntimeError(f"job {job_id}: round {round_} of chain {chain} has no generated code to verify")

    try:
        result = checker.check(attempt["code"], formal_statement=spec.formal_statement, header=spec.header)
    except RequestError as exc:  # the job's header or statement: every round would be refused the same way
        return _end_with_request_error(job_id, exc, chain, round_)
    attempt.update(
        verdict=result.verdict.value,
        feedback=result.feedback,
        messages=[m.to_json() if hasattr(m, "to_json") else m for m in result.messages],
        axioms=result.axioms,
        lean=checker.versions(),
    )
    attempt.setdefault("timings", {})["verify_ms"] = result.time_ms
    status = store.put_attempt(job_id, attempt, event="attempt.verified")
    metrics.observe_round(result.verdict.value, attempt.get("timings"))

    if result.verdict is Verdict.PASS:
        store.set_lean(job_id, checker.versions())
        if store.finish_proved(job_id, chain=chain, round_=round_, proof=result.compiled):
            metrics.observe_job_end("proved", store.get(job_id))
            ctx.dispatch.remember(job_id)
            dropped = ctx.dispatch.drop_pending(job_id, spec.attempts, spec.rounds)
            logger.info(
                "job %s: proved by chain %d round %d (%d queued rounds dropped)", job_id, chain, round_, dropped
            )
    elif status is not None and not status.terminal:
        _advance(job_id, chain, round_, spec, state.interactive)
    return {"verdict": result.verdict.value, "time_ms": result.time_ms}


def _advance(job_id: str, chain: int, round_: int, spec: JobSpec, interactive: bool) -> None:
    """After a failed round of a job that is still running: the next round of this chain, or the end of the
    chain (callers have just read the job's status, from the attempt write)."""
    ctx = context.current()
    if round_ < spec.rounds:
        ctx.dispatch.generate(job_id, chain, round_ + 1, interactive=interactive)
    elif ctx.store.chain_ended(job_id, chain):  # the last chain: the job failed
        metrics.observe_job_end("failed", ctx.store.get(job_id))


# --- memory ----------------------------------------------------------------------------------------------------------
def remember_proof(job_id: str) -> dict[str, Any]:
    from services.memory import VerifiedProof

    ctx = context.current()
    memory = _need(ctx.memory, "the retrieval memory", "remember_proof")
    job = ctx.store.get(job_id)
    if job["status"] != "proved" or not job["proof"]:
        return {"skipped": "not proved"}
    winner: dict[str, Any] = next(
        (
            a
            for a in job["attempts"]
            if (a["chain"], a["round"]) == (job["proved_by"]["chain"], job["proved_by"]["round"])
        ),
        {},
    )
    lean = job.get("lean") or {}
    added = memory.add(
        [
            VerifiedProof(
                formal_statement=job["formal_statement"],
                proof=job["proof"],
                header=job["header"],
                source=f"oprover-serve:{job_id}",
                model=winner.get("model"),
                lean_version=lean.get("lean"),
                job_id=job_id,
                created_at=job["finished_at"] or time.time(),
            )
        ]
    )
    return {"added": added}


# --- one-off verification (POST /v1/verify) ---------------------------------------------------------------------------
def verify_code(request_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Check the code and push the result for the waiting gateway: a verdict, or `{"request_error": ...}` when
    the request itself cannot be checked (the gateway answers that with its status, a 400 naming the field)."""
    ctx = context.current()
    checker = _need(ctx.checker, "a Lean checker", "verify_code")
    # The gateway refuses a larger `timeout_s`; this worker's own limit holds whatever a gateway sent.
    limit_s = ctx.settings.lean.timeout_s
    timeout_s = min(float(payload.get("timeout_s") or limit_s), limit_s)
    try:
        result = checker.check(
            payload["code"],
            formal_statement=payload.get("formal_statement"),
            header=payload.get("header"),
            timeout_s=timeout_s,
        )
    except RequestError as exc:
        logger.info("verification %s refused: %s", request_id, exc.describe())
        _deliver_verify_result(ctx.redis, request_id, {"request_error": exc.to_json()})
        return {"request_error": exc.describe()}
    body = {**result.to_json(), "lean": checker.versions()}
    _deliver_verify_result(ctx.redis, request_id, body)
    return {"verdict": result.verdict.value}


# --- failure callbacks (RQ calls these when a step raised or its worker died) -----------------------------------------
def on_stage_failure(job: Job, connection: Any, exc_type: type, exc: BaseException, tb: Any) -> None:
    ctx = context.maybe_current()
    job_id, chain, round_ = job.args[0], job.args[1], job.args[2]
    stage = "generation" if (job.func_name or "").endswith("generate_round") else "verification"
    reason = _describe(exc, stage)
    if isinstance(exc, RequestError):
        _never_retry(job)
        _end_with_error(job_id, f"{reason} (round {round_} of chain {chain}; not retried)", connection=connection)
        return
    if job.retries_left:
        logger.warning("job %s: %s of round %d chain %d failed, retrying: %s", job_id, stage, round_, chain, reason)
        _store(ctx, connection).event(
            job_id, "round.retrying", {"chain": chain, "round": round_, "stage": stage, "error": reason}
        )
        return
    _end_with_error(job_id, f"{reason} (round {round_} of chain {chain}, retries exhausted)", connection=connection)


def on_verify_failure(job: Job, connection: Any, exc_type: type, exc: BaseException, tb: Any) -> None:
    if isinstance(exc, RequestError):
        _never_retry(job)
        _deliver_verify_result(connection, job.args[0], {"request_error": exc.to_json()})
        return
    if job.retries_left:
        return
    # The check was cut off (its worker died, it timed out, the REPLs could not start): that is no verdict on the
    # code, so the gateway answers 503 and the client retries, instead of a 200 `error` verdict.
    if isinstance(exc, DependencyError):
        failure = {"dependency": exc.dependency, "message": exc.message}
    else:
        failure = {"dependency": "lean", "message": _describe(exc, "verification")}
    _deliver_verify_result(connection, job.args[0], {"dependency_error": failure})


def _never_retry(job: Job) -> None:
    """RQ runs the failure callback before it decides on a retry, and retries while `retries_left` > 0."""
    job.retries_left = 0


def _deliver_verify_result(client: Any, request_id: str, body: dict[str, Any]) -> None:
    """The waiting gateway BLPOPs this list; the TTL cleans up after a client that gave up."""
    from services import keys

    key = keys.verify_result_key(request_id)
    with client.pipeline() as pipe:
        pipe.rpush(key, json.dumps(body, ensure_ascii=False))
        pipe.expire(key, keys.VERIFY_RESULT_TTL_S)
        pipe.execute()


def _describe(exc: BaseException, stage: str) -> str:
    if isinstance(exc, DependencyError):
        return str(exc)
    if isinstance(exc, RequestError):
        return exc.describe()
    if isinstance(exc, WorkerMisconfigured):
        return f"worker misconfigured: {exc}"
    if type(exc).__name__ == "AbandonedJobError":
        return f"{'generate' if stage == 'generation' else 'verify'} worker died during {stage}"
    if type(exc).__name__ == "JobTimeoutException":
        return f"{stage} exceeded its job timeout"
    return f"internal error during {stage}: {type(exc).__name__}: {exc}"


def _store(ctx: context.WorkerContext | None, connection: Any) -> Any:
    if ctx is not None:
        return ctx.store
    from services.settings import load_settings
    from services.store import JobStore

    # a failure callback run outside a worker's context: the same settings the worker started with
    return JobStore(connection, job_ttl_s=load_settings().prove.job_ttl_s)


def _end_with_request_error(job_id: str, exc: RequestError, chain: int, round_: int) -> dict[str, Any]:
    _end_with_error(job_id, f"{exc.describe()} (found in round {round_} of chain {chain}; not retried)")
    return {"request_error": exc.describe()}


def _end_with_error(job_id: str, error: str, *, connection: Any = None) -> None:
    ctx = context.maybe_current()
    store = _store(ctx, connection)
    try:
        ended = store.fail_with_error(job_id, error)
    except NotFound:  # expired meanwhile: nothing left to end
        return
    if ended:
        metrics.observe_job_end("error", None)
        logger.error("job %s: ended with error: %s", job_id, error)
        if ctx is not None:
            spec = store.spec(job_id)
            ctx.dispatch.drop_pending(job_id, spec.attempts, spec.rounds)
