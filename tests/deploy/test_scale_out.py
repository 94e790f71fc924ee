"""The scale-out manifests (deploy/k8s/scale-out/), checked statically.

kubernetes-validate checks the built-in kinds (the headless Service, the HPA on the custom
metric, the adapter's ConfigMap) against Kubernetes' own schemas. It has no schema for KEDA's
ScaledObject, a custom resource: that one is checked here against the fields of KEDA's CRD
that it uses, and every manifest against the Deployment and the metrics the service exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app import metrics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
SCALE_OUT = K8S / "scale-out"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    name = "kubernetes-validate"
    tool = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.fail(f"{name} is not installed: `make install` installs it")
    command = [tool, "--strict", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _exported() -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", metrics.render().decode(), flags=re.M))


def test_built_in_kinds_are_valid_and_the_custom_resource_is_unknown_to_the_validator():
    built_in = [p for p in sorted(SCALE_OUT.glob("*.yaml")) if p.name != "keda-scaledobject.yaml"]
    assert {_load(p)["kind"] for p in built_in} == {
        "Service",
        "HorizontalPodAutoscaler",
        "ConfigMap",
    }
    result = _validate(*built_in)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(built_in), result.stdout
    keda = _validate(SCALE_OUT / "keda-scaledobject.yaml")
    assert "Couldn't find schema for kind ScaledObject" in keda.stdout + keda.stderr


def test_the_validator_rejects_broken_manifests(tmp_path):
    """The check is live: a misspelt field and a wrongly typed one are refused."""
    hpa = (SCALE_OUT / "hpa-load.yaml").read_text()
    (tmp_path / "hpa.yaml").write_text(hpa.replace("averageValue: 1500m", "averageValues: 1500m"))
    service = (SCALE_OUT / "service-pods.yaml").read_text()
    (tmp_path / "service.yaml").write_text(service.replace("clusterIP: None", "clusterIP: [None]"))
    for name in ("hpa.yaml", "service.yaml"):
        assert _validate(tmp_path / name).returncode != 0, name


def test_headless_service_selects_the_deployment_pods():
    service, deployment = _load(SCALE_OUT / "service-pods.yaml"), _load(K8S / "deployment.yaml")
    spec = service["spec"]
    assert spec["clusterIP"] == "None" or spec["clusterIP"] is None
    assert spec["publishNotReadyAddresses"] is False
    assert spec["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert [port["name"] for port in spec["ports"]] == ["http", "grpc"]
    for port in spec["ports"]:
        assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]
    assert service["metadata"]["name"] != _load(K8S / "service.yaml")["metadata"]["name"]


def test_custom_metric_hpa_replaces_the_cpu_one_and_keeps_cpu():
    cpu, load = _load(K8S / "hpa.yaml"), _load(SCALE_OUT / "hpa-load.yaml")
    assert load["metadata"]["name"] == cpu["metadata"]["name"]
    assert load["spec"]["scaleTargetRef"] == cpu["spec"]["scaleTargetRef"]
    assert (load["spec"]["minReplicas"], load["spec"]["maxReplicas"]) == (
        cpu["spec"]["minReplicas"],
        cpu["spec"]["maxReplicas"],
    )
    kinds = {metric["type"]: metric for metric in load["spec"]["metrics"]}
    assert kinds["Resource"] == cpu["spec"]["metrics"][0]  # CPU as before
    name = kinds["Pods"]["pods"]["metric"]["name"]
    assert name in _exported()
    adapter = yaml.safe_load(_load(SCALE_OUT / "prometheus-adapter.yaml")["data"]["config.yaml"])
    (rule,) = adapter["rules"]
    assert rule["name"]["as"] == name
    assert rule["seriesQuery"].split("{")[0] in _exported()
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


# The fields of KEDA's ScaledObject CRD (keda.sh/v1alpha1) that the manifest uses, and their types.
_SPEC_FIELDS = {
    "scaleTargetRef": dict,
    "minReplicaCount": int,
    "maxReplicaCount": int,
    "pollingInterval": int,
    "cooldownPeriod": int,
    "advanced": dict,
    "triggers": list,
    "fallback": dict,
}
_METRIC_TYPES = {"AverageValue", "Value", "Utilization"}


def test_keda_scaled_object_matches_the_crd_fields_and_the_deployment():
    scaled, deployment = _load(SCALE_OUT / "keda-scaledobject.yaml"), _load(K8S / "deployment.yaml")
    cpu_hpa = _load(K8S / "hpa.yaml")
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    spec = scaled["spec"]
    for key, value in spec.items():
        assert isinstance(value, _SPEC_FIELDS[key]), key
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert spec["minReplicaCount"] == cpu_hpa["spec"]["minReplicas"] >= 2
    assert spec["maxReplicaCount"] == cpu_hpa["spec"]["maxReplicas"]
    # It takes over the CPU HPA rather than fighting it.
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["name"] == cpu_hpa["metadata"]["name"]
    assert (
        scaled["metadata"]["annotations"]["scaledobject.keda.sh/transfer-hpa-ownership"] == "true"
    )
    assert "fallback" not in spec  # with a cpu trigger it would override CPU's proposal
    triggers = {trigger["type"]: trigger for trigger in spec["triggers"]}
    assert set(triggers) == {"prometheus", "cpu"}
    for trigger in spec["triggers"]:
        assert trigger["metricType"] in _METRIC_TYPES
        # The CRD types trigger metadata as a map of strings: a bare number is refused.
        assert all(isinstance(value, str) for value in trigger["metadata"].values()), trigger
    prometheus = triggers["prometheus"]["metadata"]
    assert {"serverAddress", "query", "threshold"} <= set(prometheus)
    assert float(prometheus["threshold"]) > 0
    used = set(re.findall(r"convengine_\w+", prometheus["query"]))
    assert used and used <= _exported()
    assert triggers["cpu"]["metadata"]["value"] == str(
        cpu_hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"]
    )


def test_the_grpc_port_is_declared_probed_and_served():
    deployment = _load(K8S / "deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["grpc"] == int(env["CONVENGINE_GRPC_PORT"]) == 8001
    assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    service_ports = {port["name"]: port for port in _load(K8S / "service.yaml")["spec"]["ports"]}
    assert service_ports["grpc"]["targetPort"] == "grpc"
    assert service_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
