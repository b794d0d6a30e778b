"""The generation client: request shape, parsing, retry policy (httpx MockTransport) and the real stand-in."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from services.domain import Sampling
from services.errors import GeneratorError
from services.generation import (
    AsyncGenerationClient,
    GenerationCancelled,
    GenerationClient,
    parse_retry_after,
)
from services.settings import GeneratorSettings
from standins.openai_server import StandinServer

SAMPLING = Sampling(temperature=0.6, top_p=0.95, max_tokens=512, stop=("<|im_end|>",))
MESSAGES = [{"role": "user", "content": "Complete the following Lean 4 code: theorem t : True := by sorry"}]


def settings(url: str = "http://gen.test/v1", **overrides) -> GeneratorSettings:
    values = {
        "url": url,
        "model": "m",
        "backoff_base_s": 0.0,
        "max_retries": 3,
        "retry_budget_s": 30.0,
        "request_timeout_s": 20.0,
        "connect_timeout_s": 2.0,
        "stream": False,
    }
    values.update(overrides)
    return GeneratorSettings(**values)


def ok_body(content="```lean4\ntheorem t : True := by\n  trivial\n```", reasoning="plan", finish="stop"):
    return {
        "id": "cmpl-1",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "reasoning_content": reasoning},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 5}},
    }


class Script:
    """A MockTransport handler answering from a list of responses, recording every request."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        return item

    def bodies(self):
        return [json.loads(r.content) for r in self.requests if r.url.path.endswith("/chat/completions")]


def client_with(script: Script, **overrides) -> GenerationClient:
    return GenerationClient(settings(**overrides), transport=httpx.MockTransport(script))


def test_request_sets_sampling_explicitly_and_propagates_the_request_id():
    script = Script(httpx.Response(200, json=ok_body()))
    with client_with(script, send_rid=True) as client:
        completion = client.complete(MESSAGES, SAMPLING, request_id="job1:0:1:gen", extra={"top_k": 20})
    (body,) = script.bodies()
    assert body["temperature"] == 0.6 and body["top_p"] == 0.95 and body["max_tokens"] == 512
    assert body["stop"] == ["<|im_end|>"] and body["stream"] is False and body["model"] == "m"
    assert body["rid"] == "job1:0:1:gen" and body["top_k"] == 20
    assert script.requests[0].headers["x-request-id"] == "job1:0:1:gen"
    assert completion.content.startswith("```lean4") and completion.reasoning == "plan"
    assert completion.usage == {"prompt_tokens": 11, "completion_tokens": 7, "cached_tokens": 5}
    assert completion.finish_reason == "stop" and completion.request_id == "job1:0:1:gen"
    assert completion.attempts == 1 and completion.latency_ms >= 0


def test_profile_extras_never_override_explicit_sampling():
    script = Script(httpx.Response(200, json=ok_body()))
    with client_with(script) as client:
        client.complete(MESSAGES, SAMPLING, request_id="r", extra={"temperature": 2.0})
    assert script.bodies()[0]["temperature"] == 0.6


def test_vllm_reasoning_field_is_read_too():
    body = ok_body()
    del body["choices"][0]["message"]["reasoning_content"]
    body["choices"][0]["message"]["reasoning"] = "vllm thinking"
    with client_with(Script(httpx.Response(200, json=body))) as client:
        assert client.complete(MESSAGES, SAMPLING, request_id="r").reasoning == "vllm thinking"


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, json={"error": {"message": "boom"}}),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(503, json={"error": {"message": "loading"}}),
        httpx.Response(429, json={"error": {"message": "slow down"}}),
        httpx.ConnectError("refused"),
        httpx.ReadError("reset"),
        httpx.Response(200, text="not json"),
    ],
    ids=["500", "502", "503", "429", "connect-error", "read-error", "malformed-200"],
)
def test_transient_failure_then_success_succeeds(failure):
    script = Script(failure, httpx.Response(200, json=ok_body()))
    with client_with(script) as client:
        completion = client.complete(MESSAGES, SAMPLING, request_id="r")
    assert completion.attempts == 2
    assert len(script.bodies()) == 2


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "This model's maximum context length is 40960 tokens. However, you requested 50000 tokens"),
        (401, "bad key"),
        (404, "model not found"),
        (422, "unprocessable"),
    ],
    ids=["400-context-too-long", "401", "404", "422"],
)
def test_permanent_rejection_is_not_retried(status, message):
    script = Script(httpx.Response(status, json={"error": {"message": message, "type": "x", "code": status}}))
    with client_with(script) as client, pytest.raises(GeneratorError) as info:
        client.complete(MESSAGES, SAMPLING, request_id="r")
    assert info.value.transient is False
    assert message in str(info.value) and f"HTTP {status}" in str(info.value)
    assert len(script.bodies()) == 1


def test_persistent_transient_failure_gives_up_after_max_retries():
    script = Script(httpx.Response(500, json={"error": {"message": "down"}}))
    with client_with(script, max_retries=2) as client, pytest.raises(GeneratorError) as info:
        client.complete(MESSAGES, SAMPLING, request_id="r")
    assert info.value.transient is True
    assert "3 attempts" in str(info.value)
    assert len(script.bodies()) == 3


def test_retry_after_is_honoured():
    script = Script(
        httpx.Response(429, headers={"retry-after": "0.4"}, json={"error": {"message": "busy"}}),
        httpx.Response(200, json=ok_body()),
    )
    with client_with(script) as client:
        started = time.monotonic()
        completion = client.complete(MESSAGES, SAMPLING, request_id="r")
        waited = time.monotonic() - started
    assert completion.attempts == 2
    assert waited >= 0.4


def test_retry_after_beyond_the_budget_gives_up_at_once():
    script = Script(httpx.Response(503, headers={"retry-after": "60"}, json={"error": {"message": "busy"}}))
    with client_with(script, retry_budget_s=1.0) as client, pytest.raises(GeneratorError) as info:
        started = time.monotonic()
        client.complete(MESSAGES, SAMPLING, request_id="r")
    assert time.monotonic() - started < 1.0
    assert info.value.transient is True and "budget" in str(info.value)


def test_retried_attempts_get_distinct_rids():
    script = Script(httpx.Response(500, text="x"), httpx.Response(200, json=ok_body()))
    with client_with(script, send_rid=True) as client:
        client.complete(MESSAGES, SAMPLING, request_id="abc")
    assert [b["rid"] for b in script.bodies()] == ["abc", "abc~2"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0.5", 0.5), ("-2", 0.0), ("soon", None), (None, None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
    ids=["int", "float", "negative", "garbage", "missing", "past-date"],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value) == expected


def test_retry_after_http_date_in_the_future():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == pytest.approx(30.0)


def test_model_is_discovered_once_and_cached():
    script = Script(httpx.Response(200, json={"data": [{"id": "m-a-p/OProver-8B"}, {"id": "other"}]}))
    with GenerationClient(settings(model=None), transport=httpx.MockTransport(script)) as client:
        assert client.model() == "m-a-p/OProver-8B"
        assert client.model() == "m-a-p/OProver-8B"
    assert [r.url.path for r in script.requests] == ["/v1/models"]


@pytest.mark.parametrize(
    ("responses", "ok"),
    [
        ({"/health": 200}, True),
        ({"/health": 503}, False),
        ({"/health": 404, "/v1/models": 200}, True),
        ({"/health": 404, "/v1/models": 500}, False),
    ],
    ids=["health-200", "health-503", "no-health-models-ok", "no-health-models-down"],
)
def test_health(responses, ok):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(responses[request.url.path], json={"data": [{"id": "m"}]})

    with GenerationClient(settings(), transport=httpx.MockTransport(handler)) as client:
        if ok:
            client.health()
        else:
            with pytest.raises(GeneratorError) as info:
                client.health()
            assert info.value.transient is True


def test_unreachable_server_fails_health_transiently():
    with GenerationClient(settings("http://127.0.0.1:9/v1")) as client, pytest.raises(GeneratorError) as info:
        client.health()
    assert info.value.transient is True


def test_stream_parsing_collects_content_reasoning_usage_and_finish():
    frames = [
        {"id": "s1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "s1", "model": "m", "choices": [{"index": 0, "delta": {"reasoning_content": "think "}}]},
        {"id": "s1", "model": "m", "choices": [{"index": 0, "delta": {"content": "```lean4\nx"}}]},
        {"id": "s1", "model": "m", "choices": [{"index": 0, "delta": {"content": "\n```"}, "finish_reason": "length"}]},
        {"id": "s1", "model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    ]
    text = "".join(f"data: {json.dumps(f)}\n\n" for f in frames) + ": keep-alive\n\ndata: [DONE]\n\n"
    script = Script(httpx.Response(200, text=text, headers={"content-type": "text/event-stream"}))
    with client_with(script, stream=True) as client:
        completion = client.complete(MESSAGES, SAMPLING, request_id="r")
    assert script.bodies()[0]["stream_options"] == {"include_usage": True}
    assert completion.content == "```lean4\nx\n```" and completion.reasoning == "think "
    assert completion.finish_reason == "length" and completion.usage == {"prompt_tokens": 3, "completion_tokens": 4}
    assert completion.server_id == "s1" and completion.ttft_ms is not None


def test_stream_cut_off_before_finishing_is_retried():
    partial = 'data: {"choices": [{"index": 0, "delta": {"content": "half"}}]}\n\n'
    full = (
        'data: {"choices": [{"index": 0, "delta": {"content": "whole"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
    )
    script = Script(httpx.Response(200, text=partial), httpx.Response(200, text=full))
    with client_with(script, stream=True) as client:
        completion = client.complete(MESSAGES, SAMPLING, request_id="r")
    assert completion.content == "whole" and completion.attempts == 2


_FULL = 'data: {"choices": [{"index": 0, "delta": {"content": "whole"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'


def test_stream_error_frame_naming_the_request_is_not_retried():
    frame = {"error": {"message": "context length exceeded", "type": "BadRequestError", "code": "context_length"}}
    script = Script(httpx.Response(200, text=f"data: {json.dumps(frame)}\n\n"))
    with client_with(script, stream=True) as client, pytest.raises(GeneratorError) as info:
        client.complete(MESSAGES, SAMPLING, request_id="r")
    assert info.value.transient is False
    assert len(script.bodies()) == 1


def test_stream_frame_with_a_null_error_is_an_ordinary_frame():
    text = 'data: {"error": null, "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}\n\n'
    script = Script(httpx.Response(200, text=text + "data: [DONE]\n\n"))
    with client_with(script, stream=True) as client:
        completion = client.complete(MESSAGES, SAMPLING, request_id="r")
    assert completion.content == "ok" and completion.attempts == 1


def test_an_empty_stream_is_retried_not_taken_as_a_completion():
    script = Script(httpx.Response(200, text="data: [DONE]\n\n"), httpx.Response(200, text=_FULL))
    with client_with(script, stream=True) as client:
        completion = client.complete(MESSAGES, SAMPLING, request_id="r")
    assert completion.content == "whole" and completion.attempts == 2


@pytest.mark.parametrize(
    "make_response",
    [
        pytest.param(
            lambda: httpx.Response(200, stream=httpx.ByteStream(b"not gzip"), headers={"content-encoding": "gzip"}),
            id="bad-gzip",
        ),
        pytest.param(lambda: httpx.Response(200, json={"choices": ["text"]}), id="choice-not-object"),
    ],
)
def test_broken_answers_are_transient_generator_errors(make_response):
    script = Script(make_response(), make_response())
    with client_with(script, max_retries=1) as client, pytest.raises(GeneratorError) as info:
        client.complete(MESSAGES, SAMPLING, request_id="r")
    assert info.value.transient is True
    assert len(script.bodies()) == 2


# -- against the real stand-in process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def standin():
    with StandinServer() as server:
        yield server


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_standin_transient_then_success(standin, stream):
    standin.reset()
    standin.script(
        [
            {"match": "theorem t", "status": 503, "times": 2, "retry_after": 0.05},
            {"match": "theorem t", "content": "```lean4\ntheorem t : True := by\n  trivial\n```"},
        ]
    )
    with GenerationClient(settings(standin.url, model=None, stream=stream)) as client:
        completion = client.complete(MESSAGES, SAMPLING, request_id="job:0:1:gen")
        assert client.model() == "standin-oprover"
    assert completion.attempts == 3 and "trivial" in completion.content
    assert completion.model == "standin-oprover"
    assert completion.usage["prompt_tokens"] > 0
    recorded = standin.requests()
    assert len(recorded) == 3
    assert recorded[0]["headers"]["x-request-id"] == "job:0:1:gen"


def test_standin_permanent_failure_raises_within_the_cap(standin):
    standin.reset()
    standin.script([{"match": "theorem t", "status": 400, "error_message": "context length exceeded"}])
    with GenerationClient(settings(standin.url, stream=True)) as client, pytest.raises(GeneratorError) as info:
        client.complete(MESSAGES, SAMPLING, request_id="r")
    assert info.value.transient is False and "context length exceeded" in str(info.value)
    assert len(standin.requests()) == 1


def test_standin_persistent_outage_gives_up_transiently(standin):
    standin.reset()
    standin.script([{"match": "theorem t", "status": 500}])
    with GenerationClient(settings(standin.url, max_retries=2)) as client, pytest.raises(GeneratorError) as info:
        client.complete(MESSAGES, SAMPLING, request_id="r")
    assert info.value.transient is True
    assert len(standin.requests()) == 3


def test_standin_error_frame_mid_stream_is_retried(standin):
    standin.reset()
    standin.script(
        [
            {"match": "theorem t", "content": "x" * 200, "stream_error_after": 2, "times": 1},
            {"match": "theorem t", "content": "fine"},
        ]
    )
    with GenerationClient(settings(standin.url, stream=True)) as client:
        completion = client.complete(MESSAGES, SAMPLING, request_id="r")
    assert completion.content == "fine" and completion.attempts == 2


def test_standin_health_follows_the_server(standin):
    standin.reset()
    with GenerationClient(settings(standin.url)) as client:
        client.health()
        standin.set_health(503)
        with pytest.raises(GeneratorError):
            client.health()
    standin.reset()


@pytest.mark.timing  # 32 streams in under 2 s
def test_many_threads_share_one_client(standin):
    standin.reset()
    standin.script([], default={"content": "ok", "delay_s": 0.2})
    results: list[str] = []
    with GenerationClient(settings(standin.url, stream=True, max_connections=64)) as client:

        def call(i: int) -> None:
            results.append(client.complete(MESSAGES, SAMPLING, request_id=f"r{i}").content)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    assert results == ["ok"] * 32
    assert elapsed < 2.0  # concurrent, not 32 x 0.2 s in a row


def test_cancel_aborts_a_running_generation(standin):
    standin.reset()
    standin.script([], default={"content": "late", "delay_s": 5})
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with GenerationClient(settings(standin.url, stream=True)) as client:
        started = time.monotonic()
        with pytest.raises(GenerationCancelled):
            client.complete(MESSAGES, SAMPLING, request_id="r", cancel=cancel)
        assert time.monotonic() - started < 2.0


def test_async_client_requires_a_url():
    with pytest.raises(GeneratorError) as info:
        AsyncGenerationClient(GeneratorSettings())
    assert info.value.transient is False


def test_model_discovery_failure_is_retried_like_any_transient_failure():
    script = Script(
        httpx.ConnectError("refused"),
        httpx.Response(200, json={"data": [{"id": "late-model"}]}),
        httpx.Response(200, json=ok_body()),
    )
    with GenerationClient(settings(model=None), transport=httpx.MockTransport(script)) as client:
        completion = client.complete(MESSAGES, SAMPLING, request_id="r")
    assert completion.attempts == 2
    assert script.bodies()[0]["model"] == "late-model"


def test_close_releases_threads_waiting_on_a_running_call(standin):
    standin.reset()
    standin.script([], default={"content": "late", "delay_s": 10})
    client = GenerationClient(settings(standin.url, stream=True))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.complete(MESSAGES, SAMPLING, request_id="r")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    client.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], GeneratorError) and errors[0].transient
    with pytest.raises(GeneratorError):
        client.complete(MESSAGES, SAMPLING, request_id="after-close")
