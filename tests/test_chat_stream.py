"""Streamed chat answers on the wire: framing, keep-alives at real latencies, and clients that leave.

Real processes throughout (Redis, gateway, workers); the model and Lean are stand-ins whose answers are scripted
here, made to take the seconds the real parts take where the test is about time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api_fixtures import running_service
from tests.harness import ServiceHarness
from tests.test_chat_openai import GOOD, GOOD_MARK, LEAN_MESSAGE, QUESTION, WRONG_MARK, completion_text

pytestmark = pytest.mark.slow


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "oprover", "messages": [{"role": "user", "content": QUESTION}], "stream": True, **extra}


def _read_frames(response: httpx.Response) -> list[str]:
    """Every SSE frame as sent: `data: ...` payloads and `: comment` lines, in order."""
    frames = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            frames.append(line[len("data: ") :])
        elif line.startswith(":"):
            frames.append(line)
    return frames


@pytest.fixture(scope="module")
def slow_service(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHarness]:
    """A stand-in model that takes 3 s per answer: long enough to leave in the middle of a round."""
    with running_service(
        f"{redis_server}/15",
        tmp_path_factory.mktemp("chat-stream"),
        lean_rules=[{"match": GOOD_MARK, "outcome": "pass"}],
    ) as harness:
        yield harness


def _job_status(harness: ServiceHarness, job_id: str) -> str:
    with harness.client() as http:
        return http.get(f"/v1/prove/{job_id}").json()["status"]


def _wait_status(harness: ServiceHarness, job_id: str, wanted: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while (status := _job_status(harness, job_id)) != wanted:
        assert time.monotonic() < deadline, f"job {job_id} is {status}, not {wanted}"
        time.sleep(0.1)


def _model_answers_slowly(harness: ServiceHarness) -> None:
    """The stand-in model answers the good proof after 3 s: long enough to leave in the middle of a round."""
    harness.generator.reset()
    harness.generator.script([], default={"content": completion_text(GOOD), "delay_s": 3})


def test_a_streaming_client_that_disconnects_cancels_its_job(slow_service: ServiceHarness) -> None:
    harness = slow_service
    _model_answers_slowly(harness)
    with (
        harness.client() as http,
        http.stream("POST", "/v1/chat/completions", json=_body(extra_field_for_log=1)) as response,
    ):
        assert response.status_code == 200
        job_id = response.headers["x-oprover-job-id"]
        lines = response.iter_lines()  # kept: a dropped line iterator closes the response
        first = next(lines)
        assert json.loads(first[len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"
        _wait_status(harness, job_id, "running")
    # The client is gone mid-generation: the job is cancelled and its generation aborted, nothing reaches Lean.
    _wait_status(harness, job_id, "cancelled", timeout_s=10)
    time.sleep(3.5)  # had the generation gone on, it would have been verified by now
    with harness.client() as http:
        job = http.get(f"/v1/prove/{job_id}").json()
    assert job["status"] == "cancelled" and job["attempts"] == []


def test_a_background_streaming_client_leaves_and_its_job_goes_on(slow_service: ServiceHarness) -> None:
    harness = slow_service
    _model_answers_slowly(harness)
    with (
        harness.client() as http,
        http.stream("POST", "/v1/chat/completions", json=_body(background=True)) as response,
    ):
        job_id = response.headers["x-oprover-job-id"]
        lines = response.iter_lines()
        next(lines)
        _wait_status(harness, job_id, "running")
    _wait_status(harness, job_id, "proved", timeout_s=30)


def test_a_non_streaming_client_that_times_out_cancels_its_job(slow_service: ServiceHarness) -> None:
    harness = slow_service
    _model_answers_slowly(harness)
    before = set(harness.redis.keys("oprover:job:{*}"))
    with httpx.Client(base_url=str(harness.gateway_url), timeout=1.5) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json={**_body(), "stream": False})
    [key] = set(harness.redis.keys("oprover:job:{*}")) - before
    job_id = key.decode().split("{")[1].rstrip("}")
    _wait_status(harness, job_id, "cancelled", timeout_s=10)


def test_stream_framing_is_openais(slow_service: ServiceHarness) -> None:
    harness = slow_service
    harness.generator.reset()
    harness.generator.script([], default={"content": completion_text(GOOD)})
    with (
        harness.client() as http,
        http.stream("POST", "/v1/chat/completions", json=_body(n=2)) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in _read_frames(response) if not f.startswith(":")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(frame) for frame in frames[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "oprover" for c in chunks)
    assert [c["choices"][0]["delta"].get("role") for c in chunks[:2]] == ["assistant", "assistant"]
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]
    finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in chunks]
    assert sorted(f for f in finishes if f[1]) == [(0, "stop"), (1, "stop")]  # one per choice
    assert all("usage" not in c for c in chunks)  # not asked for
    assert chunks[-1]["oprover"]["status"] == "proved"


def test_a_chat_at_real_latencies_with_shipped_defaults_keeps_the_stream_alive(redis_url: str, tmp_path: Any) -> None:
    """Stand-ins that cost what the real parts cost (a generation of 8 s, a Lean check of 2 s), and no setting
    changed but where the parts are: the stream must stay alive with keep-alives while nothing happens."""
    harness = ServiceHarness(redis_url=redis_url, workdir=tmp_path)
    try:
        harness.lean_rules(
            [
                {"match": GOOD_MARK, "outcome": "pass", "check_s": 2},
                {"match": WRONG_MARK, "outcome": "error", "message": LEAN_MESSAGE, "check_s": 2},
            ]
        )
        harness.generator.script([], default={"content": completion_text(GOOD), "delay_s": 8})
        where = (
            "OPROVER_REDIS_URL",
            "OPROVER_GENERATOR_URL",
            "OPROVER_LEAN_CMD",
            "OPROVER_LEAN_REPLAY_CMD",
            "OPROVER_QDRANT_PATH",
        )
        harness.env = {key: value for key, value in harness.env.items() if key in where}
        harness.start_gateway()
        harness.start_worker("generate")
        harness.start_worker("verify")
        started = time.monotonic()
        with (
            httpx.Client(base_url=str(harness.gateway_url), timeout=120) as http,
            http.stream("POST", "/v1/chat/completions", json=_body()) as response,
        ):
            assert response.status_code == 200
            frames = _read_frames(response)
        elapsed = time.monotonic() - started
    finally:
        harness.close()
    keepalives = [frame for frame in frames if frame.startswith(":")]
    assert len(keepalives) >= 1, frames  # 8 s of generation without an event, keep-alive every 5 s by default
    assert frames[-1] == "[DONE]"
    content = "".join(
        json.loads(f)["choices"][0]["delta"].get("content") or "" for f in frames[:-1] if not f.startswith(":")
    )
    assert GOOD_MARK in content and "Proved" in content
    assert 10 <= elapsed < 40


def test_an_error_after_the_200_is_a_data_frame_with_the_envelope_then_done(slow_service: ServiceHarness) -> None:
    harness = slow_service
    _model_answers_slowly(harness)
    with (
        harness.client() as http,
        http.stream("POST", "/v1/chat/completions", json=_body(background=True)) as response,
    ):
        assert response.status_code == 200
        job_id = response.headers["x-oprover-job-id"]
        lines = response.iter_lines()
        next(lines)
        harness.redis.delete(f"oprover:job:{{{job_id}}}")  # the record vanishes mid-stream (as if expired)
        frames = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    error = json.loads(frames[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "job_expired"
