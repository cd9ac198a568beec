"""What a deployment of eostream is made of, described without running anything.

A :class:`Deployment` (its name, home, topic prefix, model name) on a :class:`LocalStack` (the
servers ``deploy/local/stack`` started) runs one :class:`ProcessSpec` per service. Each service
describes its own process through the ``eostream.processes`` entry-point group: a callable
``(stack, deployment, port) -> ProcessSpec`` (its ``local.py``) that knows its own settings'
variable names; :func:`service_env` gives the ones every service shares. Starting and supervising
the processes is the runner's work (``eostream.runner.processes``), not this library's.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from eostream.shared.errors import ConfigError
from eostream.shared.settings import S3Settings

#: The entry-point group through which each service offers its :data:`ProcessFactory`.
ENTRY_POINT_GROUP = "eostream.processes"


#: The variables ``deploy/local/stack env`` prints, by field of :class:`LocalStack`.
STACK_VARIABLES = {
    "kafka_bootstrap": "EOSTREAM_KAFKA_BOOTSTRAP",
    "s3_endpoint": "EOSTREAM_S3_ENDPOINT",
    "s3_access_key": "EOSTREAM_S3_ACCESS_KEY",
    "s3_secret_key": "EOSTREAM_S3_SECRET_KEY",
    "pg_dsn": "EOSTREAM_PG_DSN",
    "mlflow_uri": "EOSTREAM_MLFLOW_URI",
    "stac_api_url": "EOSTREAM_STAC_API_URL",
}


#: The MLflow accounts ``deploy/local/stack env`` exports (basic auth), by service.
MLFLOW_ACCOUNT_VARIABLES = {
    "trainer": ("EOSTREAM_MLFLOW_TRAINER_USERNAME", "EOSTREAM_MLFLOW_TRAINER_PASSWORD"),
    "bridge": ("EOSTREAM_MLFLOW_BRIDGE_USERNAME", "EOSTREAM_MLFLOW_BRIDGE_PASSWORD"),
}


@dataclass(frozen=True)
class MlflowAccount:
    """A service's account on an MLflow server that runs its authentication app."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def from_environ(cls, env: Mapping[str, str], service: str) -> MlflowAccount | None:
        user_var, password_var = MLFLOW_ACCOUNT_VARIABLES[service]
        if env.get(user_var) and env.get(password_var):
            return cls(env[user_var], env[password_var])
        return None

    def client_env(self) -> dict[str, str]:
        """What the MLflow client reads (HTTP basic auth on every request)."""
        return {
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }


@dataclass(frozen=True)
class LocalStack:
    """The servers of the real local stack, as ``deploy/local/stack env`` exports them. The
    MLflow accounts are there when the stack's MLflow runs its authentication app. The S3 secret
    and the DSN (it holds the PostgreSQL password) stay out of its repr, which logs and test
    reports print."""

    kafka_bootstrap: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str = field(repr=False)
    pg_dsn: str = field(repr=False)
    mlflow_uri: str
    stac_api_url: str
    prometheus_url: str | None = None
    prometheus_targets_dir: Path | None = None
    mlflow_trainer: MlflowAccount | None = None
    mlflow_bridge: MlflowAccount | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> LocalStack:
        env = os.environ if environ is None else environ
        missing = [var for var in STACK_VARIABLES.values() if not env.get(var)]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} not set: start the stack with `deploy/local/stack up` and "
                'export its addresses with `eval "$(deploy/local/stack env)"`'
            )
        targets = env.get("EOSTREAM_PROMETHEUS_TARGETS_DIR")
        return cls(
            **{name: env[var] for name, var in STACK_VARIABLES.items()},
            prometheus_url=env.get("EOSTREAM_PROMETHEUS_URL") or None,
            prometheus_targets_dir=Path(targets) if targets else None,
            mlflow_trainer=MlflowAccount.from_environ(env, "trainer"),
            mlflow_bridge=MlflowAccount.from_environ(env, "bridge"),
        )

    def s3_settings(self) -> S3Settings:
        return S3Settings.model_validate(
            {
                "endpoint": self.s3_endpoint,
                "access_key": self.s3_access_key,
                "secret_key": self.s3_secret_key,
            }
        )

    def client_env(self) -> dict[str, str]:
        """What MLflow and S3 clients in every service read (artifacts go to MinIO)."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_S3_ENDPOINT_URL": f"http://{self.s3_endpoint}",
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


@dataclass(frozen=True)
class Deployment:
    """What the processes of one deployment share. Two deployments on one stack stay apart:
    their topics, consumer groups, bucket prefixes and model names do not meet."""

    name: str = "local"
    home: Path = Path(".eostream/local")
    data_dir: Path | None = None
    topic_prefix: str = ""
    model_name: str = "eurosat-landcover"
    bucket: str = "eostream"
    host: str = "127.0.0.1"
    log_level: str = "INFO"

    def secret(self, name: str) -> str:
        """A secret of this deployment, made once and kept in its home (0600)."""
        path = self.home / "secrets" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(24))
        return path.read_text().strip()


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one service: its command line, its environment and its operator port."""

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    port: int
    host: str = "127.0.0.1"
    urls: Mapping[str, str] = field(default_factory=dict)
    #: Prometheus job name; dashboards and alert rules select services by it
    job: str = ""

    def with_env(self, extra: Mapping[str, str]) -> ProcessSpec:
        return replace(self, env={**self.env, **extra})


ProcessFactory = Callable[[LocalStack, Deployment, int], ProcessSpec]


def service_command(package: str, *words: str) -> tuple[str, ...]:
    """``python -m PACKAGE WORDS...`` run by this interpreter (no PATH assumption): how a
    service starts on its own, in a container image as under ``eostream up --stack local``."""
    return (sys.executable, "-m", package, *words)


def service_env(
    prefix: str,
    stack: LocalStack,
    deployment: Deployment,
    port: int,
    *,
    mlflow_account: MlflowAccount | None = None,
) -> dict[str, str]:
    """The settings every service has (bus, store, HTTP), for the variable prefix ``prefix``;
    with ``mlflow_account``, the service's MLflow client logs in as that account."""
    env = {
        f"{prefix}LOG_LEVEL": deployment.log_level,
        f"{prefix}HTTP_HOST": deployment.host,
        f"{prefix}HTTP_PORT": str(port),
        f"{prefix}BUS": "kafka",
        f"{prefix}KAFKA__BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        f"{prefix}KAFKA__TOPIC_PREFIX": deployment.topic_prefix,
        f"{prefix}STORE": "s3",
        f"{prefix}S3__ENDPOINT": stack.s3_endpoint,
        f"{prefix}S3__ACCESS_KEY": stack.s3_access_key,
        f"{prefix}S3__SECRET_KEY": stack.s3_secret_key,
        f"{prefix}BUCKET": deployment.bucket,
        **stack.client_env(),
        **(mlflow_account.client_env() if mlflow_account else {}),
    }
    if deployment.data_dir is not None:
        env["EOSTREAM_DATA_DIR"] = str(deployment.data_dir)
    return env


def mlflow_client_defaults() -> None:
    """Fail fast inside MLflow's own HTTP client (its defaults retry an unreachable server for
    minutes): the bridge does its own backoff, and a command says in one line that MLflow does
    not answer. No progress bars on a command's output for the small artifacts it reads (a
    run's recorded split). Values set in the environment are kept."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
