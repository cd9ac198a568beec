"""registry-bridge settings: ``BRIDGE_*`` variables, nested as ``BRIDGE_GATE__MIN_ACCURACY``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from eostream.inference.settings import DEFAULT_STRIDE, DEFAULT_UNCERTAIN_BELOW
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
    # the map check (see :mod:`eostream.registry_bridge.maps`)
    reference: str | None = Field(
        default=None,
        description="a reference set's labels collection (collection.json, its folder or URL, "
        "as `eostream maps reference build` writes it): each candidate's maps are scored on it "
        "too; unset: no map check (the version's tags say it was skipped)",
    )
    map_metric: Literal["mean_iou", "overall_accuracy"] = Field(
        default="mean_iou",
        description="the compared map figure: mean IoU of the reference classes (water IoU for "
        "Boadella) or overall accuracy; both are recorded",
    )
    map_margin: float = Field(
        default=0.02, ge=0, le=1, description="largest allowed drop of the map figure vs champion"
    )
    map_floor: float | None = Field(
        default=None, ge=0, le=1, description="the map figure every candidate must reach (optional)"
    )
    map_stride: int = Field(
        default=DEFAULT_STRIDE,
        ge=2,
        le=64,
        description="inference window step on the reference scenes; inference's own default, so "
        "the figure is that of the maps served (set both when you change one)",
    )
    map_uncertain_below: float = Field(
        default=DEFAULT_UNCERTAIN_BELOW,
        ge=0,
        le=1,
        description="inference's uncertain threshold while scoring maps (0: every pixel gets its "
        "top class; uncertain pixels count as background); inference's own default, as the stride",
    )

    @field_validator("map_stride")
    @classmethod
    def _centred_stride(cls, stride: int) -> int:
        if (64 - stride) % 2:
            raise ValueError("the stride must be even (windows are centred on their cells)")
        return stride


class Int8Settings(BaseModel):
    """The int8 variant shipped beside the fp32 model (see :mod:`eostream.registry_bridge.
    quantize`): ``BRIDGE_INT8__ENABLED``, ``BRIDGE_INT8__MAX_ACCURACY_LOSS``, ..."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=True, description="quantise patch models to int8 before shipping them"
    )
    max_accuracy_loss: float = Field(
        default=0.01,
        ge=-1,
        le=1,
        description="largest drop of hold-out top-1 accuracy, fp32 minus int8, that still ships",
    )
    max_map_loss: float = Field(
        default=0.02,
        ge=-1,
        le=1,
        description="largest drop of the map figure (BRIDGE_GATE__MAP_METRIC, water IoU on "
        "Boadella) on the reference set, when one is configured",
    )
    calibration_size: int = Field(
        default=256,
        ge=10,
        le=5000,
        description="training patches (never the hold-out's) the activation ranges are "
        "calibrated on, spread over the classes",
    )
    conv_kernel: Literal["auto", "gemm", "direct"] = Field(
        default="auto",
        description="how onnxruntime runs the int8 convolutions, the values the same either "
        "way: gemm (weight zero point -1: im2col and its int8 GEMM, AMX where present), direct "
        "(zero point 0: its symmetric direct-convolution kernels) or auto (both timed on this "
        "host, the faster shipped); benchmarks/inference/bench_int8.py times both",
    )


Role = Literal["promoter", "viewer"]
PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_KEY_LENGTH = 16


class Credential(BaseModel):
    """One API key of the REST API and what its holder may do. The principal (who is recorded
    as ``promoted_by`` and in the audit log) is the name the credential is filed under."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    key: SecretStr = Field(description=f"the key itself, at least {MIN_KEY_LENGTH} characters")
    role: Role = Field(description="promoter: may promote, force and roll back; viewer: may not")

    @field_validator("key")
    @classmethod
    def _long_enough(cls, key: SecretStr) -> SecretStr:
        if len(key.get_secret_value()) < MIN_KEY_LENGTH:
            raise ValueError(f"an API key needs at least {MIN_KEY_LENGTH} characters")
        return key


class CatalogSettings(BaseModel):
    """Where the bridge publishes the STAC collection of shipped models (``eostream-models``):
    a STAC API with the transactions extension, else a static catalogue folder, else nowhere."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stac_api_url: str | None = Field(
        default=None, description="STAC API root (transactions on), e.g. http://127.0.0.1:18082"
    )
    static_dir: Path | None = Field(
        default=None, description="folder of a static STAC catalogue (the embedded mode's)"
    )
    collection: str = Field(default="eostream-models", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    timeout_seconds: float = Field(default=10.0, gt=0, description="per STAC API request")


class BridgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,  # errors must not echo BRIDGE_API_KEYS
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
    webhook_name: str = Field(
        default="eostream-registry-bridge",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$",
        description="the name of this deployment's webhook in MLflow: deployments that share "
        "one MLflow server each need their own, or the last bridge to start takes every "
        "delivery",
    )
    api_keys: Annotated[dict[str, Credential], NoDecode] = Field(
        default_factory=dict,
        description='credentials of the REST write routes, JSON: {"alice": {"key": "...", '
        '"role": "promoter"}, "grafana": {"key": "...", "role": "viewer"}}; the name is who is '
        "recorded. None set: every write answers 401",
    )
    max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=64 << 20,
        description="the largest request body the HTTP API reads (webhooks, promote, rollback); "
        "larger ones answer 413 before or as soon as they pass it",
    )
    audit_prefix: str = Field(
        default="audit", min_length=1, description="object-store prefix of the audit log"
    )
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    registration_grace_seconds: float = Field(
        default=120.0, ge=0, description="wait this long for a new version's tags before refusing"
    )
    consumer_group: str = Field(default="registry-bridge", min_length=1)
    auto_promote: bool = Field(default=True, description="challenger -> champion without a person")
    gate: GateSettings = GateSettings()
    holdout: HoldoutSettings = HoldoutSettings()
    int8: Int8Settings = Int8Settings()
    models_prefix: str = Field(default="models", min_length=1)
    agreement_samples: int = Field(default=16, ge=1, description="images for ONNX vs torch")
    agreement_atol: float = Field(default=1e-3, gt=0, description="largest |logit difference|")
    gate_experiment: str = Field(default="eostream-registry-bridge-gate", min_length=1)
    torch_threads: int = Field(default=1, ge=1, le=64)
    retry_attempts: int = Field(default=5, ge=1, description="MLflow / object store calls")
    retry_backoff_seconds: float = Field(default=0.5, gt=0)
    retry_backoff_max_seconds: float = Field(default=15.0, gt=0)
    # --- the models catalogue (catalog.py): STAC API (transactions) or a static catalogue ---
    catalog: CatalogSettings = Field(
        default_factory=CatalogSettings,
        description="where shipped MLM items are published (BRIDGE_CATALOG__STAC_API_URL, ...)",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> Any:
        """``BRIDGE_API_KEYS`` is JSON; empty (compose's unset variable) means no credentials."""
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(
                    'not JSON; expected {"<name>": {"key": "<key>", "role": "promoter|viewer"}}'
                ) from None
        return value

    @field_validator("api_keys")
    @classmethod
    def _distinct_principals(cls, value: dict[str, Credential]) -> dict[str, Credential]:
        for name in value:
            if not PRINCIPAL.match(name):
                raise ValueError(
                    f"credential name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'"
                )
        keys = [c.key.get_secret_value() for c in value.values()]
        if len(set(keys)) != len(keys):
            raise ValueError("two credentials share a key; give each principal its own")
        return value
