"""Input limits at the door: a body over the limit is a 413 in the envelope; a Lean text with a control character,
a lone surrogate or over the length limit is a 400 naming the field. The gateway runs with the shipped defaults."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from services.settings import ApiSettings
from tests.harness import ServiceHarness

KEY = "sk-input-limits-1a2b3c4d5e6f7a8b9c0d"
STATEMENT = "theorem t (x : ℕ) (h : x = 1) : x + 1 = 2 := by sorry"


@pytest.fixture(scope="module")
def client(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    service = ServiceHarness(redis_url=f"{redis_server}/15", workdir=tmp_path_factory.mktemp("input"))
    service.env["OPROVER_API_KEYS"] = KEY
    try:
        service.start_gateway()
        with service.client(headers={"Authorization": f"Bearer {KEY}"}) as http:
            yield http
    finally:
        service.close()


def _error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return error


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x07", "\x7f", "\x85"])
@pytest.mark.parametrize("field", ["formal_statement", "header", "informal_statement"])
def test_a_control_character_in_a_lean_text_is_a_400_naming_the_field(client, field: str, char: str) -> None:
    body = {"formal_statement": STATEMENT, field: (STATEMENT if field == "formal_statement" else "x") + char}
    error = _error(client.post("/v1/prove", json=body), 400, field)
    assert error["code"] == "control_character" and f"U+{ord(char):04X}" in error["message"]


def test_tabs_and_newlines_are_fine(client) -> None:
    body = {"formal_statement": STATEMENT.replace(" ", "\t", 1) + "\r\n", "informal_statement": "a\nb\tc"}
    assert client.post("/v1/prove", json=body).status_code == 202


def test_a_lone_surrogate_is_a_400_not_a_500(client) -> None:
    raw = json.dumps({"formal_statement": STATEMENT}).replace("sorry", "sorry \\ud800")
    _error(client.post("/v1/prove", content=raw, headers={"content-type": "application/json"}), 400, "formal_statement")


def test_batch_chat_and_verify_name_the_field_too(client) -> None:
    lines = [json.dumps({"formal_statement": STATEMENT}), json.dumps({"formal_statement": STATEMENT + "\x00"})]
    _error(client.post("/v1/prove/batch", content="\n".join(lines)), 400, "1.formal_statement")
    chat = {"model": "oprover", "messages": [{"role": "user", "content": STATEMENT + "\x00"}]}
    _error(client.post("/v1/chat/completions", json=chat), 400, "messages")
    verify = {"code": STATEMENT.replace("sorry", "rfl\x00")}
    _error(client.post("/v1/verify", json=verify), 400, "code")


def test_an_over_long_statement_is_a_400_naming_it(client) -> None:
    body = {"formal_statement": STATEMENT, "informal_statement": "x" * 20_001}
    assert _error(client.post("/v1/prove", json=body), 400, "informal_statement")["code"] == "too_long"


def test_a_body_over_the_shipped_limit_is_a_413_in_the_envelope(client) -> None:
    limit = ApiSettings().max_body_bytes
    big = b'{"formal_statement": "' + b"x" * limit + b'"}'
    error = _error(client.post("/v1/prove", content=big, headers={"content-type": "application/json"}), 413, None)
    assert error["code"] == "body_too_large" and error["type"] == "invalid_request_error"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        for _ in range(limit // 65536 + 2):
            yield b"[" + b" " * 65534 + b"]"

    _error(client.post("/v1/prove/batch", content=chunks()), 413, None)
    # just under the limit is read and judged on its content
    fits = client.post("/v1/prove/batch", content=b" " * (limit - 10) + b"[]")
    assert fits.status_code == 400 and fits.json()["error"]["code"] == "empty"
