"""`POST /v1/prove/batch`: a JSON list or JSONL of `/v1/prove` bodies becomes jobs, all or none.

Real Redis, gateway and workers; the model and Lean are stand-ins (standins/) that take seconds, as the
real parts do. Statements are real MiniF2F data (tests/golden/).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.api_fixtures import running_service
from tests.harness import ServiceHarness
from tests.shared_data import GOLDEN, read_jsonl
from tests.test_chat_openai import GOOD, GOOD_MARK, PROBLEM, completion_text

pytestmark = pytest.mark.slow

STATEMENTS = [record["formal_statement"] for record in read_jsonl(GOLDEN / "minif2f_problems.jsonl")[:3]]


@pytest.fixture(scope="module")
def service(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHarness]:
    with running_service(
        f"{redis_server}/14",
        tmp_path_factory.mktemp("batch"),
        lean_rules=[{"match": GOOD_MARK, "outcome": "pass", "check_s": 1}],
        model={"content": completion_text(GOOD), "delay_s": 2},
        gateway_env={"OPROVER_PROVE_MAX_BATCH": "5"},
    ) as harness:
        yield harness


def _jobs(harness: ServiceHarness) -> int:
    return len(harness.redis.keys("oprover:job:{*}"))


def test_a_jsonl_batch_becomes_jobs_in_order_that_run_like_any_other(service: ServiceHarness) -> None:
    lines = [json.dumps({"formal_statement": PROBLEM["formal_statement"], "rounds": 1})]
    lines += [json.dumps({"formal_statement": s, "rounds": 1, "metadata": {"n": i}}) for i, s in enumerate(STATEMENTS)]
    with service.client() as http:
        response = http.post(
            "/v1/prove/batch", content="\n".join(lines) + "\n\n", headers={"content-type": "application/jsonl"}
        )
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == [0, 1, 2, 3]
    jobs = [service.wait_job(item["id"], timeout_s=60) for item in data]
    assert [job["formal_statement"] for job in jobs] == [PROBLEM["formal_statement"], *STATEMENTS]
    assert jobs[2]["metadata"] == {"n": 1}
    # The stand-in model answers every statement with one proof: it passes for its own theorem only.
    assert jobs[0]["status"] == "proved" and GOOD_MARK in jobs[0]["proof"]
    assert all(job["status"] in ("proved", "failed") for job in jobs)


def test_a_json_list_batch(service: ServiceHarness) -> None:
    with service.client() as http:
        response = http.post("/v1/prove/batch", json=[{"formal_statement": s, "rounds": 1} for s in STATEMENTS[:2]])
    assert response.status_code == 202 and len(response.json()["data"]) == 2


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            [{"formal_statement": STATEMENTS[0]}, {"formal_statement": STATEMENTS[1]}, {"rounds": 2}],
            "2.formal_statement",
            "item 2",
        ),
        ([{"formal_statement": STATEMENTS[0]}, {"formal_statement": "lemma"}], "1.formal_statement", "item 1"),
        ([{"formal_statement": STATEMENTS[0], "rounds": 0}], "0.rounds", "item 0"),
        ([{"formal_statement": STATEMENTS[0], "prompt_profile": "nope"}], "0.prompt_profile", "item 0"),
        ([{"formal_statement": STATEMENTS[0]}, "not an object"], "1", "item 1"),
        ([], "body", "empty"),
        ([{"formal_statement": STATEMENTS[0]}] * 6, "body", "at most 5"),
    ],
    ids=["missing-field", "bad-statement", "rounds", "profile", "not-an-object", "empty", "too-many"],
)
def test_one_bad_item_refuses_the_whole_batch_naming_it(
    service: ServiceHarness, body: list, param: str, words: str
) -> None:
    before = _jobs(service)
    with service.client() as http:
        response = http.post("/v1/prove/batch", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and words in error["message"]
    assert _jobs(service) == before  # all or none


def test_a_jsonl_line_that_is_not_json_is_named_by_its_line(service: ServiceHarness) -> None:
    body = json.dumps({"formal_statement": STATEMENTS[0]}) + "\n\n{not json\n"
    before = _jobs(service)
    with service.client() as http:
        response = http.post("/v1/prove/batch", content=body)
    assert response.status_code == 400
    assert "item 1 (line 3)" in response.json()["error"]["message"]
    assert _jobs(service) == before
