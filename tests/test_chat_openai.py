"""The chat door through the official clients: the `openai` SDK and LangChain's `ChatOpenAI` against the gateway.

Real Redis, real worker processes and the gateway over HTTP; the model and Lean are stand-ins
(standins/), scripted per test — their answers are not the model's or Lean's. The statement and the
passing proof are real MiniF2F data (tests/golden/, copied from ../shared/data).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI

from tests.api_fixtures import running_service
from tests.harness import ServiceHarness
from tests.test_loop_e2e import GOOD, GOOD_MARK, LEAN_MESSAGE, PROBLEM, WRONG, WRONG_MARK

pytestmark = pytest.mark.slow


QUESTION = f"Prove this, please:\n\n```lean4\n{PROBLEM['formal_statement']}\n```\n"


def completion_text(code: str) -> str:
    return f"Let me prove it.\n\n```lean4\n{code}\n```\n"


@pytest.fixture(scope="module")
def service(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHarness]:
    """One gateway and one worker of each kind for the module (their start is most of a test's cost); each test
    scripts the stand-in model afresh. Lean's table is the same for all: the good proof passes, the wrong fails."""
    rules = [
        {"match": GOOD_MARK, "outcome": "pass"},
        {"match": WRONG_MARK, "outcome": "error", "message": LEAN_MESSAGE},
    ]
    with running_service(f"{redis_server}/14", tmp_path_factory.mktemp("chat"), lean_rules=rules) as harness:
        yield harness


def script(harness: ServiceHarness, *, repaired: bool = True) -> openai.OpenAI:
    """The stand-in model answers wrongly first and, when `repaired`, right once it sees Lean's error."""
    harness.generator.reset()
    rules = [{"match": LEAN_MESSAGE, "content": completion_text(GOOD)}] if repaired else []
    harness.generator.script(rules, default={"content": completion_text(WRONG)})
    return sdk(harness)


def sdk(harness: ServiceHarness, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{harness.gateway_url}/v1", api_key=api_key, max_retries=0, timeout=60)


def test_sdk_answer_holds_the_verified_proof_and_the_job_is_an_ordinary_one(service: ServiceHarness) -> None:
    harness = service
    client = script(harness)
    raw = client.chat.completions.with_raw_response.create(
        model="oprover",
        messages=[{"role": "system", "content": "You are helpful."}, {"role": "user", "content": QUESTION}],
        temperature=0.7,
        max_tokens=4096,
        user="alice",
        metadata={"ticket": "T-1"},
        extra_body={"rounds": 2, "top_k": 0},
    )
    completion = raw.parse()
    job_id = raw.headers["x-oprover-job-id"]

    assert completion.id == f"chatcmpl-{job_id}"
    assert completion.object == "chat.completion" and completion.model == "oprover"
    [choice] = completion.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    content = choice.message.content or ""
    assert content.startswith("```lean4\n") and GOOD_MARK in content
    assert "Proved: Lean accepted this proof (chain 0, round 2; 2 attempts over 1 chain, up to round 2 of 2" in content
    extra = completion.model_extra or {}
    assert extra["oprover"]["status"] == "proved" and extra["oprover"]["job_id"] == job_id
    assert [v["verdict"] for v in extra["oprover"]["verdicts"]] == ["fail", "pass"]

    # The same job as POST /v1/prove makes, with the chat's options on it.
    with harness.client() as http:
        job = http.get(f"/v1/prove/{job_id}").json()
    assert job["status"] == "proved" and job["proof"] in content
    assert job["user"] == "alice" and job["metadata"] == {"ticket": "T-1"}
    assert job["config"]["rounds"] == 2 and job["config"]["top_k"] == 0
    assert job["config"]["sampling"]["temperature"] == 0.7 and job["config"]["sampling"]["max_tokens"] == 4096
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == job["usage"]["prompt_tokens"] > 0
    assert completion.usage.completion_tokens == job["usage"]["completion_tokens"] > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    sent = harness.chat_requests()
    assert len(sent) == 2 and all(r["temperature"] == 0.7 and r["max_tokens"] == 4096 for r in sent)


def test_sdk_stream_shows_progress_as_reasoning_then_the_answer(service: ServiceHarness) -> None:
    harness = service
    client = script(harness)
    stream = client.chat.completions.create(
        model="oprover",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"rounds": 2},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    ids = {chunk.id for chunk in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-prf_")
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    assert "Round 1 of up to 2 started" in reasoning
    assert "Lean's verdict: fail; first error: " in reasoning and LEAN_MESSAGE in reasoning
    assert "Round 2 started: revising with Lean's feedback" in reasoning
    assert "Lean's verdict: pass" in reasoning
    assert "retrieved" in reasoning
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert GOOD_MARK in content and "Proved" in content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_a_theorem_not_proved_is_said_plainly_with_the_last_attempt_and_lean_errors(service: ServiceHarness) -> None:
    harness = service
    client = script(harness, repaired=False)
    completion = client.chat.completions.create(
        model="oprover", messages=[{"role": "user", "content": QUESTION}], extra_body={"rounds": 2}
    )
    [choice] = completion.choices
    content = choice.message.content or ""
    assert choice.finish_reason == "stop"
    assert content.startswith("Not proved: no attempt passed Lean's check")
    assert WRONG_MARK in content and LEAN_MESSAGE in content
    assert "<!-- oprover:status=failed " in content
    assert (completion.model_extra or {})["oprover"]["status"] == "failed"


def test_n_2_runs_two_chains_with_one_choice_each(service: ServiceHarness) -> None:
    harness = service
    client = script(harness, repaired=False)
    # Exactly one generation gets the good proof: one chain proves, the other fails or is stopped.
    harness.generator.script(
        [{"match": "mathd_algebra_159", "content": completion_text(GOOD), "times": 1}],
        default={"content": completion_text(WRONG)},
    )
    completion = client.chat.completions.create(
        model="oprover", messages=[{"role": "user", "content": QUESTION}], n=2, extra_body={"rounds": 1}
    )
    assert [c.index for c in completion.choices] == [0, 1]
    extra = (completion.model_extra or {})["oprover"]
    winner = extra["proved_by"]["chain"]
    assert GOOD_MARK in (completion.choices[winner].message.content or "")
    loser = completion.choices[1 - winner].message.content or ""
    assert loser.startswith("Not proved:") and GOOD_MARK not in loser
    with harness.client() as http:
        assert http.get(f"/v1/prove/{extra['job_id']}").json()["config"]["attempts"] == 2


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": [{"role": "user", "content": "What is 2 + 2?"}]}, "messages"),
        ({"messages": [{"role": "user", "content": QUESTION}], "temperature": 3}, "temperature"),
        (
            {"messages": [{"role": "user", "content": QUESTION}], "extra_body": {"prompt_profile": "nope"}},
            "prompt_profile",
        ),
        ({"messages": [{"role": "user", "content": QUESTION}], "n": 2, "extra_body": {"attempts": 3}}, "n"),
        ({"messages": [{"role": "user", "content": QUESTION}], "extra_body": {"rounds": 0}}, "rounds"),
        ({"messages": [{"role": "user", "content": QUESTION}], "stream": True, "top_p": 0}, "top_p"),
        ({"messages": [{"role": "user", "content": "Prove it.\n```lean4\ntheorem t := by simp\n```"}]}, "messages"),
    ],
    ids=["no-statement", "temperature", "profile", "n-vs-attempts", "rounds", "stream-top-p", "not-a-statement"],
)
def test_bad_requests_raise_the_sdks_bad_request_error_naming_the_field(
    service: ServiceHarness, kwargs: dict, param: str
) -> None:
    client = script(service)
    jobs_before = len(service.redis.keys("oprover:job:*"))
    with pytest.raises(openai.BadRequestError) as raised:
        result = client.chat.completions.create(model="oprover", **kwargs)
        if kwargs.get("stream"):
            list(result)
    error = raised.value
    assert error.status_code == 400
    assert isinstance(error.body, dict) and error.body["param"] == param, error.body
    assert set(error.body) == {"message", "type", "param", "code"}
    if param == "messages":
        assert "```lean4" in error.body["message"]  # it says what was expected
    assert len(service.redis.keys("oprover:job:*")) == jobs_before  # refused before any job existed


def test_wrong_api_key_is_the_sdks_authentication_error(harness: ServiceHarness) -> None:
    harness.start_gateway(OPROVER_API_KEYS="sesame")
    with pytest.raises(openai.AuthenticationError):
        sdk(harness, "wrong").chat.completions.create(model="oprover", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.BadRequestError):  # past the key check: the request itself is judged
        sdk(harness, "sesame").chat.completions.create(model="oprover", messages=[{"role": "user", "content": "hi"}])


def test_models_lists_the_loop_and_the_raw_generator_model(service: ServiceHarness) -> None:
    harness = service
    client = script(harness)
    models = {model.id: model.model_extra or {} for model in client.models.list()}
    assert models["oprover"]["oprover_kind"] == "proving_loop"
    assert models["standin-oprover"]["oprover_kind"] == "raw_generator" and models["standin-oprover"]["relayed"]


def test_langchain_chat_openai_invoke_and_stream(service: ServiceHarness) -> None:
    harness = service
    script(harness)
    llm = ChatOpenAI(
        model="oprover",
        base_url=f"{harness.gateway_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        max_retries=0,
        timeout=60,
        extra_body={"rounds": 2},
    )
    message = llm.invoke([("human", QUESTION)])
    assert GOOD_MARK in str(message.content) and "Proved" in str(message.content)
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    streamed = "".join(str(chunk.content) for chunk in llm.stream([("human", QUESTION)]))
    assert GOOD_MARK in streamed


def test_a_job_started_by_chat_is_served_by_the_prove_api_too(service: ServiceHarness) -> None:
    harness = service
    script(harness)
    with httpx.Client(base_url=str(harness.gateway_url), timeout=60) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "oprover", "messages": [{"role": "user", "content": QUESTION}], "rounds": 2},
        )
        assert response.status_code == 200, response.text
        job_id = response.headers["x-oprover-job-id"]
        events = http.get(f"/v1/prove/{job_id}/events").text
    assert "event: job.proved" in events
