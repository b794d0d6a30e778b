"""What the API's tests share: a module's running service, the bearer keys of a gateway with tenancy on, and the
checks every fuzzed response must pass.

`running_service` is the module fixture most API tests need (a gateway and a worker of each kind on a Redis
database of the module's own, the stand-in REPL and model scripted), written once here instead of in each file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from schemathesis import Case
from schemathesis.checks import not_a_server_error

from tests.harness import ServiceHarness

ENVELOPE_FIELDS = {"message", "type", "param", "code"}
UNKNOWN_KEY = "sk-unknown-1a3c5e7b9d1f3a5c7e9b"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class TenantKeys:
    """Two tenants' keys and an admin key (api/tenancy.py): a job belongs to the key that created it."""

    a: str
    b: str
    admin: str

    def env(self) -> dict[str, str]:
        return {"OPROVER_API_KEYS": f"{self.a},{self.b}", "OPROVER_API_ADMIN_KEYS": self.admin}


@contextmanager
def running_service(
    redis_url: str,
    workdir: Path,
    *,
    lean_rules: list[dict[str, Any]] | None = None,
    model: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    gateway_env: dict[str, str] | None = None,
    workers: tuple[str, ...] = ("generate", "verify"),
) -> Iterator[ServiceHarness]:
    """A gateway and one worker of each kind in `workers` on the Redis database `redis_url` (emptied first).

    `lean_rules`: the stand-in REPL's verdict table (else the harness's: PASS_ME passes). `model`: what the
    stand-in model answers every request with (`{"content": ..., "delay_s": ...}`). `env` reaches every process,
    as a deployment's shared .env would; `gateway_env` the gateway alone. Everything stops when the block ends."""
    harness = ServiceHarness(redis_url=redis_url, workdir=workdir)
    harness.redis.flushdb()
    harness.env.update(env or {})
    try:
        if lean_rules is not None:
            harness.lean_rules(lean_rules)
        if model is not None:
            harness.generator.script([], default=model)
        harness.start_gateway(**(gateway_env or {}))
        for kind in workers:
            harness.start_worker(kind)
        yield harness
    finally:
        harness.close()


def assert_error_envelope(response: requests.Response) -> dict[str, Any]:
    """The error object of a 4xx/5xx: OpenAI's four fields, nothing else."""
    error = response.json()["error"]
    assert set(error) == ENVELOPE_FIELDS, response.text
    return error


def check_fuzzed_response(case: Case, response: requests.Response) -> None:
    """No server error; an error in the envelope; a 4xx about the request's content names its field."""
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code < 400:
        return
    error = assert_error_envelope(response)
    # 401 and 429 are about who asks and how often, not about a field of the request
    if response.status_code < 500 and response.status_code not in (401, 429):
        # `body` when the body as a whole is wrong (not JSON, missing, an empty or too long batch)
        assert error["param"], (response.status_code, error)


def check_refused_without_a_key(case: Case, base_url: str, timeout_s: float = 30) -> None:
    """The same request without a key, and with a key the gateway does not know, is a 401."""
    for headers in ({}, bearer(UNKNOWN_KEY)):
        response = case.call(base_url=base_url, headers=headers, timeout=timeout_s)
        assert response.status_code == 401, (headers, response.status_code, response.text)
        error = assert_error_envelope(response)
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key", error
