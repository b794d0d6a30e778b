"""Input limits: the size of a request body, and the characters a Lean text may hold.

Both answer before any work is queued: a 413 for a body over `OPROVER_API_MAX_BODY_BYTES` (checked on the raw
ASGI stream, so an oversized body is never parsed), and a 400 naming the field for a text holding a NUL or another
control character (no Lean source contains one; they break logs, prompts and the REPL's line protocol) or a lone
UTF-16 surrogate (JSON can spell one, `"\\ud800"`, and it cannot be encoded to go to Redis or Lean).
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from services.errors import RequestError

# C0 controls but tab, newline and carriage return; DEL and the C1 controls; the surrogate range.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def check_text(value: str | None, param: str, *, max_chars: int) -> None:
    """A 400 naming `param` for text over `max_chars` or holding a forbidden character (position included)."""
    if value is None:
        return
    if len(value) > max_chars:
        raise RequestError(f"{param} is longer than {max_chars} characters", param=param, code="too_long")
    found = _FORBIDDEN.search(value)
    if found:
        raise RequestError(
            f"{param} holds the control character U+{ord(found.group()):04X} at position {found.start()}; "
            "Lean text may hold tabs and newlines but no other control characters",
            param=param,
            code="control_character",
        )


class BodySizeLimit:
    """ASGI middleware: a 413 in the error envelope for a body over `max_bytes`.

    A declared Content-Length is checked before reading anything; a chunked body is read up to the limit and
    then handed on from memory, so the route sees it whole or not at all."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            f"the request body is larger than {self.max_bytes} bytes (OPROVER_API_MAX_BODY_BYTES)",
            code="body_too_large",
        )
        await response(scope, receive, send)
