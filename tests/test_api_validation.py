"""Bad input gets a 4xx in the one error envelope, with `param` naming the field; never a 500."""

from __future__ import annotations

import json

import pytest

from tests.harness import ServiceHarness

STATEMENT = "theorem t (x : ℕ) (h : x = 1) : x + 1 = 2 := by sorry"


@pytest.fixture(scope="module")
def client(redis_server: str, tmp_path_factory: pytest.TempPathFactory):
    """One gateway for the module: these tests only read what it answers (no workers run)."""
    service = ServiceHarness(redis_url=f"{redis_server}/15", workdir=tmp_path_factory.mktemp("gateway"))
    try:
        service.start_gateway()
        with service.client() as client:
            yield client
    finally:
        service.close()


BAD_PROVE_BODIES = [
    pytest.param({}, "formal_statement", id="missing-statement"),
    pytest.param({"formal_statement": ""}, "formal_statement", id="empty-statement"),
    pytest.param({"formal_statement": "   \n"}, "formal_statement", id="blank-statement"),
    pytest.param({"formal_statement": 42}, "formal_statement", id="statement-not-a-string"),
    pytest.param({"formal_statement": "def f : ℕ := 1"}, "formal_statement", id="not-a-theorem"),
    pytest.param({"formal_statement": "theorem t : 1 = 1 := by simp"}, "formal_statement", id="already-proved"),
    pytest.param({"formal_statement": "theorem t : 1 = 1"}, "formal_statement", id="no-proof-slot"),
    pytest.param(
        {"formal_statement": STATEMENT + "\ntheorem u : 2 = 2 := by sorry"}, "formal_statement", id="two-theorems"
    ),
    pytest.param({"formal_statement": "import Mathlib\n" + STATEMENT}, "formal_statement", id="import-in-statement"),
    pytest.param({"formal_statement": "theorem t := by sorry"}, "formal_statement", id="no-type"),
    pytest.param({"formal_statement": STATEMENT, "rounds": 0}, "rounds", id="rounds-zero"),
    pytest.param({"formal_statement": STATEMENT, "rounds": 10_000}, "rounds", id="rounds-too-many"),
    pytest.param({"formal_statement": STATEMENT, "rounds": "three"}, "rounds", id="rounds-not-int"),
    pytest.param({"formal_statement": STATEMENT, "attempts": 0}, "attempts", id="attempts-zero"),
    pytest.param({"formal_statement": STATEMENT, "attempts": 10_000}, "attempts", id="attempts-too-many"),
    pytest.param({"formal_statement": STATEMENT, "attempts": 1.5}, "attempts", id="attempts-fraction"),
    pytest.param({"formal_statement": STATEMENT, "top_k": -1}, "top_k", id="top-k-negative"),
    pytest.param(
        {"formal_statement": STATEMENT, "sampling": {"temperature": 7}},
        "sampling.temperature",
        id="temperature-out-of-range",
    ),
    pytest.param(
        {"formal_statement": STATEMENT, "sampling": {"max_tokens": 0}}, "sampling.max_tokens", id="max-tokens-zero"
    ),
    pytest.param({"formal_statement": STATEMENT, "sampling": "hot"}, "sampling", id="sampling-not-object"),
    pytest.param({"formal_statement": STATEMENT, "metadata": [1, 2]}, "metadata", id="metadata-not-object"),
    pytest.param(
        {"formal_statement": STATEMENT, "prompt_profile": "no-such-profile"}, "prompt_profile", id="unknown-profile"
    ),
    pytest.param({"formal_statement": STATEMENT, "lean_version": "v0.0.1"}, "lean_version", id="unknown-lean-version"),
    pytest.param(
        {"formal_statement": "theorem t : " + "1 + " * 10_000 + "1 = 1 := by"},
        "formal_statement",
        id="statement-too-long",
    ),
]


def _assert_error(response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return error


@pytest.mark.parametrize(("body", "param"), BAD_PROVE_BODIES)
def test_bad_prove_request_names_the_field(client, body: dict, param: str) -> None:
    _assert_error(client.post("/v1/prove", json=body), 400, param)


REFUSED_HEADERS = [
    pytest.param('import Mathlib\nrun_cmd Lean.logInfo "hi"', id="run-cmd"),
    pytest.param("import Mathlib\nset_option debug.skipKernelTC true", id="skip-kernel"),
    pytest.param("import Mathlib\naxiom cheat : False", id="axiom"),
    pytest.param("import Mathlib\nopen Real set_option debug.skipKernelTC true", id="command-after-open-names"),
]


@pytest.mark.parametrize("header", REFUSED_HEADERS)
@pytest.mark.parametrize("route", ["/v1/prove", "/v1/verify"])
def test_a_header_the_policy_refuses_is_a_400_before_anything_is_queued(client, route: str, header: str) -> None:
    """The header is the requester's own text and is sent to Lean as a command: refused at the door, naming it."""
    body = {"formal_statement": STATEMENT, "header": header}
    if route == "/v1/verify":
        body["code"] = STATEMENT.replace("sorry", "omega")
    error = _assert_error(client.post(route, json=body), 400, "header")
    assert error["code"] == "header_refused"


def test_the_default_header_and_honest_variants_are_accepted(client) -> None:
    honest = (
        "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen BigOperators Real Nat\n"
        "open scoped Classical"
    )
    response = client.post("/v1/prove", json={"formal_statement": STATEMENT, "header": honest})
    assert response.status_code == 202, response.text


def test_unknown_lean_version_lists_the_available_ones(client) -> None:
    error = _assert_error(
        client.post("/v1/prove", json={"formal_statement": STATEMENT, "lean_version": "v9"}), 400, "lean_version"
    )
    assert "v4.15.0" in error["message"]


def test_body_that_is_not_json(client) -> None:
    response = client.post("/v1/prove", content=b"{not json", headers={"content-type": "application/json"})
    _assert_error(response, 400, "body")


def test_body_that_is_a_list(client) -> None:
    _assert_error(client.post("/v1/prove", json=[STATEMENT]), 400, "body")


@pytest.mark.parametrize("route", ["/v1/prove", "/v1/verify", "/v1/chat/completions", "/v1/prove/batch"])
def test_a_missing_body_names_the_body(client, route: str) -> None:
    _assert_error(client.post(route), 400, "body")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_job_is_404(client, method: str) -> None:
    _assert_error(client.request(method, "/v1/prove/prf_doesnotexist"), 404, "id")


def test_unknown_job_events_is_404_before_streaming(client) -> None:
    response = client.get("/v1/prove/prf_doesnotexist/events")
    _assert_error(response, 404, "id")


def test_wait_out_of_range(client) -> None:
    _assert_error(client.post("/v1/prove?wait=-1", json={"formal_statement": STATEMENT}), 400, "wait")
    _assert_error(client.post("/v1/prove?wait=100000", json={"formal_statement": STATEMENT}), 400, "wait")


def test_unknown_fields_are_accepted(client) -> None:
    response = client.post("/v1/prove", json={"formal_statement": STATEMENT, "n": 3, "user": "me"})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"


def test_unknown_route_uses_the_envelope(client) -> None:
    _assert_error(client.get("/v1/nothing-here"), 404, None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({}, "code", id="missing-code"),
        pytest.param({"code": "  "}, "code", id="blank-code"),
        pytest.param(
            {"code": "theorem t : 1 = 1 := rfl", "formal_statement": "lemma"}, "formal_statement", id="bad-statement"
        ),
        pytest.param({"code": "theorem t : 1 = 1 := rfl", "timeout_s": -3}, "timeout_s", id="negative-timeout"),
    ],
)
def test_bad_verify_request_names_the_field(client, body: dict, param: str) -> None:
    _assert_error(client.post("/v1/verify", json=body), 400, param)


def test_verify_without_a_lean_worker_is_503_not_a_hang(client) -> None:
    error = _assert_error(client.post("/v1/verify", json={"code": "theorem t : 1 = 1 := rfl"}), 503, None)
    assert error["code"] == "lean_unavailable"


def test_api_keys_guard_v1_but_not_health(harness: ServiceHarness) -> None:
    harness.start_gateway(OPROVER_API_KEYS="k1,k2")
    with harness.client() as client:
        _assert_error(client.post("/v1/prove", json={"formal_statement": STATEMENT}), 401, None)
        wrong = client.post("/v1/prove", json={"formal_statement": STATEMENT}, headers={"Authorization": "Bearer nope"})
        _assert_error(wrong, 401, None)
        ok = client.post("/v1/prove", json={"formal_statement": STATEMENT}, headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 202
        assert client.get("/healthz").status_code == 200


def test_job_object_has_the_documented_shape(client) -> None:
    job = client.post("/v1/prove", json={"formal_statement": STATEMENT, "metadata": {"k": "v"}}).json()
    for key in ("id", "status", "formal_statement", "proof", "attempts", "usage", "created_at", "finished_at", "error"):
        assert key in job
    assert job["metadata"] == {"k": "v"}
    again = client.get(f"/v1/prove/{job['id']}").json()
    assert json.dumps(again, sort_keys=True) == json.dumps(job, sort_keys=True)


def test_bad_last_event_id_is_400_before_streaming(client) -> None:
    job = client.post("/v1/prove", json={"formal_statement": STATEMENT}).json()
    response = client.get(f"/v1/prove/{job['id']}/events", headers={"Last-Event-ID": "yesterday"})
    _assert_error(response, 400, "Last-Event-ID")
