"""Compose, Kubernetes manifests and Dockerfiles: validated by the maintained tools, offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT

K8S = DEPLOY / "k8s"
K8S_VERSION = "1.32.0"
CORE_KINDS = {"Namespace", "Secret", "PersistentVolumeClaim", "Deployment", "Service"}
BIN = Path(sys.executable).parent


def _docs() -> list[dict[str, Any]]:
    """Every object the kustomization lists, in order."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d]
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_compose_files_validate_against_the_compose_spec():
    result = _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                  str(DEPLOY / "compose.yaml"), str(DEPLOY / "compose.gpu.yaml"))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validation_catches_a_broken_file(tmp_path: Path):
    broken = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broken["services"]["redis"]["healthcheck"]["interval"] = {"not": "a duration"}
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    result = _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                  str(tmp_path / "compose.yaml"))  # fmt: skip
    assert result.returncode != 0


def test_compose_stack_wiring():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"deltaserve", "redis", "prometheus", "grafana"}
    assert all("healthcheck" in s for s in services.values())
    server = services["deltaserve"]
    assert server["build"]["dockerfile"] == "Dockerfile.cpu"
    assert "--redis-url=redis://redis:6379/0" in server["command"]
    assert "/ready" in " ".join(server["healthcheck"]["test"])
    assert any(v.get("target") == "/models" for v in server["volumes"] if isinstance(v, dict))
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())["services"]["deltaserve"]
    assert gpu["build"]["dockerfile"] == "Dockerfile"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        assert (ROOT / dockerfile).is_file()


def test_core_kubernetes_manifests_validate():
    core = [d for d in _docs() if d["kind"] in CORE_KINDS]
    assert {d["kind"] for d in core} == CORE_KINDS
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any error


def test_kubernetes_validation_catches_a_broken_manifest():
    deployment = _one("Deployment", "deltaserve")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_deployment_is_production_shaped():
    pod = _one("Deployment", "deltaserve")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["lifecycle"]["preStop"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e.get("value") for e in container["env"]}
    redis = _one("Service", "deltaserve-redis")
    assert env["DELTASERVE_REDIS_URL"] == f"redis://{redis['metadata']['name']}:6379/0"
    secret = _one("Secret", "deltaserve-api-keys")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert env["DELTASERVE_API_KEYS"] == f"{mount['mountPath']}/{next(iter(secret['stringData']))}"
    # The drain (--drain-timeout-s) and the preStop pause fit in the grace period.
    assert pod["terminationGracePeriodSeconds"] > float(env["DELTASERVE_DRAIN_TIMEOUT_S"]) + 10


def test_inference_pool_and_pod_monitor_select_the_server_pods():
    deployment = _one("Deployment", "deltaserve")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"]
             for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}  # fmt: skip
    pool = _one("InferencePool", "deltaserve")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [ports["http"]]
    assert pool["spec"]["endpointPickerRef"]["port"]["number"] > 0
    monitor = _one("PodMonitor", "deltaserve")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    service = _one("Service", "deltaserve")
    assert service["spec"]["selector"].items() <= pod_labels.items()


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfiles_pass_hadolint(dockerfile: str):
    result = _run(str(BIN / "hadolint"), dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path):
    (tmp_path / "Dockerfile").write_text("FROM ubuntu\nRUN cd /tmp && apt-get install curl\n")
    assert _run(str(BIN / "hadolint"), str(tmp_path / "Dockerfile")).returncode != 0


def test_prometheus_rule_carries_the_shipped_rules():
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
    assert _one("PrometheusRule", "deltaserve")["spec"]["groups"] == shipped
