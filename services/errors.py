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
`transient=False` (e.g. the generator rejects the request as too long) is not.
"""

from __future__ import annotations


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
