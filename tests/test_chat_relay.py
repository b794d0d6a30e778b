"""Any model but `oprover` is relayed to the generator: same answers, same stream, the generator's errors.

The generator is the stand-in OpenAI-compatible server (standins/openai_server.py): its answers are
scripted here and are not a model's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import free_port
from tests.harness import ServiceHarness

pytestmark = pytest.mark.slow

RAW_MODEL = "standin-oprover"
ANSWER = "Here is a proof:\n```lean4\ntheorem t : 1 + 1 = 2 := by norm_num\n```\n"


@pytest.fixture(scope="module")
def gateway(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHarness]:
    harness = ServiceHarness(redis_url=f"{redis_server}/14", workdir=tmp_path_factory.mktemp("relay"))
    harness.redis.flushdb()
    try:
        harness.start_gateway()
        yield harness
    finally:
        harness.close()


def _sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def _script(harness: ServiceHarness, *rules: dict[str, Any], **default: Any) -> None:
    harness.generator.reset()
    harness.generator.script(list(rules), default={"content": ANSWER, "reasoning_content": "thinking...", **default})


def test_non_stream_relay_returns_the_generators_completion(gateway: ServiceHarness) -> None:
    _script(gateway)
    completion = _sdk(str(gateway.gateway_url)).chat.completions.create(
        model=RAW_MODEL, messages=[{"role": "user", "content": "2+2?"}], temperature=0.3, extra_body={"top_k": 20}
    )
    assert completion.id.startswith("standin-") and completion.model == RAW_MODEL
    assert completion.choices[0].message.content == ANSWER
    [sent] = gateway.chat_requests()
    # Unchanged: the client's body as it sent it, fields the gateway does not know included.
    assert sent["temperature"] == 0.3 and sent["top_k"] == 20 and sent["model"] == RAW_MODEL
    assert "rounds" not in sent


def test_stream_relay_is_chunk_for_chunk_what_the_generator_sends(gateway: ServiceHarness) -> None:
    _script(gateway)
    body = {
        "model": RAW_MODEL,
        "messages": [{"role": "user", "content": "2+2?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    def frames(url: str) -> list[Any]:
        with httpx.Client(timeout=30) as http, http.stream("POST", url, json=body) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            raw = response.read().decode()
        assert raw.endswith("data: [DONE]\n\n")
        parsed = []
        for frame in raw.split("\n\n")[:-1]:
            assert frame.startswith("data: "), frame
            payload = frame[len("data: ") :]
            if payload == "[DONE]":
                parsed.append(payload)
                continue
            chunk = json.loads(payload)
            chunk.pop("id"), chunk.pop("created")  # a new completion each time; all else must be the same
            parsed.append(chunk)
        return parsed

    direct = frames(f"{gateway.generator.url}/chat/completions")
    _script(gateway)  # afresh: the stand-in's prefix cache would report the repeat as cached tokens
    relayed = frames(f"{gateway.gateway_url}/v1/chat/completions")
    assert relayed == direct and len(relayed) > 4

    stream = _sdk(str(gateway.gateway_url)).chat.completions.create(
        model=RAW_MODEL, messages=[{"role": "user", "content": "2+2?"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ANSWER


@pytest.mark.parametrize(
    ("status", "exception"),
    [(400, openai.BadRequestError), (404, openai.NotFoundError), (429, openai.RateLimitError)],
    ids=["400", "404", "429"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_generator_errors_pass_through_in_the_envelope(
    gateway: ServiceHarness, status: int, exception: type[openai.APIStatusError], stream: bool
) -> None:
    _script(gateway, {"match": "", "status": status, "error_message": "the model says no"})
    with pytest.raises(exception) as raised:
        result = _sdk(str(gateway.gateway_url)).chat.completions.create(
            model=RAW_MODEL, messages=[{"role": "user", "content": "2+2?"}], stream=stream
        )
        if stream:
            list(result)
    assert raised.value.status_code == status
    body = raised.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["message"] == "the model says no"


def test_an_unreachable_generator_is_a_503_naming_it(redis_url: str, tmp_path: Any) -> None:
    harness = ServiceHarness(redis_url=redis_url, workdir=tmp_path)
    try:
        _ = harness.generator
        harness.env["OPROVER_GENERATOR_URL"] = f"http://127.0.0.1:{free_port()}/v1"
        harness.start_gateway()
        with pytest.raises(openai.InternalServerError) as raised:
            _sdk(str(harness.gateway_url)).chat.completions.create(
                model=RAW_MODEL, messages=[{"role": "user", "content": "2+2?"}]
            )
        assert raised.value.status_code == 503
        assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "generator_unavailable"
        # /v1/models still answers, with the loop alone
        assert [m.id for m in _sdk(str(harness.gateway_url)).models.list()] == ["oprover"]
    finally:
        harness.close()
