"""deploy/k8s, checked offline: each overlay builds with kustomize and validates against the
Kubernetes JSON schemas (kubernetes-validate, strict), and what it deploys hangs together: probes,
Service selectors and ports, ConfigMap/Secret/PVC references, $(VAR) order, the GPU request, and
an environment that each service's real settings class reads in full. The optional KEDA component
(components/keda-inference), added to each overlay, validates against KEDA's own ScaledObject CRD
schema (vendored in tests/data/keda/) and scales inference on the group and topic it consumes.

The tools come from deploy/k8s/tools.sh (cached under $EOSTREAM_CACHE/tools, keyed by version).
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from eostream.shared import topics
from eostream.shared.secrets_policy import PUBLISHED

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("local", "gpu")
NAMESPACE = "eostream"
# Secrets an overlay expects to exist in the cluster rather than generating them.
EXTERNAL = {"local": {("Secret", "eostream-secrets")}, "gpu": {("Secret", "eostream-secrets")}}


def _compose_helpers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "eostream_test_compose_helpers", Path(__file__).with_name("test_compose.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _compose_helpers()
EOSTREAM_SERVICES: dict[str, tuple[str, str, int, tuple[str, ...]]] = helpers.EOSTREAM_SERVICES


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    done = subprocess.run(
        ["bash", str(K8S / "tools.sh"), "install"], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        pytest.fail(f"deploy/k8s/tools.sh install failed (needs Go and uv):\n{done.stderr}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def _build(tools: dict[str, str], path: Path) -> str:
    done = subprocess.run(
        [tools["KUSTOMIZE"], "build", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kustomize build {path.relative_to(ROOT)} failed:\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def rendered(tools: dict[str, str]) -> dict[str, str]:
    paths = {"base": K8S / "base", "deps": K8S / "deps"}
    paths |= {o: K8S / "overlays" / o for o in OVERLAYS}
    return {name: _build(tools, path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def objects(rendered: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: [d for d in yaml.safe_load_all(text) if d] for name, text in rendered.items()}


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


# ---- schema validation -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(
    tools: dict[str, str], rendered: dict[str, str], overlay: str, tmp_path: Path
) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered[overlay])
    done = subprocess.run(
        [
            tools["KUBERNETES_VALIDATE"],
            "--strict",
            "--quiet",
            "-k",
            tools["KUBERNETES_SCHEMA_VERSION"],
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"overlays/{overlay} is not valid:\n{done.stdout}{done.stderr}"


def test_validator_rejects_a_misspelt_field(
    tools: dict[str, str], rendered: dict[str, str], tmp_path: Path
) -> None:
    """The validation above can fail: a typo in a probe is caught (strict mode)."""
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(rendered["local"].replace("readinessProbe:", "readinesProbe:", 1))
    done = subprocess.run(
        [
            tools["KUBERNETES_VALIDATE"],
            "--strict",
            "--quiet",
            "-k",
            tools["KUBERNETES_SCHEMA_VERSION"],
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "readinesProbe" in done.stdout + done.stderr


# ---- the four services -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", list(EOSTREAM_SERVICES))
def test_service_has_probes_and_a_service_on_its_ops_port(
    objects: dict[str, list[dict[str, Any]]], overlay: str, service: str
) -> None:
    docs = objects[overlay]
    _, _, port, command = EOSTREAM_SERVICES[service]
    deployment = _find(docs, "Deployment", service)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", *command]  # the service alone, no runner
    assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    svc = _find(docs, "Service", service)
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert deployment["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_long_running_container_has_probes(
    objects: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for workload in _workloads(objects[overlay]):
        if workload["kind"] == "Job":
            continue
        for container in workload["spec"]["template"]["spec"]["containers"]:
            where = f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"
            assert "livenessProbe" in container, f"{where}: no liveness probe"
            assert "readinessProbe" in container, f"{where}: no readiness probe"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_name_their_ports(
    objects: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = objects[overlay]
    pods = [w["spec"]["template"] for w in _workloads(docs)]
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        matching = [p for p in pods if selector.items() <= p["metadata"].get("labels", {}).items()]
        assert matching, f"Service/{svc['metadata']['name']} selects no pod"
        named = {
            port["name"]
            for pod in matching
            for c in pod["spec"]["containers"]
            for port in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert target in named, f"Service/{svc['metadata']['name']}: no port {target}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve_inside_the_overlay(
    objects: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = objects[overlay]
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for workload in _workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        wanted: set[tuple[str, str]] = set()
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                wanted.add(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                wanted.add(("Secret", volume["secret"]["secretName"]))
            if "persistentVolumeClaim" in volume:
                wanted.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        for container in _containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    wanted.add(("ConfigMap", source["configMapRef"]["name"]))
                if "secretRef" in source:
                    wanted.add(("Secret", source["secretRef"]["name"]))
            for var in container.get("env", []):
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    wanted.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
                if "secretKeyRef" in ref:
                    wanted.add(("Secret", ref["secretKeyRef"]["name"]))
            for mount in container.get("volumeMounts", []):
                names = {v["name"] for v in spec.get("volumes", [])} | claims
                assert mount["name"] in names, f"{workload['metadata']['name']}: {mount}"
        missing = wanted - present - EXTERNAL[overlay]
        assert not missing, f"{workload['kind']}/{workload['metadata']['name']} needs {missing}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dependent_variables_are_defined_before_use(
    objects: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Kubernetes expands $(VAR) only from variables defined earlier in the list."""
    for workload in _workloads(objects[overlay]):
        for container in _containers(workload):
            defined: set[str] = set()
            for var in container.get("env", []):
                for used in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                    assert used in defined, f"{container['name']}: {var['name']} uses $({used})"
                defined.add(var["name"])
            for arg in [*container.get("command", []), *container.get("args", [])]:
                for used in re.findall(r"\$\((\w+)\)", arg):
                    assert used in defined, f"{container['name']}: {arg!r} uses $({used})"


def _container_env(
    docs: list[dict[str, Any]], container: dict[str, Any]
) -> tuple[dict[str, str], frozenset[str]]:
    """The environment a container gets: ConfigMaps, literal values, Secrets (decoded when the
    overlay generates them, a placeholder otherwise), $(VAR) expanded; plus the helper names."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= _find(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
    used: set[str] = set()
    for var in container.get("env", []):
        if "value" in var:
            value = var["value"]
            for name in re.findall(r"\$\((\w+)\)", value):
                used.add(name)
                value = value.replace(f"$({name})", env[name])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            secrets = [
                d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]
            ]
            value = (
                base64.b64decode(secrets[0]["data"][ref["key"]]).decode()
                if secrets
                else f"external-{ref['key']}"
            )
        env[var["name"]] = value
    return env, frozenset(used)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", list(EOSTREAM_SERVICES))
def test_k8s_environment_builds_the_service_settings(
    objects: dict[str, list[dict[str, Any]]], overlay: str, service: str
) -> None:
    module_name, _, port, _ = EOSTREAM_SERVICES[service]
    docs = objects[overlay]
    (container,) = _find(docs, "Deployment", service)["spec"]["template"]["spec"]["containers"]
    env, used = _container_env(docs, container)
    settings = helpers.check_service_env(module_name, env, helpers=used)
    assert settings.http_port == port
    assert settings.kafka is not None and settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.s3 is not None and settings.s3.endpoint == "minio:9000"
    if service == "inference":
        first = "CUDAExecutionProvider" if overlay == "gpu" else "CPUExecutionProvider"
        assert settings.providers[0] == first


# ---- GPU, namespace, shared files ------------------------------------------------------------


def _gpus(container: dict[str, Any]) -> str | None:
    limits: dict[str, str] = container.get("resources", {}).get("limits", {})
    return limits.get("nvidia.com/gpu")


def test_only_the_gpu_overlay_gives_inference_a_gpu(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    for name in ("base", "deps", "local"):
        for workload in _workloads(objects[name]):
            assert all(_gpus(c) is None for c in _containers(workload)), name
    gpu = objects["gpu"]
    for workload in _workloads(gpu):
        for container in _containers(workload):
            if workload["metadata"]["name"] == "inference":
                assert _gpus(container) == "1"
                assert container["image"] == "eostream/inference-cuda:dev"
                tolerations = workload["spec"]["template"]["spec"]["tolerations"]
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                    tolerations
                )
            else:
                assert _gpus(container) is None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_the_namespace(
    objects: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for doc in objects[overlay]:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_container_has_a_secret_on_its_command_line(
    objects: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """A command line is world-readable (ps, /proc/PID/cmdline): a $(VAR) from a Secret may be
    expanded into another variable, never into command or args. MLflow reads its tracking store,
    which holds the PostgreSQL password, from MLFLOW_BACKEND_STORE_URI."""
    for workload in _workloads(objects[overlay]):
        for container in _containers(workload):
            secret: set[str] = set()
            for var in container.get("env", []):
                used = set(re.findall(r"\$\((\w+)\)", var.get("value", "")))
                if "secretKeyRef" in var.get("valueFrom", {}) or used & secret:
                    secret.add(var["name"])
            for word in [*container.get("command", []), *container.get("args", [])]:
                leaked = set(re.findall(r"\$\((\w+)\)", word)) & secret
                assert not leaked, f"{container['name']}: {word!r} holds {leaked}"
    (mlflow,) = _find(objects[overlay], "Deployment", "mlflow")["spec"]["template"]["spec"][
        "containers"
    ]
    assert not any("backend-store-uri" in word for word in mlflow["command"])
    env = {var["name"]: var.get("value") for var in mlflow["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        "postgresql://eostream:$(EOSTREAM_PG_PASSWORD)@postgres:5432/mlflow"
    )


def test_postgres_init_script_is_the_compose_one() -> None:
    k8s = (K8S / "deps" / "postgres-init.sql").read_text()
    compose = (ROOT / "deploy" / "docker" / "postgres" / "20-eostream-databases.sql").read_text()
    assert k8s == compose, "deploy/k8s/deps/postgres-init.sql differs from the compose init script"


# ---- KEDA: inference scaled on its Kafka lag ---------------------------------------------------
# kubernetes-validate knows only Kubernetes' own kinds (it skips a ScaledObject with a warning), so
# the ScaledObject is checked against the openAPIV3Schema of KEDA's CRD, read as the API server
# reads a structural schema: unknown fields are errors (kubectl's default strict field validation)
# and int32 fields are bounded.

KEDA_CRD = ROOT / "tests" / "data" / "keda" / "scaledobjects.keda.sh-2.12.0.yaml"
KEDA_COMPONENT = "components/keda-inference"
INT32 = {"minimum": -(2**31), "maximum": 2**31 - 1}


def _structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's OpenAPI v3 schema as JSON Schema that rejects what the API server rejects."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if out.get("format") == "int32":
        out |= INT32
    if "properties" in out:
        out["properties"] = {k: _structural(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"])
    if "items" in out:
        out["items"] = _structural(out["items"])
    return out


@pytest.fixture(scope="module")
def keda_crd() -> dict[str, Any]:
    (crd,) = [d for d in yaml.safe_load_all(KEDA_CRD.read_text()) if d]
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "scaledobjects.keda.sh"
    assert crd["metadata"]["labels"]["app.kubernetes.io/version"] in KEDA_CRD.name
    found: dict[str, Any] = crd
    return found


def _scaledobject_errors(crd: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    group, names = crd["spec"]["group"], crd["spec"]["names"]
    served = {v["name"]: v for v in crd["spec"]["versions"] if v["served"]}
    api_group, _, version = doc.get("apiVersion", "").partition("/")
    if api_group != group or version not in served or doc.get("kind") != names["kind"]:
        return [f"not a {group} {names['kind']}: {doc.get('apiVersion')} {doc.get('kind')}"]
    schema = _structural(served[version]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft7Validator(schema)
    return sorted(
        f"{'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(doc)
    )


def _build_with_keda(
    tools: dict[str, str], where: Path, overlay: str, namespace: str | None = None
) -> str:
    """The overlay with the KEDA component added to its kustomization, as the README says (and
    its `namespace` changed, as an operator's copy might)."""
    tree = where / "k8s"
    shutil.copytree(K8S, tree)
    kustomization = tree / "overlays" / overlay / "kustomization.yaml"
    config = yaml.safe_load(kustomization.read_text())
    config.setdefault("components", []).append(
        os.path.relpath(tree / KEDA_COMPONENT, kustomization.parent)
    )
    if namespace is not None:
        config["namespace"] = namespace
        for path in kustomization.parent.glob("*.yaml"):
            path.write_text(
                path.read_text().replace(f"name: {NAMESPACE}\n", f"name: {namespace}\n")
            )
    kustomization.write_text(yaml.safe_dump(config, sort_keys=False))
    return _build(tools, kustomization.parent)


@pytest.fixture(scope="module")
def keda_rendered(
    tools: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Each overlay with the KEDA component added to its kustomization, as the README says."""
    return {
        overlay: _build_with_keda(tools, tmp_path_factory.mktemp(f"k8s-{overlay}"), overlay)
        for overlay in OVERLAYS
    }


@pytest.fixture(scope="module")
def keda_objects(keda_rendered: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {
        name: [d for d in yaml.safe_load_all(text) if d] for name, text in keda_rendered.items()
    }


def _scaledobject(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == "ScaledObject"]
    assert len(found) == 1, f"expected one ScaledObject, found {len(found)}"
    return found[0]


def test_plain_overlays_need_no_keda(objects: dict[str, list[dict[str, Any]]]) -> None:
    """Without the component an overlay applies to a cluster that has no KEDA, and no other
    autoscaler (HPA) competes for inference's replicas."""
    for name, docs in objects.items():
        kinds = {d["kind"] for d in docs}
        assert "ScaledObject" not in kinds, name
        assert "HorizontalPodAutoscaler" not in kinds, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scaledobject_is_valid_for_keda_and_the_rest_for_kubernetes(
    tools: dict[str, str],
    keda_rendered: dict[str, str],
    keda_objects: dict[str, list[dict[str, Any]]],
    keda_crd: dict[str, Any],
    overlay: str,
    tmp_path: Path,
) -> None:
    scaled = _scaledobject(keda_objects[overlay])
    assert _scaledobject_errors(keda_crd, scaled) == []
    assert keda_crd["spec"]["scope"] == "Namespaced"
    assert scaled["metadata"]["namespace"] == NAMESPACE
    manifest = tmp_path / f"{overlay}-keda.yaml"
    manifest.write_text(keda_rendered[overlay])
    done = subprocess.run(
        [
            tools["KUBERNETES_VALIDATE"],
            "--strict",
            "-k",
            tools["KUBERNETES_SCHEMA_VERSION"],
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, f"overlays/{overlay} + KEDA is not valid:\n{report}"
    # the Kubernetes validator skipped the ScaledObject: the CRD check above is the one that counts
    assert "Couldn't find schema for kind ScaledObject" in report


def _without_scale_target(so: dict[str, Any]) -> None:
    del so["spec"]["scaleTargetRef"]


def _unnamed_scale_target(so: dict[str, Any]) -> None:
    del so["spec"]["scaleTargetRef"]["name"]


def _misspelt_field(so: dict[str, Any]) -> None:
    so["spec"]["maxReplicas"] = so["spec"].pop("maxReplicaCount")


def _unquoted_trigger_value(so: dict[str, Any]) -> None:
    so["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 10


def _trigger_without_type(so: dict[str, Any]) -> None:
    del so["spec"]["triggers"][0]["type"]


def _replicas_past_int32(so: dict[str, Any]) -> None:
    so["spec"]["maxReplicaCount"] = 2**31


def _wrong_api_version(so: dict[str, Any]) -> None:
    so["apiVersion"] = "keda.k8s.io/v1alpha1"  # KEDA 1.x


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (_without_scale_target, "spec: 'scaleTargetRef' is a required property"),
        (_unnamed_scale_target, "spec.scaleTargetRef: 'name' is a required property"),
        (_misspelt_field, "('maxReplicas' was unexpected)"),
        (_unquoted_trigger_value, "spec.triggers.0.metadata.lagThreshold: 10 is not of type"),
        (_trigger_without_type, "spec.triggers.0: 'type' is a required property"),
        (_replicas_past_int32, "spec.maxReplicaCount: 2147483648 is greater than the maximum"),
        (_wrong_api_version, "not a keda.sh ScaledObject: keda.k8s.io/v1alpha1"),
    ],
    ids=lambda v: v.__name__.strip("_").replace("_", "-") if callable(v) else "error",
)
def test_keda_schema_check_rejects_a_broken_scaledobject(
    keda_objects: dict[str, list[dict[str, Any]]],
    keda_crd: dict[str, Any],
    break_it: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    """The check above can fail: each of these mistakes is an error KEDA's CRD schema reports."""
    broken = copy.deepcopy(_scaledobject(keda_objects["local"]))
    break_it(broken)
    errors = _scaledobject_errors(keda_crd, broken)
    assert any(expected in error for error in errors), errors


def _settings(docs: list[dict[str, Any]], service: str) -> Any:
    module_name, _, _, _ = EOSTREAM_SERVICES[service]
    (container,) = _find(docs, "Deployment", service)["spec"]["template"]["spec"]["containers"]
    env, used = _container_env(docs, container)
    return helpers.check_service_env(module_name, env, helpers=used)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_inference_on_the_lag_of_its_scenes_group(
    keda_objects: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = keda_objects[overlay]
    scaled = _scaledobject(docs)
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == (
        "apps/v1",
        "Deployment",
    )
    deployment = _find(docs, "Deployment", target["name"])
    assert deployment["metadata"]["name"] == "inference"
    assert deployment["metadata"]["namespace"] == scaled["metadata"]["namespace"]
    # KEDA's HPA owns the replica count: an applied `replicas` would reset it on every deploy
    assert "replicas" not in deployment["spec"]

    inference = _settings(docs, "inference")
    kafka = inference.kafka
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    # KEDA's operator runs in its own namespace (usually `keda`), where the services' short name
    # does not resolve: the same broker, by its namespace-qualified Service name
    assert meta["bootstrapServers"] == _qualified(kafka.bootstrap_servers, scaled)
    # the broker's names, as KafkaBus.physical() makes them from the settings
    assert meta["consumerGroup"] == kafka.topic_prefix + inference.scenes_group
    assert meta["topic"] == kafka.topic_prefix + topics.SCENES_DISCOVERED
    assert int(meta["lagThreshold"]) > 0
    assert meta.get("offsetResetPolicy", "latest") == kafka.new_group_offset
    assert "sasl" not in meta and "tls" not in meta  # the in-cluster broker is PLAINTEXT

    # never to zero (the API and model swaps need a replica); never more replicas than the
    # scenes topic has partitions, whichever service creates it (KafkaSettings.partitions)
    partitions = min(_settings(docs, s).kafka.partitions for s in EOSTREAM_SERVICES)
    broker = _find(docs, "StatefulSet", "kafka")["spec"]["template"]["spec"]["containers"][0]
    broker_env = {v["name"]: v.get("value") for v in broker.get("env", [])}
    partitions = min(partitions, int(broker_env.get("KAFKA_NUM_PARTITIONS", partitions)))
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    assert meta.get("allowIdleConsumers", "false") == "false"


def _qualified(bootstrap: str, where: dict[str, Any]) -> str:
    """``host:port`` as a client in any namespace reaches it: the Service in ``where``'s one."""
    host, port = bootstrap.rsplit(":", 1)
    return f"{host}.{where['metadata']['namespace']}.svc.cluster.local:{port}"


def _broker_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The Kafka broker's environment as its pod gets it (downward API, $(VAR) expanded)."""
    broker = _find(docs, "StatefulSet", "kafka")
    (container,) = broker["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], var["value"])
        else:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, var
            env[var["name"]] = broker["metadata"]["namespace"]
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_advertises_a_name_other_namespaces_resolve(
    objects: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Clients bootstrap from the address they are given, then connect to the one the broker
    advertises: it must resolve in KEDA's namespace as well as in the services' one."""
    docs = objects[overlay]
    bootstrap = _settings(docs, "inference").kafka.bootstrap_servers
    service = _find(docs, "Service", bootstrap.rsplit(":", 1)[0])
    assert int(bootstrap.rsplit(":", 1)[1]) in {p["port"] for p in service["spec"]["ports"]}
    advertised = _broker_env(docs)["KAFKA_ADVERTISED_LISTENERS"]
    assert advertised == f"PLAINTEXT://{_qualified(bootstrap, service)}"


def test_keda_and_the_broker_follow_an_overlays_namespace(
    tools: dict[str, str], tmp_path: Path
) -> None:
    """An overlay that deploys to another namespace needs no other edit: the trigger and the
    advertised listener name the broker in that namespace."""
    docs = [
        d for d in yaml.safe_load_all(_build_with_keda(tools, tmp_path, "local", "eo-test")) if d
    ]
    scaled = _scaledobject(docs)
    assert scaled["metadata"]["namespace"] == "eo-test"
    expected = "kafka.eo-test.svc.cluster.local:9092"
    assert scaled["spec"]["triggers"][0]["metadata"]["bootstrapServers"] == expected
    assert _broker_env(docs)["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{expected}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_publishes_a_secret(
    objects: dict[str, list[dict[str, Any]]], rendered: dict[str, str], overlay: str
) -> None:
    """Secrets come from the cluster (created out of band), never from a committed value."""
    assert not [d for d in objects[overlay] if d["kind"] == "Secret"]
    for value in PUBLISHED - {"eostream"}:  # "eostream" is also every name of the deployment
        assert value not in rendered[overlay], f"overlays/{overlay} publishes {value!r}"
