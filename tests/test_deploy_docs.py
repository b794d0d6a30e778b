"""docs/deployment.md agrees with the files it describes: the quick start's commands, the sizing table's
arithmetic, and the scale-out guide's numbers against the rendered Kubernetes manifests."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests.test_deploy_validate import OVERLAYS, _by_kind, _pod_spec, render

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "deployment.md").read_text()


def _section(title: str) -> str:
    return DOC.split(f"## {title}")[1].split("\n## ")[0]


@pytest.fixture(scope="module")
def rendered():
    return {overlay.name: render(overlay) for overlay in OVERLAYS}


def test_quick_start_commands_name_what_exists():
    quick = _section("Quick start")
    compose = yaml.safe_load((ROOT / "deploy" / "sglang" / "compose.yaml").read_text())
    assert "docker compose run --rm sglang download" in quick and "sglang" in compose["services"]
    assert "download)" in (ROOT / "deploy" / "sglang" / "entrypoint.sh").read_text()
    assert "cp .env.example .env" in quick and (ROOT / ".env.example").is_file()
    assert "OPROVER_API_KEYS=" in (ROOT / ".env.example").read_text()
    root = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "--profile monitoring" in quick
    profiled = {name for name, service in root["services"].items() if "monitoring" in service.get("profiles", [])}
    assert {"prometheus", "grafana"} <= profiled
    for needed in ("disk", "weights", "Mathlib", "REPL"):
        assert needed in quick


def test_sizing_table_is_the_arithmetic_it_states():
    sizing = _section("Sizing")
    values = {}
    for symbol in "TLncm":
        row = re.search(rf"^\| {symbol} \|.*\| ~([\d,.]+)", sizing, flags=re.M)
        assert row, symbol
        values[symbol] = float(row.group(1).replace(",", ""))
    rows = re.findall(r"^\| ([\d,]+) \| (\d+) \| (\d+) \| ([\d-]+) \| 1-(\d+) \|$", sizing, flags=re.M)
    assert len(rows) == 4
    for target, gpus, cores, _pods, generate_max in rows:
        target_per_hour = float(target.replace(",", ""))
        generations = target_per_hour * values["n"]
        assert int(gpus) == max(1, math.ceil(generations * values["L"] / (values["T"] * 3600)))
        assert int(cores) == max(1, math.ceil(generations * values["c"] / 3600 / 0.9))
        assert int(generate_max) == 2 * int(gpus)


def test_scale_out_guide_matches_the_manifests(rendered):
    guide = _section("Scale out")
    for overlay in OVERLAYS:
        assert f"deploy/k8s/overlays/{overlay.name}" in guide
    base = rendered["cluster"]
    deployments = _by_kind(base, "Deployment")
    for name in (*deployments, *_by_kind(base, "StatefulSet")):
        assert f"`{name}`" in guide, name
    verify = _pod_spec(deployments["verify-worker"])["containers"][0]
    requests, limits = verify["resources"]["requests"], verify["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in verify["env"]}
    assert (
        f"{env['OPROVER_LEAN_POOL_SIZE']} warm REPLs each ({requests['cpu']} cores, "
        f"{requests['memory'].removesuffix('Gi')} GiB request, {limits['memory'].removesuffix('Gi')} GiB limit)"
    ) in guide
    hpa = _by_kind(base, "HorizontalPodAutoscaler")["gateway"]["spec"]
    assert f"({hpa['minReplicas']}-{hpa['maxReplicas']} replicas)" in guide
    for scaled in _by_kind(base, "ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            assert f"`{trigger['metadata']['listName']}`" in guide
    generate = _pod_spec(deployments["generate-worker"])["containers"][0]
    concurrency = next(e["value"] for e in generate["env"] if e["name"] == "OPROVER_GENERATOR_CONCURRENCY")
    assert f"{concurrency} generations in flight each" in guide
    assert f"one per {concurrency} waiting rounds" in guide
    # "1 to 2 per SGLang pod": in every overlay, KEDA's ceiling is twice the GPUs
    for overlay, objects in rendered.items():
        gpus = _by_kind(objects, "Deployment")["sglang"]["spec"]["replicas"]
        ceiling = _by_kind(objects, "ScaledObject")["generate-worker"]["spec"]["maxReplicaCount"]
        assert ceiling == 2 * gpus, overlay
    assert "1 to 2 per SGLang pod" in guide
