"""registry-bridge settings: ``BRIDGE_*`` variables, nested as ``BRIDGE_GATE__MIN_ACCURACY``."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from eostream.shared.holdout import HoldoutSettings
from eostream.shared.settings import ServiceSettings


class GateSettings(BaseModel):
    """Thresholds of the promotion gate (see :mod:`eostream.registry_bridge.policy`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_accuracy: float = Field(default=0.5, ge=0, le=1, description="on the held-out set")
    max_class_drop: float = Field(
        default=0.10, ge=0, le=1, description="largest recall drop of any class vs champion"
    )
    min_improvement: float = Field(
        default=0.0, ge=-1, le=1, description="candidate accuracy must reach champion's + this"
    )


class BridgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    mlflow_tracking_uri: str = Field(
        default="sqlite:///.eostream/mlflow.db",
        description="MLflow URI: http://... (server) or sqlite:///... (embedded)",
    )
    data_dir: Path = Field(
        validation_alias=AliasChoices("data_dir", "BRIDGE_DATA_DIR", "EOSTREAM_DATA_DIR"),
        description="folder holding eurosat_rgb/ and eurosat_ms/ (the held-out data)",
    )
    model_names: tuple[str, ...] = Field(
        default=("eurosat-landcover",), min_length=1, description="registered models to watch"
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC secret of the MLflow webhook; webhooks are refused without"
    )
    webhook_url: str | None = Field(
        default=None,
        description="URL MLflow should call (this service's /webhooks/mlflow); when set with the "
        "secret, the bridge registers the webhook in MLflow at start",
    )
    webhook_tolerance_seconds: int = Field(default=300, ge=1, description="replay window")
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    registration_grace_seconds: float = Field(
        default=120.0, ge=0, description="wait this long for a new version's tags before refusing"
    )
    consumer_group: str = Field(default="registry-bridge", min_length=1)
    auto_promote: bool = Field(default=True, description="challenger -> champion without a person")
    gate: GateSettings = GateSettings()
    holdout: HoldoutSettings = HoldoutSettings()
    models_prefix: str = Field(default="models", min_length=1)
    agreement_samples: int = Field(default=16, ge=1, description="images for ONNX vs torch")
    agreement_atol: float = Field(default=1e-3, gt=0, description="largest |logit difference|")
    gate_experiment: str = Field(default="eostream-registry-bridge-gate", min_length=1)
    torch_threads: int = Field(default=1, ge=1, le=64)
    retry_attempts: int = Field(default=5, ge=1, description="MLflow / object store calls")
    retry_backoff_seconds: float = Field(default=0.5, gt=0)
    retry_backoff_max_seconds: float = Field(default=15.0, gt=0)
