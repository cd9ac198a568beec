"""docker-compose.yml and the service Dockerfiles, checked offline (no Docker engine needed).

- Debian's docker-compose 1.29 validates the file (alone and with the GPU override).
- Every long-running container has a healthcheck; one-shot jobs are marked and waited for.
- The environment each eostream container gets is read by that service's real settings class:
  every variable names a field (a typo would be ignored silently, the classes use
  ``extra="ignore"``) and the whole set builds valid settings.
- The four services are built from one Dockerfile (deploy/docker/Dockerfile), which differs per
  service only by its build arguments; each image starts its service alone (``python -m``, no
  runner), and each one's dependency layer resolves from uv.lock with only the files it copies.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices, BaseModel
from pydantic_settings import BaseSettings

from eostream.inference.api import viewer as viewer_api
from eostream.shared.errors import ConfigError
from eostream.shared.settings import ServiceSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "deploy" / "docker" / "compose.gpu.yml"

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
CUDA_DOCKERFILE = ROOT / "services" / "inference" / "Dockerfile.cuda"

# compose service -> (settings module, env prefix, port, command after `python -m`)
EOSTREAM_SERVICES: dict[str, tuple[str, str, int, tuple[str, ...]]] = {
    "ingest": ("eostream.ingest.settings", "INGEST_", 8082, ("eostream.ingest", "run")),
    "trainer": ("eostream.trainer.settings", "TRAINER_", 8083, ("eostream.trainer", "run")),
    "registry-bridge": (
        "eostream.registry_bridge.settings",
        "BRIDGE_",
        8081,
        ("eostream.registry_bridge", "run"),
    ),
    "inference": (
        "eostream.inference.settings",
        "INFERENCE_",
        8080,
        ("eostream.inference", "serve"),
    ),
}
ONESHOT_LABEL = "io.eostream.oneshot"
#: The secrets docker-compose.yml requires (none has a default), as an operator's .env sets them.
SECRETS = {
    "EOSTREAM_S3_SECRET_KEY": "s3-secret-of-the-test-0001",
    "EOSTREAM_PG_PASSWORD": "pg-password-of-the-test-0001",
    "INFERENCE_API_KEY": "inference-key-of-the-test-0001",
    "BRIDGE_WEBHOOK_SECRET": "webhook-secret-of-the-test-0001",
    "GRAFANA_ADMIN_PASSWORD": "grafana-password-of-the-test-0001",
    "EOSTREAM_MLFLOW_ADMIN_PASSWORD": "mlflow-admin-password-of-the-test-0001",
    "EOSTREAM_MLFLOW_TRAINER_PASSWORD": "mlflow-trainer-password-of-the-test-0001",
    "EOSTREAM_MLFLOW_BRIDGE_PASSWORD": "mlflow-bridge-password-of-the-test-0001",
    "EOSTREAM_MLFLOW_SECRET_KEY": "mlflow-secret-key-of-the-test-0001",
    "EOSTREAM_MLFLOW_WEBHOOK_KEY": "bWxmbG93LXdlYmhvb2sta2V5LW9mLXRoZS10ZXN0MDE=",
}
ENV_PREFIXES = ("INGEST_", "TRAINER_", "BRIDGE_", "INFERENCE_", "EOSTREAM_")


# ---- helpers shared with tests/test_k8s.py ----------------------------------------------------


def settings_class(module_name: str) -> type[ServiceSettings]:
    """The one ServiceSettings subclass a service's settings module defines."""
    module = importlib.import_module(module_name)
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, ServiceSettings)
        and obj is not ServiceSettings
        and obj.__module__ == module_name
    ]
    assert len(found) == 1, f"{module_name} should define one ServiceSettings class, has {found}"
    return found[0]


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def accepted_env_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variable names a settings class reads (upper case)."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "__")
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c.upper() for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
        for model in _models_in(field.annotation):
            names |= {f"{prefix}{name}{delimiter}{sub}".upper() for sub in model.model_fields}
    return names


@contextmanager
def only_env(env: Mapping[str, str], prefixes: tuple[str, ...]) -> Iterator[None]:
    """os.environ with every variable of these prefixes replaced by ``env``."""
    saved = dict(os.environ)
    try:
        for key in list(os.environ):
            if key.upper().startswith(prefixes):
                del os.environ[key]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def check_service_env(
    module_name: str, env: Mapping[str, str], *, helpers: frozenset[str] = frozenset()
) -> ServiceSettings:
    """Every variable is read by the service's settings, and together they build valid settings.

    ``helpers`` are variables that exist only to be expanded into others (Kubernetes $(VAR)).
    """
    cls = settings_class(module_name)
    accepted = accepted_env_names(cls)
    # variables in eostream's namespaces must be read; others (NVIDIA_*, OMP_*) are the runtime's
    unknown = sorted(
        k
        for k in env
        if k.upper().startswith(ENV_PREFIXES) and k.upper() not in accepted and k not in helpers
    )
    assert not unknown, (
        f"{cls.__name__} reads none of {unknown}: the service would ignore them silently. "
        f"Names it reads: {sorted(accepted)}"
    )
    with only_env({k: v for k, v in env.items() if k not in helpers}, ENV_PREFIXES):
        return load_settings(cls)


# ---- fixtures --------------------------------------------------------------------------------


def docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed; it validates docker-compose.yml offline. "
            "Install it with: apt-get install -y docker-compose"
        )
    return exe


def compose_config(*files: Path) -> dict[str, Any]:
    """The configuration docker-compose resolves (anchors merged, ${VARS} interpolated)."""
    args = [docker_compose()]
    for f in files:
        args += ["-f", str(f)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EOSTREAM_", "COMPOSE_"))}
    env.update(SECRETS)
    done = subprocess.run(
        [*args, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config(COMPOSE)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


# ---- compose ---------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, GPU_OVERRIDE)], ids=["cpu", "gpu"])
def test_docker_compose_validates(files: tuple[Path, ...]) -> None:
    args = [docker_compose()]
    for f in files:
        args += ["-f", str(f)]
    done = subprocess.run(
        [*args, "config", "-q"],
        cwd=ROOT,
        env={**os.environ, **SECRETS},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (
        f"docker-compose rejected {[f.name for f in files]}:\n{done.stderr}"
    )


def test_compose_publishes_no_default_secret(tmp_path: Path) -> None:
    """Without the secrets compose refuses to start and names one; .env.example lists them all;
    and the services themselves refuse the defaults earlier versions of this file published."""
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    done = subprocess.run(
        [docker_compose(), "-f", str(COMPOSE), "config", "-q"],
        cwd=tmp_path,  # no .env picked up
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "see .env.example" in done.stderr, done.stderr
    example = (ROOT / ".env.example").read_text()
    for name in SECRETS:
        assert f"\n{name}=\n" in example, f".env.example should list {name} (empty)"
    old = compose_config(COMPOSE)["services"]["inference"]["environment"]
    old = {k: str(v) for k, v in old.items()}
    old["INFERENCE_API_KEY"] = "eostream-local-api-key"  # the former default
    with pytest.raises(ConfigError, match="INFERENCE_API_KEY holds a published default"):
        check_service_env("eostream.inference.settings", old)


def test_make_images_needs_no_secrets(tmp_path: Path) -> None:
    """A fresh clone has no .env: compose resolves every ${VAR:?...} even to build, so `make
    images` must hand it the file in a form it accepts (docker-compose config stands in for the
    build, which needs a Docker engine), and build the four services and MLflow."""
    calls = tmp_path / "calls"
    compose = tmp_path / "compose"
    compose.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        f"exec {docker_compose()} -f {COMPOSE} --env-file {tmp_path / 'no.env'} config -q\n"
    )
    compose.chmod(0o755)
    (tmp_path / "no.env").write_text("")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SECRETS and not k.startswith(("EOSTREAM_", "COMPOSE_", "MAKE"))
    }
    done = subprocess.run(
        ["make", "--no-print-directory", "images", f"COMPOSE={compose}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (call,) = calls.read_text().splitlines()
    command, *services = call.split()
    assert command == "build"
    assert set(services) == {*EOSTREAM_SERVICES, "mlflow"}


def test_no_container_has_a_secret_on_its_command_line(config: dict[str, Any]) -> None:
    """A command line is world-readable (ps, /proc/PID/cmdline): secrets go in the environment.
    MLflow reads its tracking store, which holds the PostgreSQL password, from
    MLFLOW_BACKEND_STORE_URI."""
    for name, service in config["services"].items():
        words = [*service.get("command", []), *service.get("entrypoint", [])]
        for secret, value in SECRETS.items():
            assert not any(value in str(w) for w in words), f"{name}: {secret} in its command"
    mlflow = config["services"]["mlflow"]
    assert not any("backend-store-uri" in w for w in mlflow["command"])
    pg = SECRETS["EOSTREAM_PG_PASSWORD"]
    uri = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert uri == f"postgresql://eostream:{pg}@postgres:5432/mlflow"
    # the MLflow of the image (deploy/docker/mlflow pins the lock's version) reads that variable
    from mlflow.cli import server

    (option,) = [p for p in server.params if p.name == "backend_store_uri"]
    assert option.envvar == "MLFLOW_BACKEND_STORE_URI"


def build_args(service: str) -> dict[str, str]:
    """The build arguments that make deploy/docker/Dockerfile the image of ``service``."""
    _, prefix, port, (package, command) = EOSTREAM_SERVICES[service]
    return {
        "SERVICE": service,
        "PACKAGE": package,
        "ENV_PREFIX": prefix.rstrip("_"),
        "PORT": str(port),
        "COMMAND": command,
        "GIT_COMMIT": "unknown",  # `make images` passes the commit (EOSTREAM_GIT_COMMIT)
    }


def test_the_four_eostream_services_are_built_from_one_dockerfile(
    config: dict[str, Any],
) -> None:
    services = config["services"]
    for name, (_, _, _, command) in EOSTREAM_SERVICES.items():
        assert name in services, f"docker-compose.yml has no service {name!r}"
        build = services[name]["build"]
        assert Path(build["context"]).resolve() == ROOT, f"{name}: build context must be the repo"
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
        assert {k: str(v) for k, v in build["args"].items()} == build_args(name)
        # started alone, as the image's CMD would: no `eostream` runner in the image
        assert services[name]["command"] == ["python", "-m", *command]


def test_every_long_running_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    missing = []
    for name, service in config["services"].items():
        if service.get("labels", {}).get(ONESHOT_LABEL) == "true":
            assert service.get("restart") == "no", f"one-shot {name} must not restart"
            continue
        check = service.get("healthcheck", {})
        if check.get("disable") or not check.get("test"):
            missing.append(name)
    assert not missing, f"services without a healthcheck: {missing}"


def test_dependencies_wait_for_health_or_completion(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            oneshot = services[dep].get("labels", {}).get(ONESHOT_LABEL) == "true"
            expected = "service_completed_successfully" if oneshot else "service_healthy"
            assert spec.get("condition") == expected, f"{name} -> {dep}: use {expected}"


def test_eostream_containers_check_their_own_ops_port(config: dict[str, Any]) -> None:
    for name, (_, prefix, port, _) in EOSTREAM_SERVICES.items():
        service = config["services"][name]
        env = service["environment"]
        assert env[f"{prefix}HTTP_PORT"] == str(port)
        assert env[f"{prefix}HTTP_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container
        # inference is not ready until a model is live (a fresh system has none): its container
        # is healthy when it answers, or `docker compose up --wait` would fail
        path = "/livez" if name == "inference" else "/readyz"
        assert service["healthcheck"]["test"][-2:] == [prefix.rstrip("_"), path]
        # docker-compose 1.29 prints ports as "HOST_IP:HOST_PORT:TARGET/PROTO"
        published = {int(p.rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}
        assert port in published, f"{name}: ops port {port} not published"


def test_volumes_are_named_or_existing_files(config: dict[str, Any], raw: dict[str, Any]) -> None:
    declared = set(raw.get("volumes", {}))
    for name, service in config["services"].items():
        # docker-compose 1.29 prints volumes as "SOURCE:TARGET:MODE", bind sources absolute
        for volume in service.get("volumes", []):
            source_text = volume.split(":")[0]
            if not source_text.startswith("/"):
                assert source_text in declared, f"{name}: undeclared volume {volume}"
            else:
                source = Path(source_text)
                # files this deployment owns must exist; the Prometheus and Grafana
                # configuration and the data folder come from elsewhere
                if source.is_relative_to(ROOT / "deploy" / "docker"):
                    assert source.exists(), f"{name}: bind source {source} does not exist"


@pytest.mark.parametrize("service", list(EOSTREAM_SERVICES))
def test_compose_environment_builds_the_service_settings(
    config: dict[str, Any], service: str
) -> None:
    module_name, _, port, _ = EOSTREAM_SERVICES[service]
    env = {k: str(v) for k, v in config["services"][service]["environment"].items()}
    settings = check_service_env(module_name, env)
    assert settings.http_port == port
    assert settings.bus == "kafka"
    assert settings.kafka is not None
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.store == "s3"
    assert settings.s3 is not None
    assert settings.s3.endpoint == "minio:9000"


def test_gpu_override_runs_the_cuda_image_on_a_gpu() -> None:
    inference = compose_config(COMPOSE, GPU_OVERRIDE)["services"]["inference"]
    assert inference["build"]["dockerfile"] == "services/inference/Dockerfile.cuda"
    devices = inference["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = {k: str(v) for k, v in inference["environment"].items()}
    settings = check_service_env("eostream.inference.settings", env)
    assert settings.providers[0] == "CUDAExecutionProvider"  # type: ignore[attr-defined]


# ---- Dockerfiles -----------------------------------------------------------------------------


def instructions(dockerfile: Path, args: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped; with ``args``
    (build arguments), every ``${ARG}``/``$ARG`` of a declared ARG replaced as Docker would."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    if args is not None:
        values = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
        values.update(args)
        declared = set(re.findall(r"^ARG (\w+)", text, flags=re.M))
        missing = sorted(declared - values.keys())
        assert not missing, f"{dockerfile}: no value for build argument(s) {missing}"
        text = re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda m: values.get(m[1] or m[2], m[0]) if (m[1] or m[2]) in declared else m[0],
            text,
        )
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("service", list(EOSTREAM_SERVICES))
def test_dockerfile_shape(service: str) -> None:
    _, prefix, port, (package, command) = EOSTREAM_SERVICES[service]
    steps = instructions(DOCKERFILE, build_args(service))
    args = {word: [a for w, a in steps if w == word] for word, _ in steps}
    assert any("python:3.11-slim" in a for a in args["ARG"]), "base must be python:3.11-slim"
    runs = " ".join(args["RUN"])
    assert "pip install uv==0.9.30" in runs
    assert f"uv sync --frozen --no-dev --no-install-workspace --package eostream-{service}" in runs
    assert f"--package eostream-{service}" in runs
    assert f"-m {package} --help" in runs, "the build checks that the service starts alone"
    assert args["USER"][-1].split(":")[0] not in ("root", "0"), "must run as a non-root user"
    env = " ".join(args["ENV"])
    assert f"{prefix}HTTP_HOST=0.0.0.0" in env and f"{prefix}HTTP_PORT={port}" in env
    assert f"EOSTREAM_ENV_PREFIX={prefix.rstrip('_')}" in env  # what the healthcheck reads
    assert f"EOSTREAM_PACKAGE={package}" in env and f"EOSTREAM_COMMAND={command}" in env
    assert args["HEALTHCHECK"] and "healthcheck.py" in args["HEALTHCHECK"][-1]
    assert str(port) in args["EXPOSE"][-1]
    cmd = yaml.safe_load(args["CMD"][-1])
    assert cmd[:2] == ["/bin/sh", "-c"] and cmd[2].startswith("exec python -m ")
    assert "eostream" not in [w for a in args["CMD"] for w in yaml.safe_load(a)], "no runner"
    copies = " ".join(args["COPY"])
    assert "runner/pyproject.toml" in copies and "runner/ " not in copies, "runner not in image"


def _stages(steps: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """A Dockerfile's instructions by stage: named ones by name, the last (runtime) as ""."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in steps:
        if word == "FROM":
            current = []
            parts = rest.split()
            stages[parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else ""] = current
        else:
            current.append((word, rest))
    return stages


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, CUDA_DOCKERFILE], ids=["cpu", "cuda"])
def test_both_inference_images_serve_the_map_viewer(dockerfile: Path) -> None:
    """The viewer (page + MapLibre from the npm lock) lands where INFERENCE_VIEWER_DIR points,
    in the CPU image and the GPU one alike; without it inference serves no map page."""
    build = build_args("inference") if dockerfile == DOCKERFILE else None
    stages = _stages(instructions(dockerfile, build))
    viewer = stages["viewer"]
    copied = " ".join(rest for word, rest in viewer if word == "COPY")
    assert "services/inference/viewer/package-lock.json" in copied
    assert "services/inference/viewer/static/" in copied
    assert any(word == "RUN" and rest.startswith("npm ci") for word, rest in viewer)
    runtime = stages[""]
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    found = re.search(r"INFERENCE_VIEWER_DIR=(\S+)", env)
    assert found, f"{dockerfile.name}: no INFERENCE_VIEWER_DIR"
    folder = found[1]
    copies = {
        tuple(rest.split()[1:])
        for word, rest in runtime
        if word == "COPY" and rest.startswith("--from=viewer")
    }
    # where eostream.inference.api.viewer looks for the page and MapLibre under that folder
    assert ("/viewer/static", f"{folder}/{Path(viewer_api.PAGE).parent}") in copies
    assert (f"/viewer/{viewer_api.MAPLIBRE}", f"{folder}/{viewer_api.MAPLIBRE}") in copies


def test_images_carry_the_commit_they_were_built_from() -> None:
    """No .git in an image: the build argument GIT_COMMIT (``make images`` passes HEAD through
    EOSTREAM_GIT_COMMIT) becomes EOSTREAM_GIT_COMMIT, which MLflow runs record
    (eostream.shared.provenance)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EOSTREAM_", "COMPOSE_"))}
    done = subprocess.run(
        [docker_compose(), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env={**env, **SECRETS, "EOSTREAM_GIT_COMMIT": commit},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    for name in EOSTREAM_SERVICES:
        assert services[name]["build"]["args"]["GIT_COMMIT"] == commit, name
        steps = instructions(DOCKERFILE, {**build_args(name), "GIT_COMMIT": commit})
        assert f"EOSTREAM_GIT_COMMIT={commit}" in " ".join(a for w, a in steps if w == "ENV")
    makefile = (ROOT / "Makefile").read_text()
    assert 'EOSTREAM_GIT_COMMIT="$$(git rev-parse HEAD)"' in makefile


def test_the_healthcheck_reads_the_image_prefix(tmp_path: Path) -> None:
    """The image's HEALTHCHECK passes only the path: the prefix comes from EOSTREAM_ENV_PREFIX."""
    script = ROOT / "deploy" / "docker" / "healthcheck.py"
    env = {"PATH": os.environ.get("PATH", ""), "EOSTREAM_ENV_PREFIX": "INGEST"}
    done = subprocess.run(
        [sys.executable, str(script), "/livez"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "INGEST_HTTP_PORT is not set" in done.stderr
    done = subprocess.run(
        [sys.executable, str(script), "/livez"], env={}, capture_output=True, text=True
    )
    assert done.returncode == 2 and "usage" in done.stderr


def _copy_sources(steps: list[tuple[str, str]]) -> list[str]:
    sources = []
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            sources += rest.split()[:-1]
    return sources


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.rstrip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("!"):
            continue
        pattern = pattern.rstrip("/")
        bare = pattern.removeprefix("**/")
        for candidate in prefixes:
            if fnmatch.fnmatchcase(candidate, pattern) or (
                pattern != bare and fnmatch.fnmatchcase(candidate.split("/")[-1], bare)
            ):
                return True
    return False


def test_dockerignore_keeps_what_the_dockerfiles_copy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must_go in (".venv", "services/ingest/.venv", "shared/tests", ".git", "data"):
        assert _ignored(must_go, patterns), f".dockerignore should exclude {must_go}"
    files = [(DOCKERFILE, build_args(s)) for s in EOSTREAM_SERVICES]
    files += [(CUDA_DOCKERFILE, {})]
    for dockerfile, build in files:
        for source in _copy_sources(instructions(dockerfile, build)):
            assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}: no such path"
            assert not _ignored(source, patterns), f"{dockerfile}: COPY {source} is dockerignored"


@pytest.mark.parametrize("service", list(EOSTREAM_SERVICES))
def test_dockerfile_build_stage_resolves_from_the_lock(service: str, tmp_path: Path) -> None:
    """Replay the build stage's COPY steps into an empty context and run each `uv sync` in it
    (--dry-run): each layer must have exactly the files uv needs, and the lock must fit."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is needed (https://docs.astral.sh/uv/)"
    steps = instructions(DOCKERFILE, build_args(service))
    context = tmp_path / "src"
    context.mkdir()
    env = dict(
        os.environ, UV_PROJECT_ENVIRONMENT=str(tmp_path / "venv"), UV_PYTHON_DOWNLOADS="never"
    )
    env.pop("VIRTUAL_ENV", None)
    skip = shutil.ignore_patterns("__pycache__", "tests", ".venv", "*.pyc")
    syncs = froms = 0
    for word, rest in steps:
        if word == "FROM":
            froms += 1
            if froms == 2:  # the runtime stage: the build stage is done
                break
        if word == "COPY" and not rest.startswith("--from"):
            *sources, dest = rest.split()
            for source in sources:
                target = context / (dest if dest not in ("./", ".") else Path(source).name)
                target.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=skip, dirs_exist_ok=True)
                else:
                    shutil.copy2(ROOT / source, target)
        if word == "RUN" and rest.startswith("uv sync"):
            command = rest.split("&&")[0].split()
            done = subprocess.run(
                [*command, "--dry-run"],
                cwd=context,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, f"{service}: `{rest}` fails on its layer:\n{done.stderr}"
            syncs += 1
    assert syncs == 2, f"{service}: expected two `uv sync` layers, found {syncs}"


def test_cuda_variant_swaps_exactly_the_onnxruntime_pin(tmp_path: Path) -> None:
    """Dockerfile.cuda rewrites the lock's `onnxruntime==X` line: it must be there, once."""
    text = CUDA_DOCKERFILE.read_text()
    assert "sed -i -E 's/^onnxruntime==/onnxruntime-gpu==/'" in text
    out = tmp_path / "requirements.txt"
    done = subprocess.run(
        [
            "uv",
            "export",
            "--frozen",
            "--no-dev",
            "--package",
            "eostream-inference",
            "--no-emit-workspace",
            "--no-hashes",
            "--format",
            "requirements.txt",
            "-o",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    pins = [ln for ln in out.read_text().splitlines() if re.match(r"onnxruntime(-gpu)?==", ln)]
    assert len(pins) == 1 and pins[0].startswith("onnxruntime=="), pins
    assert not any(ln.startswith(("-e ", "./", "eostream")) for ln in out.read_text().splitlines())


def test_env_name_helper_sees_nested_settings() -> None:
    """accepted_env_names sees nested models inside Optional (kafka, s3)."""
    names = accepted_env_names(settings_class("eostream.inference.settings"))
    assert {"INFERENCE_KAFKA__BOOTSTRAP_SERVERS", "INFERENCE_S3__SECRET_KEY"} <= names
    assert "INFERENCE_KAFKA" in names


# ---- Prometheus in compose -------------------------------------------------------------------


def test_compose_prometheus_scrapes_every_service_with_the_shared_rules(
    config: dict[str, Any], tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed; install it with: apt-get install -y prometheus")
    mounts = config["services"]["prometheus"]["volumes"]
    assert f"{ROOT}/deploy/prometheus/rules:/etc/prometheus/rules:ro" in mounts
    source = ROOT / "deploy" / "docker" / "prometheus" / "prometheus.yml"
    assert f"{source}:/etc/prometheus/prometheus.yml:ro" in mounts
    prom = yaml.safe_load(source.read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in prom["scrape_configs"]
    }
    for name, (_, prefix, port, _) in EOSTREAM_SERVICES.items():
        job = "eostream-" + ("bridge" if prefix == "BRIDGE_" else name)
        assert targets.get(job) == [f"{name}:{port}"], f"{job} should scrape {name}:{port}"
    # the config as the container sees it, rules included, checked by Prometheus' own tool
    prom["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "rules" / "*.rules.yml")]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(prom))
    done = subprocess.run(
        [promtool, "check", "config", str(checked)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"SUCCESS: (\d+) rule files found", done.stdout + done.stderr)
    assert found and int(found.group(1)) >= 1, f"no rule files loaded:\n{done.stdout}"
