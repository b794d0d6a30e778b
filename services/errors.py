"""The exception tree of the core. The API and the workers translate these; nothing here knows HTTP.

    OproverError
    ├── RequestError            the caller's input is wrong; `param` names the field (→ 4xx)
    │   ├── InvalidStatement    a formal statement that is not one Lean theorem/lemma to prove
    │   └── NotFound            an id that does not exist (or has expired)
    └── DependencyError         an infrastructure part failed; `dependency` names it
        ├── GeneratorError      the model server (SGLang or any OpenAI-compatible one)
        ├── LeanError           the Lean REPL processes
        └── MemoryError_        the retrieval memory (Qdrant)

A `DependencyError` with `transient=True` is worth retrying (RQ retries the round); one with
`transient=False` (e.g. the generator rejects the request as too long) is not. A `RequestError` is never worth
retrying: the same input fails the same way, so a worker that finds one ends the job (or answers the waiting
gateway) at once. `to_json`/`from_json` carry one from a worker to the gateway with its status and field.
"""

from __future__ import annotations

from typing import Any


class OproverError(Exception):
    """Base of every error the core raises on purpose."""


class RequestError(OproverError):
    status_code = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "param": self.param,
            "code": self.code,
            "type": self.type,
            "status": self.status_code,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RequestError:
        """The error `to_json` described, with the same status, type and field (another process raised it)."""
        error = RequestError(
            str(body.get("message") or "invalid request"), param=body.get("param"), code=body.get("code")
        )
        error.status_code = int(body.get("status") or 400)
        error.type = str(body.get("type") or RequestError.type)
        return error

    def describe(self) -> str:
        """One line for a job record or a log: the message, and the field it is about."""
        return f"invalid request ({self.param}): {self.message}" if self.param else f"invalid request: {self.message}"


class InvalidStatement(RequestError):
    def __init__(self, message: str, *, param: str = "formal_statement") -> None:
        super().__init__(message, param=param, code="invalid_statement")


class NotFound(RequestError):
    status_code = 404
    type = "not_found_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param, code="not_found")


class DependencyError(OproverError):
    dependency = "dependency"

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient

    def __str__(self) -> str:
        return f"{self.dependency}: {self.message}"


class GeneratorError(DependencyError):
    dependency = "generator"


class LeanError(DependencyError):
    dependency = "lean"


class MemoryError_(DependencyError):  # trailing underscore: `MemoryError` is a builtin
    dependency = "memory"
