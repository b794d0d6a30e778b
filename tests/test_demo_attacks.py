"""`oprover up --demo` used as a newcomer would (CLI and curl against the real `up`), looking for a result that
claims a real proof without the demo label. The demo runs stand-ins (NOT Lean, NOT a model)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.test_demo import DemoUp


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUp]:
    service = DemoUp(tmp_path_factory.mktemp("demo-attacks"))
    try:
        service.wait_ready()
        yield service
    finally:
        service.close()


def test_a_proof_the_demo_reports_is_labelled_as_a_demo_result(demo: DemoUp) -> None:
    done = demo.cli("prove", "data/demo/sample/mathd_algebra_455.lean")
    assert done.returncode == 0, done.stderr[-2000:]
    shown = done.stdout + done.stderr
    assert "proved" in shown
    assert "demo" in shown.lower() or "stand-in" in shown.lower(), f"no demo label in what the CLI printed:\n{shown}"


def test_bad_input_to_the_demo_is_a_4xx_naming_the_field(demo: DemoUp) -> None:
    with demo.client() as client:
        for path, body in [("/v1/verify", {"code": 5}), ("/v1/prove", {"formal_statement": ""})]:
            response = client.post(path, json=body)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] in {"code", "formal_statement"}
        response = client.post("/v1/verify", content=b"not json", headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "body"


def test_a_theorem_outside_the_sample_is_refused_as_a_demo_not_passed(demo: DemoUp) -> None:
    """A true statement the sample does not hold: the stand-in says it runs no Lean (never a pass, never a 500)."""
    with demo.client() as client:
        response = client.post(
            "/v1/verify",
            json={
                "code": "theorem foo : 1 + 1 = 2 := by norm_num",
                "formal_statement": "theorem foo : 1 + 1 = 2 := by sorry",
            },
        )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["verdict"] != "pass"
    assert "demo stand-in Lean" in result["feedback"]
