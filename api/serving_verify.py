"""`ServingVerify`: the semantics of `POST /v1/verify`, one piece of Lean code checked on a verify worker.

Built once at start-up (api/app.py). The gateway refuses what it can itself (empty or oversized text, a statement
that does not parse, a timeout over the deployment's limit, a Lean version or header no worker could check, no
live worker of that version), then enqueues the check on the version's verify queue and waits for the verdict
the worker pushes back. A worker's own refusal comes back as the same 4xx; a check cut off by infrastructure
after its retries is a 503, and no verdict in time a 504.
"""

from __future__ import annotations

import secrets
from typing import Any

from api.demo import demo_labelled
from api.gateway import Gateway
from api.input_limits import check_text
from api.lean_versions import LeanVersions
from api.protocol import VerifyRequest
from services import redis_clients
from services.errors import LeanError, RequestError
from services.leantext import parse_statement
from services.store import pop_verify_result


class VerifyTimeout(RequestError):
    status_code = 504
    type = "timeout_error"


class ServingVerify:
    def __init__(self, gateway: Gateway, lean: LeanVersions) -> None:
        self.gw = gateway
        self.settings = gateway.settings
        self.lean = lean

    def enqueue(self, body: VerifyRequest) -> tuple[str, float]:
        """Check what the gateway can (a request that fails here never reaches a worker), then enqueue.

        Returns the request id and how long to wait for its result: the RQ timeout of the check, which follows
        the check's effective limit. Sync (Redis and RQ calls): the thread pool runs it."""
        if not body.code.strip():
            raise RequestError("code is empty", param="code", code="empty")
        limit = self.settings.prove.max_statement_chars
        for param in ("formal_statement", "header"):
            check_text(getattr(body, param), param, max_chars=limit)
        check_text(body.code, "code", max_chars=self.settings.api.max_body_bytes)  # a proof may be long: bytes cap it
        if body.formal_statement is not None:
            parse_statement(body.formal_statement)
        limit_s = self.settings.lean.timeout_s
        if body.timeout_s is not None and body.timeout_s > limit_s:
            # A 400 rather than a silent clamp: the client learns the limit instead of getting a `timeout`
            # verdict for a check that stopped earlier than it asked.
            raise RequestError(
                f"timeout_s must be at most {limit_s:g} s (this deployment's OPROVER_LEAN_TIMEOUT_S)",
                param="timeout_s",
                code="out_of_range",
            )
        version = body.lean_version or self.settings.lean.version
        lean_version = self.lean.resolve(body.lean_version)  # 400 listing the available versions
        if body.header is not None:
            self.lean.check_header(body.header, lean_version)
        if not self.lean.served().get(version, {}).get("workers"):
            raise LeanError(f"no verify worker is serving Lean {version} right now")
        request_id = "vfy_" + secrets.token_hex(12)
        payload = {
            "code": body.code,
            "header": body.header,
            "formal_statement": body.formal_statement,
            "timeout_s": body.timeout_s,
        }
        wait_s = self.gw.dispatch.verify_code(
            request_id, payload, body.lean_version, check_timeout_s=body.timeout_s or limit_s
        )
        return request_id, float(wait_s)

    async def verdict(self, request_id: str, timeout_s: float) -> dict[str, Any]:
        """The worker's answer to an enqueued check (on the event loop: one blocking pop at a time)."""
        reply = await pop_verify_result(self.gw.aredis, request_id, timeout_s, block_s=redis_clients.MAX_BLOCK_S)
        if reply is None:
            raise VerifyTimeout(
                f"no verdict within {timeout_s:.0f} s (are verify workers overloaded?)", code="verify_timeout"
            )
        if "request_error" in reply:  # the worker found what the gateway could not (e.g. an `open` of no namespace)
            raise RequestError.from_json(reply["request_error"])
        if "dependency_error" in reply:  # cut off by infrastructure after its retries: a 503, not a verdict
            raise LeanError(str(reply["dependency_error"].get("message") or "the check was cut off"))
        return demo_labelled(reply, self.settings.api.demo)  # a demo's verdict says so (api/demo.py)
