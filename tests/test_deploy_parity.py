"""The third-party servers of docker-compose.yml and deploy/k8s start as the local stack starts
them (deploy/local/), which the tests run for real: a setting or a command that works here and
not in an image is found here, not by the first user of compose or Kubernetes."""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
LOCAL = ROOT / "deploy" / "local"

#: MLflow settings the local stack's server runs with that compose and Kubernetes leave out
LOCAL_ONLY_MLFLOW = {
    # the bridges of the tests come and go on new ports: a list cached 60 s would miss them
    "MLFLOW_WEBHOOK_CACHE_TTL",
    # the auth app's files: the images' server.sh writes its own (deploy/mlflow/server.sh)
    "MLFLOW_AUTH_CONFIG_PATH",
    "MLFLOW_BIN",
    # no telemetry leaves a developer's machine; a deployment decides for itself
    "MLFLOW_DISABLE_TELEMETRY",
}


def _compose_service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return dict(services[name])


def _k8s_container(manifest: str, name: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all((K8S / "deps" / manifest).read_text()):
        if doc and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == name:
            [container] = [c for c in doc["spec"]["template"]["spec"]["containers"]]
            return dict(container)
    raise AssertionError(f"no Deployment {name} in deploy/k8s/deps/{manifest}")


def _script_default(script: Path, variable: str) -> str:
    found = re.search(rf'^{variable}="\$\{{\w+:-([^}}]+)\}}"', script.read_text(), re.M)
    assert found, f"{script.name} sets no default {variable}"
    return found.group(1)


def _local_mlflow_settings() -> set[str]:
    """The MLFLOW_* variables deploy/local/mlflow.sh exports to its server."""
    text = (LOCAL / "mlflow.sh").read_text()
    names: set[str] = set()
    for line in text.splitlines():
        words = line.strip().split()
        if words[:1] == ["export"]:
            names |= {w.split("=", 1)[0] for w in words[1:] if w.startswith("MLFLOW_")}
    return names - {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}


def test_the_mlflow_servers_get_the_settings_the_local_one_runs_with() -> None:
    """The webhook key, above all: without it MLflow draws a new one at every start, and after
    a restart it can no longer read the bridge's webhook secret (promotions wait for the
    reconcile loop)."""
    local = _local_mlflow_settings()
    assert {"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"} <= local
    compose = set(_compose_service("mlflow")["environment"])
    k8s = {var["name"] for var in _k8s_container("mlflow.yaml", "mlflow")["env"]}
    for where, names in (("docker-compose.yml", compose), ("deploy/k8s/deps/mlflow.yaml", k8s)):
        missing = sorted(local - LOCAL_ONLY_MLFLOW - names)
        assert not missing, f"{where}: the MLflow server lacks {missing}"
    assert _compose_service("mlflow")["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == (
        "false"
    )


def _stac_python() -> Path:
    """The interpreter of the stac-fastapi-pgstac the local stack installed (the version the
    images are tagged with)."""
    script = LOCAL / "stac-api.sh"
    version = _script_default(script, "STAC_API_VERSION")
    pgstac = _script_default(script, "PYPGSTAC_VERSION")
    cache = Path(os.environ.get("EOSTREAM_CACHE", Path.home() / ".cache" / "eostream"))
    python = cache / f"stac-api-{version}-pgstac-{pgstac}" / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"no {python}: `deploy/local/stack up` installs it (make test does)")
    return python


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_the_stac_api_command_names_what_its_image_serves(where: str) -> None:
    """stac-fastapi-pgstac 7.2.0 has an app factory and no module-level ``app``: the command
    ``uvicorn stac_fastapi.pgstac.app:app`` left the container restarting."""
    script = LOCAL / "stac-api.sh"
    version = _script_default(script, "STAC_API_VERSION")
    if where == "compose":
        service = _compose_service("stac-api")
        image, command = service["image"], list(service["command"])
    else:
        container = _k8s_container("stac.yaml", "stac-api")
        image, command = container["image"], list(container["command"])
    assert image.endswith(f":{version}"), f"{image}: the local stack runs {version}"
    assert command[0] == "uvicorn"
    target = next(word for word in command[1:] if not word.startswith("-"))
    factory = "--factory" in command
    check = (
        "import sys; from uvicorn.importer import import_from_string; "
        f"obj = import_from_string({target!r}); "
        "app = obj() if " + str(factory) + " else obj; "
        "from starlette.applications import Starlette; "
        "sys.exit(0 if isinstance(app, Starlette) else 3)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "PG"))}
    done = subprocess.run(
        [str(_stac_python()), "-c", check], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, f"{shlex.join(command)}:\n{done.stderr[-2000:]}"


def test_the_secret_of_a_laptop_cluster_comes_with_its_namespace_and_every_key() -> None:
    """`tools.sh secret | kubectl apply -f -` runs before the overlay that makes the namespace:
    it must make the namespace too; and it must give every key the template lists, the
    webhook key a Fernet key (32 random bytes, URL-safe base64) as MLflow requires."""
    done = subprocess.run(
        ["bash", str(K8S / "tools.sh"), "secret"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert [d["kind"] for d in docs] == ["Namespace", "Secret"]
    assert docs[0]["metadata"]["name"] == docs[1]["metadata"]["namespace"] == "eostream"
    template = yaml.safe_load((K8S / "base" / "secret.template.yaml").read_text())
    values = docs[1]["stringData"]
    assert set(values) == set(template["stringData"])
    assert len(base64.urlsafe_b64decode(values["mlflow-webhook-encryption-key"])) == 32
    used = {
        var["valueFrom"]["secretKeyRef"]["key"]
        for var in _k8s_container("mlflow.yaml", "mlflow")["env"]
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert used <= set(values)
