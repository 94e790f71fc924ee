"""The KServe manifests (deploy/kserve/), checked statically: there is no cluster here.

kubernetes-validate has no schema for KServe's kinds (custom resources), so they are checked
with jsonschema against the part of KServe's CRD schemas they use (kserve_schema.yaml, every
object closed as ``kubectl apply --validate=strict`` would), then against each other, the
image and the service: the runtime's ports are the service's, its readiness route answers,
its memory settings are the Deployment's.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema
import pytest
import yaml

from app.main import create_app

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy/kserve"
SCHEMAS = yaml.safe_load((Path(__file__).parent / "kserve_schema.yaml").read_text())


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((KSERVE / name).read_text())


def _errors(manifest: dict[str, Any]) -> list[str]:
    """What KServe's schema for the manifest's kind refuses in it, one line each."""
    schema = {**SCHEMAS[manifest["kind"]], "$defs": SCHEMAS["$defs"]}
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(manifest)]


RUNTIME = _load("servingruntime.yaml")
SERVICES = [_load("inferenceservice.yaml"), _load("inferenceservice-grpc.yaml")]


def test_every_manifest_is_one_of_the_two_kinds():
    kinds = sorted(yaml.safe_load(p.read_text())["kind"] for p in KSERVE.glob("*.yaml"))
    assert kinds == ["InferenceService", "InferenceService", "ServingRuntime"]


def test_kubernetes_validate_knows_neither_kind():
    """Why the schema excerpt: the usual validator cannot check these."""
    tool = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    tool = tool or shutil.which("kubernetes-validate")
    assert tool, "kubernetes-validate is not installed: `make install` installs it"
    done = subprocess.run(
        [tool, "--strict", str(KSERVE / "servingruntime.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Couldn't find schema for kind ServingRuntime" in done.stdout + done.stderr


@pytest.mark.parametrize("manifest", [RUNTIME, *SERVICES], ids=lambda m: m["metadata"]["name"])
def test_the_manifests_match_kserve_s_schema(manifest):
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[manifest["kind"]])
    assert _errors(manifest) == []


def _broken(manifest: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    broken = copy.deepcopy(manifest)
    *parents, last = path.split(".")
    place = broken
    for key in parents:
        place = place[int(key)] if key.isdigit() else place[key]
    place[last] = value
    return broken


@pytest.mark.parametrize(
    ("manifest", "path", "value", "refusal"),
    [
        (RUNTIME, "spec.protocolVersions", ["v3"], "'v3' is not one of"),
        (RUNTIME, "spec.supportedModelFormats.0.priority", 0, "less than the minimum"),
        (
            RUNTIME,
            "spec.containers.0.ports",
            [{"containerPort": "8000"}],
            "is not of type 'integer'",
        ),
        (RUNTIME, "spec.containers.0.readinesProbe", {}, "'readinesProbe' was unexpected"),
        (RUNTIME, "spec.containers.0.resources.limits.memory", "4 GB", "is not valid"),
        (SERVICES[0], "spec.predictor.scaleMetric", "latency", "'latency' is not one of"),
        (SERVICES[0], "spec.predictor.model.modelFormat", {"version": "1"}, "'name' is a required"),
        (SERVICES[1], "spec.predictor.model.protocolVersion", "grpc", "'grpc' is not one of"),
        (SERVICES[1], "spec.predictor.model.readinessProbe.grpc", {}, "'port' is a required"),
        (SERVICES[1], "apiVersion", "serving.kserve.io/v1alpha1", "was expected"),
    ],
)
def test_the_schema_check_refuses_broken_manifests(manifest, path, value, refusal):
    errors = _errors(_broken(manifest, path, value))
    assert errors and any(refusal in error for error in errors), errors


def _container() -> dict[str, Any]:
    (container,) = RUNTIME["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value") for item in container["env"]}


def test_each_inference_service_runs_on_the_runtime_in_a_protocol_it_speaks():
    formats = {(f["name"], f["version"]) for f in RUNTIME["spec"]["supportedModelFormats"]}
    env = _env(_container())
    ports = {"v2": ("http1", int(env["CONVENGINE_PORT"])),
             "grpc-v2": ("h2c", int(env["CONVENGINE_GRPC_PORT"]))}  # fmt: skip
    served = set()
    for service in SERVICES:
        model = service["spec"]["predictor"]["model"]
        assert model["runtime"] == RUNTIME["metadata"]["name"]
        assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
        protocol = model["protocolVersion"]
        assert protocol in RUNTIME["spec"]["protocolVersions"]
        (port,) = model["ports"]  # Knative routes one port per revision
        assert (port["name"], port["containerPort"]) == ports[protocol]
        served.add(protocol)
        assert "storageUri" not in model  # nothing to download: the engine is the model
    assert served == {"v2", "grpc-v2"}
    grpc_probe = SERVICES[1]["spec"]["predictor"]["model"]["readinessProbe"]["grpc"]
    assert grpc_probe["port"] == int(env["CONVENGINE_GRPC_PORT"])


def test_the_runtime_s_ports_are_the_image_s():
    exposed = re.search(r"^EXPOSE (.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert exposed is not None
    env = _env(_container())
    assert {env["CONVENGINE_PORT"], env["CONVENGINE_GRPC_PORT"]} == set(exposed[1].split())


def test_readiness_is_the_protocol_s_and_answers_once_the_service_is_up():
    probe = _container()["readinessProbe"]["httpGet"]
    assert probe["path"] == "/v2/health/ready"
    assert str(probe["port"]) == _env(_container())["CONVENGINE_PORT"]

    async def ready() -> tuple[int, int]:
        app = create_app()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            before = (await client.get(probe["path"])).status_code
            async with app.router.lifespan_context(app):
                return before, (await client.get(probe["path"])).status_code

    before, after = anyio.run(ready)
    assert before >= 400 and after == 200  # a probe fails before the warm-up, then passes


def test_memory_and_identity_agree_with_the_deployment():
    deployment = yaml.safe_load((ROOT / "deploy/k8s/deployment.yaml").read_text())
    (pod_container,) = deployment["spec"]["template"]["spec"]["containers"]
    container = _container()
    assert container["resources"] == pod_container["resources"]
    budget = "CONVENGINE_MEMORY_BUDGET_MB"
    assert _env(container)[budget] == _env(pod_container)[budget]
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert container["securityContext"]["runAsUser"] == pod_security["runAsUser"]
    replica = next(item for item in container["env"] if item["name"] == "CONVENGINE_REPLICA")
    assert replica["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
