"""The stand-in generator itself: a real process that the official OpenAI SDK can talk to."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest

from standins.openai_server import StandinServer


@pytest.fixture(scope="module")
def standin():
    with StandinServer() as server:
        yield server


@pytest.fixture
def sdk(standin):
    standin.reset()
    client = openai.OpenAI(base_url=standin.url, api_key="unused", max_retries=0)
    yield client
    client.close()


def ask(sdk, text, **kw):
    return sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], **kw)


def test_first_matching_rule_answers_and_times_run_out(standin, sdk):
    standin.script(
        [
            {"match": "alpha", "content": "first", "times": 1},
            {"match": "alpha", "content": "second", "reasoning_content": "thought"},
        ],
        default={"content": "fallback"},
    )
    first = ask(sdk, "say alpha")
    second = ask(sdk, "say alpha")
    other = ask(sdk, "say beta")
    assert first.choices[0].message.content == "first"
    assert second.choices[0].message.content == "second"
    assert second.choices[0].message.reasoning_content == "thought"
    assert other.choices[0].message.content == "fallback"
    assert first.model == "m" and first.id.startswith("standin-")


def test_stream_frames_role_first_then_reasoning_content_finish_usage(standin, sdk):
    standin.script([], default={"content": "x" * 100, "reasoning_content": "r" * 30, "finish_reason": "length"})
    chunks = list(ask(sdk, "go", stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "r" * 30
    assert "".join(d.content or "" for d in deltas) == "x" * 100
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("status", "exc"),
    [(429, openai.RateLimitError), (503, openai.InternalServerError), (400, openai.BadRequestError)],
    ids=["429", "503", "400"],
)
def test_error_rules_use_the_openai_error_shape(standin, sdk, status, exc):
    standin.script([{"match": "boom", "status": status, "retry_after": 3, "error_message": "nope"}])
    with pytest.raises(exc) as info:
        ask(sdk, "boom")
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.body == {"message": "nope", "type": info.value.body["type"], "param": None, "code": str(status)}


def test_requests_are_recorded_in_order_and_reset_clears_them(standin, sdk):
    ask(sdk, "one")
    ask(sdk, "two")
    bodies = [r["body"] for r in standin.requests()]
    assert [b["messages"][0]["content"] for b in bodies] == ["one", "two"]
    standin.reset()
    assert standin.requests() == []


def test_models_and_health(standin, sdk):
    assert [m.id for m in sdk.models.list().data] == ["standin-oprover"]
    assert httpx.get(standin.root + "/health").status_code == 200
    standin.set_health(503)
    assert httpx.get(standin.root + "/health").status_code == 503
    standin.reset()


@pytest.mark.timing  # two waves of 0.2 s in under 1.5 s, busy > 90%
def test_capacity_mode_serves_c_at_a_time_and_reports_busy_time():
    with StandinServer(capacity=2, latency_s=0.2) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: ask(client, f"q{i}"), range(4)))
        elapsed = time.monotonic() - started
        stats = server.stats()
        client.close()
    assert 0.4 <= elapsed < 1.5  # two waves of two
    assert stats["served"] == 4 and stats["capacity"] == 2
    assert stats["busy_fraction"] > 0.9
    assert stats["max_waiting"] >= 1
