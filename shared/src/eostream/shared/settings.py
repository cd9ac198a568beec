"""Settings pieces every service composes, and the one way to load them.

Each service has one pydantic-settings class with its own prefix (``INGEST_``, ``TRAINER_``,
``BRIDGE_``, ``INFERENCE_``) and nested pieces from this module, read from the environment as
``INGEST_KAFKA__BOOTSTRAP_SERVERS`` and so on. Settings are frozen, built once at the entrypoint
with :func:`load_settings` and passed down. A missing or invalid setting raises
:class:`~eostream.shared.errors.ConfigError` with one line naming the variable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from eostream.shared.errors import ConfigError


class KafkaSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(min_length=1, description="host:port[,host:port...]")
    client_id: str = "eostream"
    partitions: int = Field(default=4, ge=1, description="for topics created when missing")
    replication_factor: int = Field(default=1, ge=1)
    dead_letter_topic: str = "eostream.deadletter"
    dead_letter_max_value_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="a dead letter keeps an excerpt of a larger value, with its original size",
    )
    max_retries: int = Field(default=3, ge=0, description="retries of a retryable error")
    retry_backoff_seconds: float = Field(default=0.5, gt=0)
    retry_backoff_max_seconds: float = Field(default=10.0, gt=0)
    batch_size: int = Field(default=200, ge=1, description="records fetched per poll")
    request_timeout_ms: int = Field(default=15000, ge=1000)
    publish_retry_seconds: float = Field(
        default=120.0,
        ge=0,
        description="how long a publish retries a broker that is unreachable or electing a "
        "leader before it gives up (the consumer then restarts and the record is redelivered)",
    )
    new_group_offset: Literal["earliest", "latest"] = Field(
        default="earliest", description="where a consumer group with no commits starts"
    )
    topic_prefix: str = Field(
        default="",
        max_length=100,
        pattern=r"^[A-Za-z0-9._-]*$",
        description="namespace for several deployments on one cluster: 'staging.' gives "
        "'staging.eostream.scenes.discovered'; services and events keep the plain names",
    )


class ConsumerSupervision(BaseModel):
    """How a service keeps its consumers alive (see :mod:`eostream.shared.bus.supervisor`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    restart_backoff_seconds: float = Field(default=1.0, gt=0)
    restart_backoff_max_seconds: float = Field(default=60.0, gt=0)
    stall_seconds: float = Field(
        default=300.0,
        gt=0,
        description="a consumer with records waiting and no progress for this long is stalled: "
        "liveness fails so the orchestrator restarts the process",
    )
    crash_loop_restarts: int = Field(
        default=5,
        ge=1,
        description="restarts in a row (each without a record handled) after which liveness fails",
    )


class S3Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str = Field(min_length=1, description="host:port of the S3 API")
    access_key: SecretStr
    secret_key: SecretStr
    secure: bool = False
    region: str | None = None


StoreKind = Literal["s3", "local"]
BusKind = Literal["kafka", "memory"]


class ServiceSettings(BaseSettings):
    """What every eostream service has: a bus, an object store, an HTTP port for operators."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", frozen=True, extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=0, ge=0, le=65535, description="0 = pick a free port")

    bus: BusKind = "kafka"
    kafka: KafkaSettings | None = None
    consumers: ConsumerSupervision = ConsumerSupervision()

    store: StoreKind = "local"
    s3: S3Settings | None = None
    local_store_root: Path = Path(".eostream/objects")
    bucket: str = Field(default="eostream", min_length=3, max_length=63)

    @model_validator(mode="after")
    def _backends_configured(self) -> Self:
        prefix = str(self.model_config.get("env_prefix", ""))
        if self.bus == "kafka" and self.kafka is None:
            raise ValueError(
                f"{prefix}KAFKA__BOOTSTRAP_SERVERS is not set; it is required when "
                f"{prefix}BUS=kafka (set it to host:port of a broker, or {prefix}BUS=memory)"
            )
        if self.store == "s3" and self.s3 is None:
            raise ValueError(
                f"{prefix}S3__ENDPOINT, {prefix}S3__ACCESS_KEY and {prefix}S3__SECRET_KEY are not "
                f"set; they are required when {prefix}STORE=s3"
            )
        return self

    @model_validator(mode="after")
    def _no_published_secrets(self) -> Self:
        """A published default secret only for a server on this machine (issue #20)."""
        from eostream.shared.secrets_policy import refusal

        reason = refusal(self, prefix=str(self.model_config.get("env_prefix", "")))
        if reason is not None:
            raise ValueError(reason)
        return self


S = TypeVar("S", bound=BaseSettings)


def cache_root() -> Path:
    """``${EOSTREAM_CACHE:-~/.cache/eostream}``: this machine's cache, outside any clone (data
    downloads, checkpoints, what is derived from the EuroSAT data)."""
    return Path(os.environ.get("EOSTREAM_CACHE") or "~/.cache/eostream").expanduser()


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment, or raise ConfigError naming the variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(cls, exc)) from None


def _env_aliases(cls: type[BaseSettings], name: str) -> list[str]:
    """The environment variables a field also reads (its ``AliasChoices`` in upper case)."""
    field = cls.model_fields.get(name)
    alias = field.validation_alias if field is not None else None
    choices = alias.choices if isinstance(alias, AliasChoices) else []
    return [c for c in choices if isinstance(c, str) and c.isupper()]


def describe_validation_error(cls: type[BaseSettings], exc: ValidationError) -> str:
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "__")
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"] if not isinstance(part, int)]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not location:
            problems.append(message)
            continue
        variable = prefix + delimiter.join(location).upper()
        if error["type"] == "missing":
            also = [a for a in _env_aliases(cls, location[0]) if a != variable]
            named = f"{variable} (or {', '.join(also)})" if also else variable
            problems.append(f"{named} is not set; it is required")
        else:
            problems.append(f"{variable} is invalid: {message}")
    return "configuration error: " + "; ".join(problems)


def configure_logging(level: str) -> None:
    """Configure stdlib logging once, at the entrypoint: rich on a terminal, plain otherwise;
    the credentials of URLs masked in every line (``redaction.RedactingFormatter``)."""
    import sys

    from eostream.shared.redaction import RedactingFormatter

    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(name)s: %(message)s"
    else:
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(RedactingFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # numexpr (imported by pandas, under mlflow) logs its thread count at INFO on import
    for noisy in ("aiokafka", "kafka", "urllib3", "botocore", "numexpr"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
