"""`OpenAIServingChat`: OpenAI's chat-completions semantics over the proving loop (model `oprover`).

A chat request becomes an ordinary proof job (the same record as `POST /v1/prove`, readable at
`GET /v1/prove/{id}`): the statement comes from the last user message (api/chat_text.py), OpenAI's sampling
fields map to the job's sampling, `n` > 1 is `attempts` (one choice per chain: pass@n as the user sees it),
`user` and `metadata` are kept on the job. Everything that can be refused is refused before the job exists,
so a bad request is a 4xx, never a 200 stream that fails.

Built once at start-up over `ServingProve` (api/app.py); every request names its caller, whose job it creates.
The answer follows the job's event stream (`ServingProve.follow`, as `/v1/prove/{id}/events` does): a blocking
read of at most `keepalive_s`, so a stream that has nothing to say sends an SSE comment instead, and a job whose
record vanished is noticed. Progress goes out as `delta.reasoning_content` (what chat UIs show as thinking):
a round started, the retrieved proofs it uses, Lean's verdict and first error; the answer is `delta.content`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import pydantic
import redis.exceptions
from fastapi.concurrency import run_in_threadpool

from api import chat_text
from api.gateway import Gateway
from api.openai_protocol import OPROVER_MODEL, ChatCompletionRequest
from api.protocol import ProveRequest, SamplingParams
from api.serving_prove import ServingProve
from api.tenancy import Caller
from services.errors import OproverError, RequestError
from services.store import Event

logger = logging.getLogger(__name__)

# Our request fields that have another name on the proof job: an error about the job's field names the chat's.
_PARAMS = {"formal_statement": "messages", "sampling.max_tokens": "max_tokens"}
KEEPALIVE = ": keep-alive\n\n"


@dataclass
class ChatJob:
    """A submitted chat request: its proof job and what the answer must look like."""

    job_id: str
    request: ChatCompletionRequest
    choices: int
    caller: Caller  # the key the job belongs to: a client that leaves cancels it as that key
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.job_id}"


class OpenAIServingChat:
    def __init__(self, gateway: Gateway, prove: ServingProve) -> None:
        self.gw = gateway
        self.prove = prove
        self.keepalive_s = gateway.settings.chat.keepalive_s

    # --- the request --------------------------------------------------------------------------------------------
    def submit(self, caller: Caller, req: ChatCompletionRequest) -> ChatJob:
        """Validate and start the proof job (sync: store and RQ calls; routes call it in the thread pool)."""
        if req.model != OPROVER_MODEL:
            raise RequestError(f"model {req.model!r} is relayed, not proved", param="model")
        statement = chat_text.statement_from_messages(req.messages)
        n = req.n or 1
        if n > 1 and req.attempts is not None and req.attempts != n:
            raise RequestError(
                f"n ({n}) and attempts ({req.attempts}) disagree: n > 1 is the number of chains", param="n"
            )
        try:
            prove = ProveRequest(
                formal_statement=statement.formal_statement,
                header=req.header if req.header is not None else statement.header,
                rounds=req.rounds,
                attempts=n if n > 1 else req.attempts,
                top_k=req.top_k,
                sampling=SamplingParams(
                    temperature=req.temperature,
                    top_p=req.top_p,
                    max_tokens=req.max_completion_tokens or req.max_tokens,
                ),
                prompt_profile=req.prompt_profile,
                lean_version=req.lean_version,
                metadata=req.metadata,
            )
            spec = self.prove.build_spec(prove)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(part) for part in first["loc"])
            param = _PARAMS.get(param, param.removeprefix("sampling."))
            raise RequestError(f"{param}: {first['msg']}", param=param, code=first["type"]) from None
        except RequestError as exc:
            if exc.param in _PARAMS:
                exc.param = _PARAMS[exc.param]
            raise
        job_id = self.prove.submit_spec(caller, replace(spec, user=req.user), interactive=not req.background)
        logger.info("job %s: chat request (%d choice(s), stream=%s)", job_id, spec.attempts, bool(req.stream))
        return ChatJob(job_id=job_id, request=req, choices=spec.attempts, caller=caller)

    def submit_once(
        self, caller: Caller, req: ChatCompletionRequest, idempotency_key: str | None, body: bytes
    ) -> ChatJob:
        """`submit`, at most once per Idempotency-Key of the caller: a retry follows the job the first one started."""
        created: list[ChatJob] = []

        def create() -> list[str]:
            created.append(self.submit(caller, req))
            return [created[0].job_id]

        outcome = self.prove.once(caller, "chat", idempotency_key, body, create)
        if created:
            return created[0]
        job_id = outcome.job_ids[0]
        return ChatJob(job_id=job_id, request=req, choices=self.gw.store.spec(job_id).attempts, caller=caller)

    async def abandon(self, chat: ChatJob) -> None:
        """The client left before the answer: stop its job, unless it asked for the job to go on."""
        if chat.request.background:
            logger.info("job %s: chat client left; the job goes on (background)", chat.job_id)
            return
        with anyio.CancelScope(shield=True):  # we are being cancelled ourselves: this part must still run
            try:
                await run_in_threadpool(self.prove.cancel, chat.caller, chat.job_id)
                logger.info("job %s: chat client left; job cancelled", chat.job_id)
            except (OproverError, redis.exceptions.RedisError) as exc:  # already ended, expired, Redis down
                logger.info("job %s: chat client left; not cancelled: %s", chat.job_id, exc)

    # --- following the job ----------------------------------------------------------------------------------------
    def _follow(self, job_id: str) -> AsyncIterator[Event | None]:
        """The job's events up to its terminal one; None after each `keepalive_s` without any."""
        return self.prove.follow(job_id, idle_s=self.keepalive_s)

    async def complete(self, chat: ChatJob) -> dict[str, Any]:
        """The whole answer, once the job has ended (non-streaming requests)."""
        async for _event in self._follow(chat.job_id):
            pass
        job = await run_in_threadpool(self.gw.store.get, chat.job_id)
        return {
            "id": chat.completion_id,
            "object": "chat.completion",
            "created": chat.created,
            "model": OPROVER_MODEL,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": chat_text.answer(job, index), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for index in range(chat.choices)
            ],
            "usage": usage(job),
            "oprover": summary(job),
        }

    async def stream(self, chat: ChatJob) -> AsyncIterator[str]:
        """The answer as OpenAI chunks: role, progress as reasoning, content, one finish per choice, [DONE]."""
        frames = _Frames(chat)
        finished = False
        try:
            for index in range(chat.choices):
                yield frames.chunk(index, {"role": "assistant", "content": ""})
            progress = _Progress(self.gw, chat)
            async for event in self._follow(chat.job_id):
                if event is None:
                    yield KEEPALIVE
                    continue
                for index, text in await progress.describe(event):
                    yield frames.chunk(index, {"reasoning_content": text})
            finished = True
            job = await run_in_threadpool(self.gw.store.get, chat.job_id)
            for index in range(chat.choices):
                yield frames.chunk(index, {"content": chat_text.answer(job, index)})
            oprover = summary(job)
            for index in range(chat.choices):
                yield frames.chunk(index, {}, finish_reason="stop", oprover=oprover)
            if chat.request.wants_usage_chunk:
                yield frames.usage(usage(job))
        except (OproverError, redis.exceptions.RedisError) as exc:
            # After the 200 an error can only travel in the stream: one data frame with the envelope, then [DONE].
            logger.warning("job %s: chat stream failed: %s", chat.job_id, exc)
            yield frames.error(exc)
        except (asyncio.CancelledError, GeneratorExit):  # the client left: Starlette cancelled the response
            if not finished:
                await self.abandon(chat)
            raise
        except Exception as exc:
            logger.exception("job %s: chat stream failed", chat.job_id)
            yield frames.error(exc)
        yield "data: [DONE]\n\n"


class _Frames:
    """SSE frames of one chat completion in OpenAI's chunk format."""

    def __init__(self, chat: ChatJob) -> None:
        self.chat = chat
        self.with_usage = chat.request.wants_usage_chunk

    def _frame(self, body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def _base(self) -> dict[str, Any]:
        return {
            "id": self.chat.completion_id,
            "object": "chat.completion.chunk",
            "created": self.chat.created,
            "model": OPROVER_MODEL,
            "system_fingerprint": None,
        }

    def chunk(self, index: int, delta: dict[str, Any], *, finish_reason: str | None = None, **extra: Any) -> str:
        body = self._base()
        body["choices"] = [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        if self.with_usage:
            body["usage"] = None  # as OpenAI: only the last chunk carries usage when it was asked for
        return self._frame({**body, **extra})

    def usage(self, numbers: dict[str, int]) -> str:
        return self._frame({**self._base(), "choices": [], "usage": numbers})

    def error(self, exc: Exception) -> str:
        if isinstance(exc, RequestError):
            error = {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
        elif isinstance(exc, OproverError | redis.exceptions.RedisError):
            error = {"message": str(exc), "type": "service_unavailable", "param": None, "code": "unavailable"}
        else:
            error = {"message": "internal server error", "type": "server_error", "param": None, "code": None}
        return self._frame({"error": error})


class _Progress:
    """Turns job events into short progress lines, each addressed to the choice (chain) it is about."""

    def __init__(self, gateway: Gateway, chat: ChatJob) -> None:
        self.gw = gateway
        self.chat = chat
        self.rounds: int | None = None
        self.retrieval_told = False

    def _all(self, text: str) -> list[tuple[int, str]]:
        return [(index, text) for index in range(self.chat.choices)]

    def _prefix(self, chain: int) -> str:
        return f"[chain {chain}] " if self.chat.choices > 1 else ""

    async def describe(self, event: Event) -> list[tuple[int, str]]:
        data = event.data
        if event.type == "job.running":
            spec = await run_in_threadpool(self.gw.store.spec, self.chat.job_id)
            self.rounds = spec.rounds
            return self._all(f"Round 1 of up to {spec.rounds} started: asking the model for a whole proof.\n")
        if event.type == "memory.unavailable":
            return self._all("The proof memory is unavailable: this job goes on without retrieved proofs.\n")
        chain, round_ = data.get("chain"), data.get("round")
        if not isinstance(chain, int) or not 0 <= chain < self.chat.choices:
            return []
        if event.type == "round.retrying":
            return [
                (
                    chain,
                    f"{self._prefix(chain)}Round {round_}: {data.get('stage')} failed "
                    f"({data.get('error')}); retrying.\n",
                )
            ]
        if event.type not in ("attempt.generated", "attempt.verified") or not isinstance(round_, int):
            return []
        attempt = await run_in_threadpool(self.gw.store.attempt, self.chat.job_id, chain, round_)
        if attempt is None:
            return []
        lines = []
        if event.type == "attempt.generated":
            if not self.retrieval_told:
                self.retrieval_told = True
                used = attempt.get("retrieved") or []
                lines.append(
                    f"Using {len(used)} retrieved verified proof(s): {', '.join(used)}.\n"
                    if used
                    else "No retrieved proofs in the prompt.\n"
                )
            if attempt.get("verdict") == "no_code":
                lines.append(f"{self._prefix(chain)}Round {round_}: the model's answer held no complete Lean code.\n")
            else:
                lines.append(f"{self._prefix(chain)}Round {round_}: the model answered; Lean is checking.\n")
        else:
            verdict = attempt.get("verdict")
            if verdict == "pass":
                lines.append(f"{self._prefix(chain)}Round {round_}: Lean's verdict: pass.\n")
            else:
                error = chat_text.first_error(attempt)
                lines.append(
                    f"{self._prefix(chain)}Round {round_}: Lean's verdict: {verdict}"
                    + (f"; first error: {error}" if error else "")
                    + ".\n"
                )
        if attempt.get("verdict") not in (None, "pass") and self.rounds is not None and round_ < self.rounds:
            lines.append(f"{self._prefix(chain)}Round {round_ + 1} started: revising with Lean's feedback.\n")
        return [(chain, line) for line in lines]


def usage(job: dict[str, Any]) -> dict[str, int]:
    prompt, completion = job["usage"]["prompt_tokens"], job["usage"]["completion_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def summary(job: dict[str, Any]) -> dict[str, Any]:
    """The `oprover` object beside `choices`: what a program wants without parsing the text."""
    return {
        "status": job["status"],
        "job_id": job["id"],
        "job_url": f"/v1/prove/{job['id']}",
        "proved_by": job.get("proved_by"),
        "attempts": len(job["attempts"]),
        "verdicts": [{"chain": a["chain"], "round": a["round"], "verdict": a.get("verdict")} for a in job["attempts"]],
        "error": job.get("error"),
    }
