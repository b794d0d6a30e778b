"""/metrics of the gateway and of both workers, scraped over HTTP around a real proof job (real Redis, real worker
processes, the stand-in model and REPL), and the Grafana dashboard's queries checked against those scrapes.

The job fails its first round (Lean's error goes back to the model) and passes its second, so every family of
metrics moves: generations, retrieval, checks by verdict, rounds, the job's end, rounds and generations per proof.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.harness import ROOT, ServiceHarness

pytestmark = pytest.mark.slow

DASHBOARD = ROOT / "deploy" / "monitoring" / "grafana-dashboard.json"
STATEMENT = "theorem demo_add_comm (a b : ℕ) : a + b = b + a := by sorry"
GOOD = "theorem demo_add_comm (a b : ℕ) : a + b = b + a := by\n  exact Nat.add_comm a b"
WRONG = "theorem demo_add_comm (a b : ℕ) : a + b = b + a := by\n  linarith"
LEAN_MESSAGE = "linarith failed to find a contradiction"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def _block(code: str) -> str:
    return f"Here is the proof.\n\n```lean4\n{code}\n```\n"


@pytest.fixture
def scrapes(harness: ServiceHarness) -> dict[str, Any]:
    """Scrapes of the gateway, the generate worker and the verify worker, before and after one job."""
    harness.lean_rules(
        [
            {"match": "Nat.add_comm", "outcome": "pass", "check_s": 0.3},
            {"match": "linarith", "outcome": "error", "message": LEAN_MESSAGE, "check_s": 0.3},
        ]
    )
    harness.generator.script(
        [{"match": LEAN_MESSAGE, "content": _block(GOOD), "delay_s": 1.0}],
        default={"content": _block(WRONG), "delay_s": 1.0},
    )
    gateway = harness.start_gateway() + "/metrics"
    ports = {"generate": free_port(), "verify": free_port()}
    harness.start_worker("generate", OPROVER_METRICS_PORT=str(ports["generate"]))
    harness.start_worker("verify", concurrency=2, OPROVER_METRICS_PORT=str(ports["verify"]))
    urls = {"gateway": gateway, **{kind: f"http://127.0.0.1:{port}/metrics" for kind, port in ports.items()}}
    before = {name: scrape(url) for name, url in urls.items()}
    job = harness.submit({"formal_statement": STATEMENT, "rounds": 2})
    done = harness.wait_job(job["id"], timeout_s=60)
    assert done["status"] == "proved", done
    assert [a["verdict"] for a in done["attempts"]] == ["fail", "pass"]
    # The job reads as proved the moment the verify worker records it; its metrics follow a moment later.
    deadline = time.monotonic() + 10
    while True:
        after = {name: scrape(url) for name, url in urls.items()}
        if moved(before["verify"], after["verify"], "oprover_jobs_finished_total", outcome="proved") or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)
    return {"before": before, "after": after, "job": done}


def test_counters_and_histograms_move_in_every_process_and_feed_the_dashboard(scrapes):
    before, after = scrapes["before"], scrapes["after"]

    gateway = after["gateway"]
    assert ("oprover_queue_jobs", (("queue", "generate"),)) in gateway
    assert value(gateway, "oprover_workers", queue="generate") >= 1
    assert ("oprover_queue_oldest_job_age_seconds", (("queue", "generate"),)) in gateway

    g0, g1 = before["generate"], after["generate"]
    assert moved(g0, g1, "oprover_generations_total", finish="stop") == 2
    assert moved(g0, g1, "oprover_generation_duration_seconds_count") == 2
    assert moved(g0, g1, "oprover_generation_duration_seconds_sum") >= 2 * 1.0  # the stand-in's 1 s each
    assert moved(g0, g1, "oprover_generator_completion_tokens_total") > 0
    assert moved(g0, g1, "oprover_generator_prompt_tokens_total") > 0
    assert moved(g0, g1, "oprover_generator_time_to_first_token_seconds_count") == 2
    assert moved(g0, g1, "oprover_generator_tokens_per_second_count") == 2
    assert moved(g0, g1, "oprover_retrieval_duration_seconds_count") == 2
    assert value(g1, "oprover_generator_requests_in_flight") == 0
    assert ("oprover_memory_proofs", ()) in g1

    v0, v1 = before["verify"], after["verify"]
    assert moved(v0, v1, "oprover_lean_check_duration_seconds_count", verdict="fail") == 1
    assert moved(v0, v1, "oprover_lean_check_duration_seconds_count", verdict="pass") == 1
    assert moved(v0, v1, "oprover_lean_check_duration_seconds_sum", verdict="pass") >= 0.3
    assert moved(v0, v1, "oprover_round_duration_seconds_count", verdict="fail") == 1
    assert moved(v0, v1, "oprover_round_duration_seconds_count", verdict="pass") == 1
    assert moved(v0, v1, "oprover_jobs_finished_total", outcome="proved") == 1
    assert moved(v0, v1, "oprover_job_duration_seconds_count", outcome="proved") == 1
    assert moved(v0, v1, "oprover_proof_rounds_sum") == 2
    assert moved(v0, v1, "oprover_proof_generations_sum") == 2
    assert value(v1, "oprover_lean_repl_events_total", event="spawned") >= 2
    assert value(v1, "oprover_lean_pool_size") == 2

    # the same scrapes hold every metric the Grafana dashboard queries (one job run serves both checks)
    _dashboard_queries_only_scraped_metrics(scrapes)


def queried_but_not_scraped(dashboard: dict[str, Any], scraped: set[str]) -> set[str]:
    """Metric names the dashboard's queries use that no scrape contains."""
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b(oprover_[a-z0-9_]+)\b", target["expr"]))
    assert len(queried) >= 20
    return queried - scraped


def _dashboard_queries_only_scraped_metrics(scrapes: dict[str, Any]) -> None:
    scraped = {name for process in scrapes["after"].values() for name, _labels in process}
    dashboard = json.loads(DASHBOARD.read_text())
    assert queried_but_not_scraped(dashboard, scraped) == set()
    # and the check fails for a query of a metric nobody serves
    dashboard["panels"][0]["targets"].append({"refId": "Z", "expr": "rate(oprover_jobs_finshed_total[5m])"})
    assert queried_but_not_scraped(dashboard, scraped) == {"oprover_jobs_finshed_total"}


def test_scrape_configs_point_where_the_metrics_are_served():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services: dict[str, Any] = dict(compose["services"])
    for fragment in compose["include"]:
        services.update(yaml.safe_load((ROOT / fragment).read_text())["services"])
    prometheus = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    for target in targets:
        host, port = target.split(":")
        assert host in services, target
        env = services[host].get("environment", {})
        if host.endswith("-worker"):
            assert str(env.get("OPROVER_METRICS_PORT")) == port, target
    assert "gateway:8000" in targets and "generate-worker:9100" in targets and "verify-worker:9100" in targets
    # Kubernetes: every annotated pod serves on the annotated port (a container port of that number)
    from tests.test_deploy_validate import OVERLAYS, render

    for overlay in OVERLAYS:
        for obj in render(overlay):
            if obj["kind"] != "Deployment":
                continue
            template = obj["spec"]["template"]
            annotations = template["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/scrape") != "true":
                continue
            port = int(annotations["prometheus.io/port"])
            container = template["spec"]["containers"][0]
            assert port in [p["containerPort"] for p in container.get("ports", [])], obj["metadata"]["name"]
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if obj["metadata"]["name"].endswith("-worker"):
                assert env["OPROVER_METRICS_PORT"] == str(port)


def test_dashboard_is_valid_grafana_json():
    dashboard = json.loads(Path(DASHBOARD).read_text())
    assert dashboard["uid"] == "oprover-serve" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus" and panel["targets"]
