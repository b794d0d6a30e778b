"""A stand-in OpenAI-compatible generator: a real HTTP server process that answers from a script.

It speaks the parts of the OpenAI chat API that SGLang and vLLM serve and that oprover-serve uses:
`POST /v1/chat/completions` (non-stream and SSE stream, `reasoning_content` like SGLang with
`--reasoning-parser qwen3`, `usage` with `prompt_tokens_details.cached_tokens`), `GET /v1/models` and
`GET /health`. Every answer says it comes from a stand-in: the model id starts with `standin-` and the
response id with `standin-`. `oprover up --demo` runs it on the demo's script (api/demo.py).

Run it as a process:

    python -m standins.openai_server --port 0 [--capacity C --latency-s L] [--model standin-oprover] [--script S.json]

It prints one line `standin-openai listening on http://HOST:PORT` once it accepts connections (so `--port 0`
works), then serves until SIGTERM/SIGINT. `--script` loads a script (the body `POST /_admin/script` takes) at start.

How a script answers a request. The request's "prompt" is the `content` of every message (text parts of a
content list included) joined with newlines, in order: the system prompt, the user prompt with the retrieved
proofs, the statement and, in a repair round, the previous attempt and Lean's errors (services/prompts/profiles/
lays each profile's prompt out). Rules are tried in order and the first that matches answers:

- `match`: a plain substring of the prompt (case and whitespace exact; `""` matches everything);
- `regex`: instead of `match`, a Python regular expression searched in the prompt (`re.search`): what to use
  when a substring is ambiguous, e.g. a theorem's name also appears in a retrieved proof, but only the target is
  shown as `theorem NAME … := by sorry`;
- `times`: how many requests the rule may answer (null: any number), so a test can script "fail once, then ...".

Without a matching rule `default` answers.

Admin API (JSON), set per test:

- `POST /_admin/script` `{"rules": [rule, ...], "default": {"content": "...", ...}}` replaces the script.
  A rule is `{"match": str, "regex": str|null, "content": str, "reasoning_content": str|null,
  "finish_reason": "stop"|"length", "status": 200, "delay_s": 0, "times": int|null, "retry_after": number|null,
  "error_message": str|null, "stream_error_after": int|null}`. A rule with `status` >= 400 answers with the
  OpenAI error shape and a `Retry-After` header when `retry_after` is set. `stream_error_after: n` cuts a stream
  after n content chunks with an error frame (what SGLang does when a request is aborted mid-generation).
- `GET /_admin/requests` `{"requests": [{"body": ..., "headers": {...}, "received_at": t, "finished_at": t|null,
  "outcome": str|null}, ...]}` in order (times are `time.time()`). `outcome` is `completed`, `error` (a scripted
  status), `stream_error` (cut by `stream_error_after`) or `closed_by_client` (the client closed the connection
  before the answer was complete: what SGLang treats as an abort); null while the request is in flight. The
  client's request id is in `headers["x-request-id"]`.
- `POST /_admin/reset` clears the script, the recorded requests and the statistics.
- `POST /_admin/health` `{"status": 503}` makes `/health` answer with that status (default 200).
- `GET /_admin/stats`: capacity-mode statistics (busy fraction of C slots, queue waits, served count).

Capacity mode (`--capacity C --latency-s L`) models a GPU server: at most C requests generate at once, each
taking L seconds (on top of a rule's own `delay_s`), the rest wait in FIFO order. Busy time is integrated
per slot, so `busy_fraction` = slot-seconds in use / (C x window), window running from the first request
after the last reset to the last completion (or now, while requests are in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

logger = logging.getLogger("standin.openai")

DEFAULT_MODEL = "standin-oprover"
DEFAULT_CONTENT = (
    "[standin] no script rule matched this request\n```lean4\ntheorem standin : True := by\n  trivial\n```"
)
READY_LINE = "standin-openai listening on"


def _error_body(message: str, status: int, *, code: str | None = None) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code or str(status)}}


def _approx_tokens(text: str) -> int:
    """Rough token count (4 characters a token) so that usage numbers move with the text."""
    return max(1, (len(text) + 3) // 4) if text else 0


@dataclass
class Rule:
    match: str = ""
    regex: str | None = None  # searched in the prompt instead of `match`
    content: str = ""
    reasoning_content: str | None = None
    finish_reason: str = "stop"
    status: int = 200
    delay_s: float = 0.0
    times: int | None = None
    retry_after: float | None = None
    error_message: str | None = None
    stream_error_after: int | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Rule:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown rule fields: {sorted(unknown)}")
        rule = cls(**raw)
        if rule.regex is not None:
            try:
                re.compile(rule.regex)
            except re.error as exc:
                raise ValueError(f"regex {rule.regex!r} does not compile: {exc}") from None
        return rule

    def matches(self, prompt: str) -> bool:
        if self.regex is not None:
            return re.search(self.regex, prompt) is not None
        return self.match in prompt


@dataclass
class CapacityStats:
    """Integrates how many of the C slots are busy over time."""

    capacity: int
    latency_s: float
    active: int = 0
    waiting: int = 0
    max_waiting: int = 0
    served: int = 0
    busy_slot_s: float = 0.0
    first_start: float | None = None
    last_change: float | None = None
    last_finish: float | None = None
    waits: list[float] = field(default_factory=list)

    def _advance(self, now: float) -> None:
        if self.last_change is not None:
            self.busy_slot_s += self.active * (now - self.last_change)
        self.last_change = now

    def start(self, now: float) -> None:
        if self.first_start is None:
            self.first_start = now
        self._advance(now)
        self.active += 1

    def finish(self, now: float) -> None:
        self._advance(now)
        self.active -= 1
        self.served += 1
        self.last_finish = now

    def snapshot(self, now: float) -> dict[str, Any]:
        busy = self.busy_slot_s + (self.active * (now - self.last_change) if self.last_change else 0.0)
        end = now if self.active or self.last_finish is None else self.last_finish
        window = (end - self.first_start) if self.first_start is not None else 0.0
        waits = sorted(self.waits)
        return {
            "standin": True,
            "now_s": round(now, 6),  # the server's monotonic clock: windows between two snapshots
            "capacity": self.capacity,
            "latency_s": self.latency_s,
            "served": self.served,
            "active": self.active,
            "waiting": self.waiting,
            "max_waiting": self.max_waiting,
            "busy_slot_s": round(busy, 6),
            "window_s": round(window, 6),
            "busy_fraction": round(busy / (self.capacity * window), 6) if window > 0 else 0.0,
            "wait_mean_s": round(sum(waits) / len(waits), 6) if waits else 0.0,
            "wait_p95_s": round(waits[int(0.95 * (len(waits) - 1))], 6) if waits else 0.0,
        }


class StandinState:
    def __init__(self, *, model: str, capacity: int | None, latency_s: float) -> None:
        self.model = model
        self.capacity = capacity
        self.latency_s = latency_s
        self.health_status = 200
        self.rules: list[Rule] = []
        self.default = Rule(content=DEFAULT_CONTENT)
        self.requests: list[dict[str, Any]] = []
        self.prompts: list[str] = []
        self.slots = asyncio.Semaphore(capacity) if capacity else None
        self.stats = CapacityStats(capacity or 0, latency_s)

    def reset(self) -> None:
        self.rules = []
        self.default = Rule(content=DEFAULT_CONTENT)
        self.requests = []
        self.prompts = []
        self.health_status = 200
        self.stats = CapacityStats(self.capacity or 0, self.latency_s)

    def pick(self, prompt: str) -> Rule:
        for rule in self.rules:
            if (rule.times is None or rule.times > 0) and rule.matches(prompt):
                if rule.times is not None:
                    rule.times -= 1
                return rule
        return self.default

    def cached_prefix_tokens(self, prompt: str) -> int:
        """Like a radix cache: the longest prefix this prompt shares with an earlier one, in tokens."""
        best = 0
        for earlier in self.prompts[-64:]:
            # Binary search on slice equality (compared in C): cheap enough for hundreds of requests a second.
            lo, hi = best, min(len(earlier), len(prompt))
            if earlier[:lo] != prompt[:lo]:
                continue
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if earlier[:mid] == prompt[:mid]:
                    lo = mid
                else:
                    hi = mid - 1
            best = lo
        return best // 4


def parse_script(raw: dict[str, Any]) -> tuple[list[Rule], Rule]:
    """A script (`{"rules": [...], "default": {...}}`) as its rules and its default answer; ValueError if bad."""
    rules = [Rule.parse(r) for r in raw.get("rules") or []]
    default = Rule.parse(raw["default"]) if raw.get("default") else Rule(content=DEFAULT_CONTENT)
    return rules, default


def _prompt_text(body: dict[str, Any]) -> str:
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def create_app(state: StandinState) -> Starlette:
    async def chat(request: Request) -> Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return JSONResponse(_error_body("body is not JSON", 400), status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return JSONResponse(_error_body("messages must be a non-empty list", 400), status_code=400)
        record: dict[str, Any] = {
            "body": body,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "received_at": time.time(),
            "finished_at": None,
            "outcome": None,
        }
        state.requests.append(record)

        def finish(outcome: str) -> None:
            if record["outcome"] is None:
                record["finished_at"], record["outcome"] = time.time(), outcome

        prompt = _prompt_text(body)
        rule = state.pick(prompt)
        cached = state.cached_prefix_tokens(prompt)
        state.prompts.append(prompt)

        if rule.status >= 400:
            if rule.delay_s:
                await asyncio.sleep(rule.delay_s)
            headers = {"retry-after": f"{rule.retry_after:g}"} if rule.retry_after is not None else {}
            message = rule.error_message or f"[standin] scripted error {rule.status}"
            finish("error")
            return JSONResponse(_error_body(message, rule.status), status_code=rule.status, headers=headers)

        model = body.get("model") or state.model
        usage = {
            "prompt_tokens": _approx_tokens(prompt),
            "completion_tokens": _approx_tokens(rule.content) + _approx_tokens(rule.reasoning_content or ""),
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"standin-{uuid.uuid4().hex[:16]}"
        created = int(time.time())

        async def generate() -> None:
            if rule.delay_s:
                await asyncio.sleep(rule.delay_s)
            if state.slots is None:
                return
            queued_at = time.monotonic()
            state.stats.waiting += 1
            state.stats.max_waiting = max(state.stats.max_waiting, state.stats.waiting)
            try:
                await state.slots.acquire()
            finally:
                state.stats.waiting -= 1
            state.stats.waits.append(time.monotonic() - queued_at)
            state.stats.start(time.monotonic())
            try:
                await asyncio.sleep(state.latency_s)
            finally:
                state.stats.finish(time.monotonic())
                state.slots.release()

        if not body.get("stream"):
            await generate()
            finish("completed")
            message: dict[str, Any] = {"role": "assistant", "content": rule.content}
            message["reasoning_content"] = rule.reasoning_content
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": rule.finish_reason}],
                    "usage": usage,
                }
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def frame(delta: dict[str, Any], finish: str | None = None) -> str:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(chunk)}\n\n"

        async def stream() -> AsyncIterator[str]:
            # Starlette cancels this generator when the client disconnects (also during the delay), so the
            # `finally` sees a stream the client closed before its end.
            try:
                async for chunk in stream_frames():
                    yield chunk
            finally:
                finish("closed_by_client")

        async def stream_frames() -> AsyncIterator[str]:
            await generate()
            yield frame({"role": "assistant", "content": ""})
            for piece in _pieces(rule.reasoning_content or ""):
                yield frame({"reasoning_content": piece})
            for n, piece in enumerate(_pieces(rule.content)):
                if rule.stream_error_after is not None and n >= rule.stream_error_after:
                    finish("stream_error")
                    error = _error_body("[standin] generation aborted mid-stream", 500)
                    yield f"data: {json.dumps(error)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                yield frame({"content": piece})
            finish("completed")  # the whole answer is out: what follows is bookkeeping (finish reason, usage)
            yield frame({}, rule.finish_reason)
            if include_usage:
                tail = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(tail)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": state.model, "object": "model", "created": 0, "owned_by": "standin"}],
            }
        )

    async def health(request: Request) -> Response:
        return Response(status_code=state.health_status)

    async def admin_script(request: Request) -> Response:
        try:
            rules, default = parse_script(await request.json())
        except (TypeError, ValueError, AttributeError) as exc:
            return JSONResponse(_error_body(str(exc), 400), status_code=400)
        state.rules, state.default = rules, default
        return JSONResponse({"ok": True, "rules": len(rules)})

    async def admin_requests(request: Request) -> Response:
        return JSONResponse({"requests": state.requests})

    async def admin_reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def admin_health(request: Request) -> Response:
        state.health_status = int((await request.json()).get("status", 200))
        return JSONResponse({"ok": True, "status": state.health_status})

    async def admin_stats(request: Request) -> Response:
        return JSONResponse(state.stats.snapshot(time.monotonic()))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/_admin/script", admin_script, methods=["POST"]),
            Route("/_admin/requests", admin_requests, methods=["GET"]),
            Route("/_admin/reset", admin_reset, methods=["POST"]),
            Route("/_admin/health", admin_health, methods=["POST"]),
            Route("/_admin/stats", admin_stats, methods=["GET"]),
        ]
    )


def _pieces(text: str, size: int = 24) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stand-in OpenAI-compatible generator (not a model).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--capacity", type=int, default=None, help="requests served at once (capacity mode)")
    parser.add_argument("--latency-s", type=float, default=0.0, help="seconds each request takes")
    parser.add_argument("--script", type=Path, default=None, help="JSON script to answer from (default: none)")
    args = parser.parse_args(argv)
    if not args.model.startswith("standin-"):
        parser.error("--model must start with 'standin-' so nobody mistakes it for a real model")
    script: tuple[list[Rule], Rule] | None = None
    if args.script is not None:
        try:
            script = parse_script(json.loads(args.script.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            parser.error(f"--script {args.script}: {exc}")
    logging.basicConfig(level=logging.WARNING)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    port = sock.getsockname()[1]

    async def serve() -> None:
        state = StandinState(model=args.model, capacity=args.capacity, latency_s=args.latency_s)
        if script is not None:
            state.rules, state.default = script
        config = uvicorn.Config(
            create_app(state),
            log_level="warning",
            access_log=False,
            timeout_keep_alive=60,
            backlog=2048,
        )
        server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        print(f"{READY_LINE} http://{args.host}:{port}", flush=True)
        await task

    asyncio.run(serve())


class StandinServer:
    """Starts the stand-in as a child process and hands out its URLs; for tests and the bench."""

    def __init__(
        self,
        *,
        capacity: int | None = None,
        latency_s: float = 0.0,
        model: str = DEFAULT_MODEL,
        start_timeout_s: float = 20.0,
    ) -> None:
        cmd = [sys.executable, "-m", "standins.openai_server", "--port", "0", "--model", model]
        if capacity:
            cmd += ["--capacity", str(capacity), "--latency-s", str(latency_s)]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + start_timeout_s
        line = ""
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith(READY_LINE) or not line:
                break
        if not line.startswith(READY_LINE):
            self.close()
            raise RuntimeError(f"stand-in generator did not start (last output {line!r})")
        self.root = line.split()[-1]
        self.url = self.root + "/v1"
        self.admin = httpx.Client(base_url=self.root, timeout=10.0)

    def script(self, rules: list[dict[str, Any]], default: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"rules": rules}
        if default is not None:
            body["default"] = default
        self.admin.post("/_admin/script", json=body).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        response = self.admin.get("/_admin/requests")
        response.raise_for_status()
        return response.json()["requests"]

    def reset(self) -> None:
        self.admin.post("/_admin/reset").raise_for_status()

    def set_health(self, status: int) -> None:
        self.admin.post("/_admin/health", json={"status": status}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self.admin.get("/_admin/stats")
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.admin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> StandinServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
