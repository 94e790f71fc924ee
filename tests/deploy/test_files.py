"""The image, compose and Kubernetes files, checked statically and by running their commands."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from ..servers import free_port, start_service
from .recent_nginx import recent_nginx

ROOT = Path(__file__).resolve().parents[2]
NGINX_FILES = (
    "nginx.conf",
    "convengine.conf",
    "upstreams.conf",
    "listen.conf",
    "grpc.conf",
    "grpc_upstreams.conf",
    "grpc_listen.conf",
)


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` (or .ci/run) installs it")
    return path


def _run(*command: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def _dockerfile_instruction(name: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return lines


def test_hadolint_finds_nothing():
    result = _run(_tool("hadolint"), str(ROOT / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_catch_problems(tmp_path):
    """The lint is live: an untagged base image and an unpinned pip install are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install numpy\nCMD python -m app\n")
    result = _run(_tool("hadolint"), str(bad))
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


def test_image_runs_the_same_commands_as_the_tests():
    assert _dockerfile_instruction("CMD") == ['CMD ["python", "-m", "app"]']
    (healthcheck,) = _dockerfile_instruction("HEALTHCHECK")
    assert healthcheck.endswith('CMD ["python", "-m", "app.healthcheck"]')
    assert "EXPOSE 8000 8001" in _dockerfile_instruction("EXPOSE")  # HTTP, gRPC
    assert _dockerfile_instruction("USER") == ["USER 10001:10001"]
    froms = _dockerfile_instruction("FROM")
    assert len(froms) == 2 and all("slim" in line for line in froms)


def test_image_python_is_past_the_ast_race():
    """3.11.8 made ast thread-safe (gh-106905); the image is on a later 3.11 patch release."""
    for line in _dockerfile_instruction("FROM"):
        major, minor, patch = re.search(r"python:(\d+)\.(\d+)\.(\d+)", line).groups()
        assert (int(major), int(minor)) == (3, 11) and int(patch) >= 15, line


def test_image_pins_every_runtime_dependency():
    lock = {
        re.split(r"==", line)[0].lower().replace("_", "-")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["server"]:
        name = re.split(r"[<>=\[ ]", requirement)[0].lower()
        assert name in lock, f"{name} is a dependency but requirements.lock does not pin it"


def test_dockerignore_keeps_tests_and_caches_out():
    rules = (ROOT / ".dockerignore").read_text().splitlines()
    assert rules[rules.index("*") :][0] == "*"  # everything out, then only what is built from
    allowed = {line[1:].rstrip("/") for line in rules if line.startswith("!")}
    assert allowed == {
        "requirements.lock",
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "convengine",
        "app",
    }


def test_healthcheck_command(tmp_path):
    """The exact HEALTHCHECK command: 0 against a live service, 1 against a dead port."""
    command = json.loads(_dockerfile_instruction("HEALTHCHECK")[0].split("CMD", 1)[1])
    command[0] = sys.executable
    service = start_service(tmp_path)
    try:
        service.wait_ready()
        env = {"CONVENGINE_PORT": str(service.port), "PATH": ""}
        assert _run(*command, env=env, cwd=ROOT).returncode == 0
    finally:
        service.stop()
    dead = {"CONVENGINE_PORT": str(free_port()), "PATH": ""}
    assert _run(*command, env=dead, cwd=ROOT).returncode == 1


def test_compose_file_is_valid():
    result = _run(_tool("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_validation_rejects_a_broken_file(tmp_path):
    broken = (ROOT / "docker-compose.yml").read_text().replace("replicas: 2", "replicas: two")
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = _run(
        _tool("docker-compose"), "-f", str(tmp_path / "docker-compose.yml"), "config", "-q"
    )
    assert result.returncode != 0


def test_compose_topology_matches_the_service():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service, lb = compose["services"]["convengine"], compose["services"]["lb"]
    assert service["deploy"]["replicas"] >= 2
    assert service["deploy"]["resources"]["limits"]["cpus"]
    assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "app.healthcheck"]
    assert lb["ports"] == ["8080:8080", "8081:8081"]
    assert service["environment"]["CONVENGINE_GRPC_PORT"] == "8001"
    assert "8001" in service["expose"]
    assert "server convengine:8001 " in (ROOT / "deploy/nginx/grpc_upstreams.conf").read_text()
    nginx = (ROOT / "deploy/nginx/convengine.conf").read_text()
    body_limit = int(service["environment"]["CONVENGINE_MAX_BODY_BYTES"])
    (megabytes,) = re.findall(r"client_max_body_size (\d+)m;", nginx)
    assert int(megabytes) << 20 == body_limit
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert grace > int(service["environment"]["CONVENGINE_SHUTDOWN_TIMEOUT"])
    mounted = {volume.split(":")[1] for volume in lb["volumes"]}
    assert mounted == {f"/etc/nginx/{name}" for name in NGINX_FILES}


def test_nginx_accepts_the_compose_configuration(tmp_path):
    """`nginx -t` (>= 1.27.3, as the compose file pins) on the compose nginx.conf, unchanged."""
    for name in NGINX_FILES:
        shutil.copy(ROOT / "deploy/nginx" / name, tmp_path / name)
    config = (
        (tmp_path / "nginx.conf")
        .read_text()
        .replace("/var/run/nginx.pid", str(tmp_path / "nginx.pid"))
    )
    (tmp_path / "nginx.conf").write_text(config)
    result = _run(recent_nginx(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"))
    assert result.returncode == 0, result.stderr


def test_kubernetes_manifests_are_valid():
    manifests = sorted(str(p) for p in (ROOT / "deploy/k8s").glob("*.yaml"))
    assert len(manifests) == 4
    result = _run(_tool("kubernetes-validate"), "--strict", *manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {yaml.safe_load(Path(m).read_text())["kind"] for m in manifests}
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret"}


def test_kubernetes_validation_rejects_a_broken_manifest(tmp_path):
    broken = (
        (ROOT / "deploy/k8s/deployment.yaml").read_text().replace("replicas: 2", "replicas: two")
    )
    (tmp_path / "deployment.yaml").write_text(broken)
    result = _run(_tool("kubernetes-validate"), "--strict", str(tmp_path / "deployment.yaml"))
    assert result.returncode != 0


def _bytes(quantity: str) -> int:
    units = {"G": 1 << 30, "Gi": 1 << 30, "M": 1 << 20, "Mi": 1 << 20}
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()
    return int(number) * units[unit]


def test_memory_settings_agree_with_the_container_limits():
    """Compose and Kubernetes give the same limits and budget, and the budget fits the limit
    beside what the process holds outside it, with room to read the largest bodies."""
    from app.config import BASELINE_BYTES, BUFFERS_PER_THREAD, Settings
    from app.limits.body import reading_bytes

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["convengine"]
    deployment = yaml.safe_load((ROOT / "deploy/k8s/deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    k8s_env = {item["name"]: item.get("value") for item in container["env"]}
    limits = compose["deploy"]["resources"]["limits"]
    memory = _bytes(limits["memory"])
    assert memory == _bytes(container["resources"]["limits"]["memory"])
    cpus = float(limits["cpus"])
    assert cpus == float(container["resources"]["limits"]["cpu"])
    budget_mb = compose["environment"]["CONVENGINE_MEMORY_BUDGET_MB"]
    assert budget_mb == k8s_env["CONVENGINE_MEMORY_BUDGET_MB"]
    settings = Settings(memory_budget_mb=int(budget_mb), max_concurrent=max(1, int(cpus)))
    budget = settings.memory_budget()
    assert budget + BASELINE_BYTES + settings.max_concurrent * BUFFERS_PER_THREAD <= memory
    assert reading_bytes(settings.max_body_bytes, 0) <= budget
    assert reading_bytes(settings.max_json_bytes, settings.max_json_bytes) <= budget
    readme = (ROOT / "README.md").read_text()
    assert f"`CONVENGINE_MEMORY_BUDGET_MB={budget_mb}`" in readme
