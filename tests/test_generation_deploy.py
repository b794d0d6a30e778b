"""Dockerfile.gpu and deploy/sglang/compose.yaml, checked offline (no Docker engine here): the launch flags
docs/generation.md asks for ("The model server"), the healthcheck on a real generation, and the generate
worker wired to SGLang."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml (dev dependency pyyaml==6.0.2) reads the compose files")

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "deploy" / "sglang" / "entrypoint.sh"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "sglang" / "compose.yaml").read_text())


def test_sglang_launch_flags():
    script = ENTRYPOINT.read_text()
    for flag in (
        "--reasoning-parser qwen3",
        "--enable-metrics",
        "--enable-cache-report",
        '--context-length "${OPROVER_SGLANG_CONTEXT_LENGTH}"',
        '--mem-fraction-static "${OPROVER_SGLANG_MEM_FRACTION}"',
        '--tp "${OPROVER_SGLANG_TP}"',
        "python3 -m sglang.launch_server",
    ):
        assert flag in script, flag
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    for setting in ("OPROVER_SGLANG_MODEL_ID=m-a-p/OProver-8B", "OPROVER_SGLANG_TP=1", "HF_HUB_OFFLINE=1"):
        assert setting in dockerfile
    assert "HEALTHCHECK" in dockerfile and "healthcheck.sh" in dockerfile
    assert "OProver-32B" in dockerfile and "H200" in dockerfile and "fp8" in dockerfile


@pytest.mark.parametrize("script", ["entrypoint.sh", "healthcheck.sh"])
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / "deploy" / "sglang" / script)], check=True)


def test_healthcheck_is_a_real_generation():
    script = (ROOT / "deploy" / "sglang" / "healthcheck.sh").read_text()
    assert "/v1/chat/completions" in script and '"max_tokens":1' in script and "--fail" in script


def test_entrypoint_refuses_to_serve_without_weights(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OPROVER_SGLANG_MODEL_DIR": str(tmp_path / "missing")}
    result = subprocess.run(["bash", str(ENTRYPOINT), "serve"], env=env, capture_output=True, text=True)
    assert result.returncode == 64
    assert "no model weights" in result.stderr and "download" in result.stderr


def test_compose_sglang_service(compose):
    sglang = compose["services"]["sglang"]
    assert sglang["build"]["dockerfile"] == "Dockerfile.gpu"
    assert (ROOT / "deploy" / "sglang" / sglang["build"]["context"] / "Dockerfile.gpu").exists()
    (device,) = sglang["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert sglang["healthcheck"]["test"] == ["CMD", "/opt/oprover/healthcheck.sh"]
    assert any(volume.endswith(":/models") for volume in sglang["volumes"])


def test_compose_generate_worker(compose):
    worker = compose["services"]["generate-worker"]
    assert worker["command"] == ["oprover", "worker", "generate"]
    env = worker["environment"]
    assert env["OPROVER_GENERATOR_URL"] == "http://sglang:30000/v1"
    assert env["OPROVER_REDIS_URL"] == "redis://redis:6379/0"
    assert env["OPROVER_QDRANT_URL"] == "http://qdrant:6333"
    assert worker["depends_on"]["sglang"]["condition"] == "service_healthy"
    dockerfile = ROOT / "deploy" / "sglang" / worker["build"]["context"] / worker["build"]["dockerfile"]
    assert dockerfile.exists()


def test_compose_fragment_is_included_by_the_root_file():
    root = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "deploy/sglang/compose.yaml" in root.get("include", [])
    assert shlex.split("oprover worker generate") == ["oprover", "worker", "generate"]
