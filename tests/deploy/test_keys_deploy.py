"""API keys in the deployments: the compose override and the Kubernetes Secret fit together."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from app.auth import KeyFile

ROOT = Path(__file__).resolve().parents[2]
K8S_KEYS_FILE = "/etc/convengine/keys/api-keys"


def test_the_compose_override_turns_keys_on(tmp_path):
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    (tmp_path / "deploy").mkdir()
    shutil.copy(ROOT / "deploy/compose.keys.yml", tmp_path / "deploy")
    (tmp_path / "deploy/api-keys.txt").write_text("a-key\n")
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose is not installed: `make test` installs it"
    result = subprocess.run(
        [docker_compose, "-f", "docker-compose.yml", "-f", "deploy/compose.keys.yml", "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)
    service = merged["services"]["convengine"]
    assert service["environment"]["CONVENGINE_API_KEYS_FILE"] == "/run/secrets/convengine-api-keys"
    assert service["secrets"] == [{"source": "convengine-api-keys"}]
    assert merged["secrets"]["convengine-api-keys"]["file"] == str(tmp_path / "deploy/api-keys.txt")
    assert service["deploy"]["replicas"] == 2  # the rest of the deployment unchanged
    assert "deploy/api-keys.txt" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_kubernetes_secret_is_mounted_where_the_readme_points():
    secret = yaml.safe_load((ROOT / "deploy/k8s/api-keys.yaml").read_text())
    deployment = yaml.safe_load((ROOT / "deploy/k8s/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount  # a subPath mount would never see an edited Secret
    (file_name,) = secret["stringData"]
    assert f"{mount['mountPath']}/{file_name}" == K8S_KEYS_FILE
    assert K8S_KEYS_FILE in (ROOT / "deploy/k8s/api-keys.yaml").read_text()
    assert K8S_KEYS_FILE in (ROOT / "README.md").read_text()
    # Off until asked for: the Deployment does not point the service at the keys.
    names = {variable["name"] for variable in container["env"]}
    assert "CONVENGINE_API_KEYS_FILE" not in names


def test_the_shipped_secret_holds_no_key(tmp_path):
    secret = yaml.safe_load((ROOT / "deploy/k8s/api-keys.yaml").read_text())
    (tmp_path / "api-keys").write_text(secret["stringData"]["api-keys"])
    assert KeyFile(tmp_path / "api-keys").digests == []
