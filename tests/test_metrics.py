"""services/metrics.py: what each observation records, the worker's /metrics server, the scrape-time collectors,
and the multiprocess mode (real processes sharing one directory)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from services import metrics

ROOT = Path(__file__).resolve().parents[1]


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_a_generation_records_tokens_speed_and_first_token():
    before = {
        "tokens": _value("oprover_generator_completion_tokens_total"),
        "ttft": _value("oprover_generator_time_to_first_token_seconds_count"),
        "stop": _value("oprover_generations_total", finish="stop"),
        "speed_sum": _value("oprover_generator_tokens_per_second_sum"),
        "retrieval": _value("oprover_retrieval_duration_seconds_count"),
    }
    metrics.observe_generation(
        seconds=11.0,
        retrieval_seconds=0.02,
        finish="stop",
        usage={"completion_tokens": 500, "prompt_tokens": 900},
        ttft_ms=1000,
    )
    assert _value("oprover_generator_completion_tokens_total") - before["tokens"] == 500
    assert _value("oprover_generator_time_to_first_token_seconds_count") - before["ttft"] == 1
    assert _value("oprover_generations_total", finish="stop") - before["stop"] == 1
    # 500 tokens decoded in the 10 s after the first token
    assert _value("oprover_generator_tokens_per_second_sum") - before["speed_sum"] == 50.0
    assert _value("oprover_retrieval_duration_seconds_count") - before["retrieval"] == 1


def test_a_round_and_a_job_end():
    checks = _value("oprover_lean_check_duration_seconds_count", verdict="timeout")
    rounds_sum = _value("oprover_round_duration_seconds_sum", verdict="timeout")
    metrics.observe_round("timeout", {"retrieve_ms": 10, "generate_ms": 4000, "verify_ms": 120000})
    assert _value("oprover_lean_check_duration_seconds_count", verdict="timeout") - checks == 1
    assert abs(_value("oprover_round_duration_seconds_sum", verdict="timeout") - rounds_sum - 124.01) < 1e-6

    proved = _value("oprover_jobs_finished_total", outcome="proved")
    rounds = _value("oprover_proof_rounds_sum")
    generations = _value("oprover_proof_generations_sum")
    duration = _value("oprover_job_duration_seconds_sum", outcome="proved")
    job = {
        "created_at": time.time() - 30,
        "proved_by": {"chain": 1, "round": 3},
        "attempts": [{}, {}, {}, {}, {}],
    }
    metrics.observe_job_end("proved", job)
    assert _value("oprover_jobs_finished_total", outcome="proved") - proved == 1
    assert _value("oprover_proof_rounds_sum") - rounds == 3
    assert _value("oprover_proof_generations_sum") - generations == 5
    assert 29 < _value("oprover_job_duration_seconds_sum", outcome="proved") - duration < 40
    failed = _value("oprover_jobs_finished_total", outcome="error")
    metrics.observe_job_end("error", None)  # no record at hand: counted, no duration
    assert _value("oprover_jobs_finished_total", outcome="error") - failed == 1


def test_worker_metrics_server_serves_the_exposition():
    class Fixed:
        def collect(self):
            from prometheus_client.core import GaugeMetricFamily

            gauge = GaugeMetricFamily("oprover_test_fixed", "a scrape-time value")
            gauge.add_metric([], 7)
            yield gauge

    server = metrics.serve_worker_metrics(0, [Fixed()], host="127.0.0.1")
    try:
        port = server.server_address[1]
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = _samples(response.content)
        assert samples[("oprover_test_fixed", ())] == 7
        assert ("oprover_generator_requests_in_flight", ()) in samples
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_oldest_queued_job_age(redis_client):
    from rq import Queue
    from rq.serializers import JSONSerializer

    Queue("generate", connection=redis_client, serializer=JSONSerializer).enqueue("builtins.print", "first")
    time.sleep(1.2)
    Queue("generate", connection=redis_client, serializer=JSONSerializer).enqueue("builtins.print", "second")
    Queue("verify", connection=redis_client, serializer=JSONSerializer).enqueue("builtins.print", "x")
    Queue("verify", connection=redis_client, serializer=JSONSerializer).empty()
    samples = _samples(metrics.render([metrics.QueueAgeCollector(redis_client)]))
    age = samples[("oprover_queue_oldest_job_age_seconds", (("queue", "generate"),))]
    assert 1.1 < age < 30  # the first job's age, not the second's
    assert samples[("oprover_queue_oldest_job_age_seconds", (("queue", "verify"),))] == 0


def test_multiprocess_mode_adds_up_every_process(tmp_path):
    """Two processes observe into one PROMETHEUS_MULTIPROC_DIR; a third process's render shows the sum."""
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin"}
    observe = textwrap.dedent(
        """
        from services import metrics
        metrics.observe_job_end("failed", {"created_at": 0})
        metrics.observe_round("fail", {"verify_ms": 500})
        metrics.IN_FLIGHT.inc(3)
        """
    )
    # the first process exits the way a worker does (mark_process_dead), the second one just vanishes
    subprocess.run(
        [sys.executable, "-c", observe + "metrics.mark_process_dead()\n"], env=env, cwd=ROOT, check=True, timeout=60
    )
    subprocess.run([sys.executable, "-c", observe], env=env, cwd=ROOT, check=True, timeout=60)
    # the third process has observed nothing itself
    show = "import sys; from services import metrics; sys.stdout.buffer.write(metrics.render())"
    body = subprocess.run(
        [sys.executable, "-c", show], env=env, cwd=ROOT, check=True, capture_output=True, timeout=60
    ).stdout
    samples = _samples(body)
    assert samples[("oprover_jobs_finished_total", (("outcome", "failed"),))] == 2
    assert samples[("oprover_lean_check_duration_seconds_count", (("verdict", "fail"),))] == 2
    # in-flight requests: a live sum, from which a process that exited cleanly drops out
    assert samples[("oprover_generator_requests_in_flight", ())] == 3


def test_json_logs_carry_the_job_id(tmp_path):
    """A real process with OPROVER_LOG_FORMAT=json: a bound step's lines and lines naming a job carry its id."""
    code = textwrap.dedent(
        """
        import logging
        from services import jsonlog
        assert jsonlog.install()
        log = logging.getLogger("oprover.test")
        token = jsonlog.bind("prf_0123456789abcdef01234567-c0-r2-gen")
        log.info("generating")                       # bound: the step's job
        jsonlog.unbind(token)
        log.info("job prf_fedcba9876543210fedcba98: proved")   # named in the message
        log.info("no job here")
        jsonlog.bind("vfy_abc")                      # a /v1/verify request: no proof job
        log.warning("checking")
        """
    )
    env = {"OPROVER_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["message"] for line in lines] == [
        "generating",
        "job prf_fedcba9876543210fedcba98: proved",
        "no job here",
        "checking",
    ]
    assert [line.get("job_id") for line in lines] == [
        "prf_0123456789abcdef01234567",
        "prf_fedcba9876543210fedcba98",
        None,
        None,
    ]
    assert lines[3]["level"] == "WARNING" and lines[0]["logger"] == "oprover.test" and "time" in lines[0]
    bad = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "OPROVER_LOG_FORMAT": "yaml"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "OPROVER_LOG_FORMAT must be json or text" in bad.stderr


def test_a_worker_serves_metrics_only_on_a_free_configured_port():
    class Ctx:
        checker = None
        memory = None

    assert metrics.serve_for_worker(Ctx(), env={}) is None
    assert metrics.serve_for_worker(Ctx(), env={"OPROVER_METRICS_PORT": "nine"}) is None
    first = metrics.serve_for_worker(Ctx(), env={"OPROVER_METRICS_PORT": "0"})
    assert first is not None
    try:
        taken = str(first.server_address[1])
        assert metrics.serve_for_worker(Ctx(), env={"OPROVER_METRICS_PORT": taken}) is None  # goes on without
        assert metrics.serve_for_worker(Ctx(), port=int(taken), env={}) is None  # --metrics-port alike
        assert httpx.get(f"http://127.0.0.1:{taken}/metrics", timeout=5).status_code == 200
    finally:
        first.shutdown()
        first.server_close()
