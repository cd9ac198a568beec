"""InferenceSettings: read from ``INFERENCE_*`` environment variables, built once at the entry."""

from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from eostream.shared.settings import ServiceSettings, load_settings

#: How scenes are mapped unless the operator says otherwise; the registry-bridge's map check
#: scores candidates with the same defaults, so a version's map figure is that of its maps.
DEFAULT_STRIDE = 32
DEFAULT_UNCERTAIN_BELOW = 0.5


class SourcesSettings(BaseModel):
    """What a REST request may name (``INFERENCE_SOURCES__*``); scenes announced on the bus are
    not checked (ingest read them from the configured STAC sources)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_roots: tuple[str, ...] = Field(
        default=(tempfile.gettempdir(),),
        description="local folders and s3://bucket[/prefix] a request may name, besides the data "
        "folder (DATA_DIR, else EOSTREAM_DATA_DIR) and the service's own store, always allowed; "
        "the default is the system temp folder (set [] to drop it)",
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=("*",),
        description="http(s) host names a request may name: '*', 'host' or '*.domain'",
    )
    allowed_networks: tuple[str, ...] = Field(
        default=(),
        description="address ranges allowed although private, loopback or link-local "
        "(e.g. 127.0.0.0/8 for a local STAC API); none by default",
    )


class SubscriptionsSettings(BaseModel):
    """Notifications of new results to subscribers (``INFERENCE_SUBSCRIPTIONS__*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(
        default=5, ge=0, le=20, description="attempts after the first, then dead-letter"
    )
    backoff_seconds: float = Field(
        default=2.0, gt=0, description="wait before the first retry; doubles each retry"
    )
    max_backoff_seconds: float = Field(default=600.0, gt=0, description="longest wait")
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="one webhook request (connect + answer)"
    )
    concurrency: int = Field(
        default=4, ge=1, le=64, description="deliveries in flight at once (one worker)"
    )
    max_pending: int = Field(
        default=10_000,
        ge=1,
        description="deliveries waiting; a notification past it is dead-lettered (queue full)",
    )
    max_subscriptions: int = Field(default=1_000, ge=1, description="more are refused (409)")
    max_vertices: int = Field(default=10_000, ge=4, description="of a subscription's geometry")
    allowed_schemes: tuple[Literal["http", "https"], ...] = Field(
        default=("https",), description="webhook URL schemes"
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=("*",), description="webhook host names: '*', 'host' or '*.domain'"
    )
    allowed_networks: tuple[str, ...] = Field(
        default=(),
        description="address ranges a webhook may resolve to although private, loopback or "
        "link-local (none by default: no SSRF into the service's own network)",
    )
    require_handshake: bool = Field(
        default=True,
        description="a webhook must answer the CloudEvents abuse-protection handshake (OPTIONS "
        "with WebHook-Request-Origin -> WebHook-Allowed-Origin) at creation; false = any HTTP "
        "answer shows it reachable",
    )
    origin: str = Field(
        default="eostream-inference", description="WebHook-Request-Origin sent in the handshake"
    )
    kafka_topic_prefix: str = Field(
        default="eostream.notifications.",
        min_length=1,
        description="a Kafka target must start with it (subscribers never write system topics)",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, networks: tuple[str, ...]) -> tuple[str, ...]:
        for network in networks:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return networks


class CatalogSettings(BaseModel):
    """Where result items are published besides the service's own /stac: a STAC API with the
    transactions extension (the stack's stac-fastapi-pgstac), or nowhere."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stac_api_url: str | None = Field(
        default=None, description="STAC API root (transactions on), e.g. http://127.0.0.1:18082"
    )
    collection: str = Field(default="eostream-results", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    timeout_seconds: float = Field(default=10.0, gt=0, description="per STAC API request")


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="INFERENCE_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    api_key: SecretStr = Field(description="required by writing endpoints (X-API-Key or Bearer)")
    results_db: str = Field(
        default="sqlite:///.eostream/inference-results.db",
        description="SQLAlchemy URL of the results index (postgresql://... on the full stack)",
    )
    results_prefix: str = "results"
    collection_id: str = "eostream-classifications"
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    public_url: str | None = Field(
        default=None,
        description="the service's URL as clients reach it (http://host:port), used in the "
        "asset hrefs of result items; without it, the URL of each request",
    )
    cors_origins: tuple[str, ...] = Field(
        default=("*",),
        description="origins a browser may read the API from (CORS, GET only); '*' = any, "
        "none = no CORS headers",
    )

    # model
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    intra_op_threads: int = Field(default=0, ge=0, description="0 = onnxruntime's default")
    int8_on_cpu: bool = Field(
        default=True,
        description="on the CPU provider, run a model's int8 file when its MLM item ships one "
        "that passed its accuracy check (CUDA always runs fp32)",
    )
    initial_model_uri: str | None = Field(default=None, description="load at start (optional)")
    initial_model_sha256: str | None = None
    max_model_bytes: int = Field(default=2_000_000_000, ge=1)
    model_name: str | None = Field(
        default=None, description="serve only promotions of this registered model (None = any)"
    )
    model_alias: str | None = Field(
        default=None, description="serve only promotions under this alias, e.g. champion"
    )
    models_group: str = Field(
        default="", description="consumer group for promotions; empty = one per host"
    )
    remap_on_promotion: Literal["labels", "all", "none"] = Field(
        default="labels",
        description="when a version goes live, map again (through the scenes topic) the scenes "
        "that other versions of its model mapped: labels (only models trained on the user's own "
        "labels: the labelled area follows its champion), all, or none",
    )
    scenes_group: str = "inference-scenes"
    model_wait_seconds: float = Field(default=30.0, ge=0)
    asset_href_rewrites: dict[str, str] = Field(
        default_factory=dict,
        description="prefix -> replacement for asset hrefs: read scenes from a local or S3 "
        "mirror of a public bucket (longest prefix wins)",
    )
    defer_scenes_until_model: bool = Field(
        default=False,
        description="start consuming scenes only once a model is live (scenes wait on the bus); "
        "else a scene that finds no model within model_wait_seconds is retried, then dead-lettered",
    )

    # classification
    stride: int = Field(default=DEFAULT_STRIDE, ge=1, description="window step in pixels (<= 64)")
    batch_size: int = Field(
        default=0,
        ge=0,
        description="windows per model call; 0: by execution provider, 64 on the CPU (faster "
        "and half the memory of 256 on a full tile), 256 on a GPU",
    )
    pixel_batch_size: int = Field(
        default=65536, ge=1, description="band vectors per call of a pixel model (task pixel)"
    )
    rows_per_strip: int = Field(
        default=0, ge=0, description="window rows read per block; 0 = blocks of about 512 px"
    )
    gdal_cache_mb: int = Field(default=256, ge=16, description="GDAL block cache")
    level_mismatch: Literal["adapt", "refuse"] = "adapt"
    b10_fill_reflectance: float = Field(
        default=0.0015, description="cirrus band value used when an L1C model sees an L2A scene"
    )
    write_probabilities: bool = False
    mask_clouds: bool = True
    allow_coarse_scenes: bool = Field(
        default=False,
        description="classify a scene whose finest band is coarser than twice the model's GSD "
        "at its own resolution (the result item says so); false = refuse it (dead letter, 422)",
    )
    uncertain_below: float = Field(
        default=DEFAULT_UNCERTAIN_BELOW,
        ge=0,
        le=1,
        description="pixels whose top-class probability is below this are labelled uncertain (254)",
    )
    out_of_domain_limit: float = Field(
        default=1.5,
        gt=0,
        description="windows whose band means lie farther from the training data than this many "
        "times the training patches' 99th-percentile distance are labelled uncertain; needs a "
        "card with input_reference",
    )

    # REST
    max_upload_bytes: int = Field(default=200_000_000, ge=1)
    max_scene_pixels: int = Field(
        default=130_000_000,
        ge=1,
        description="pixel budget of one scene (width x height at the model's GSD), checked from "
        "the rasters' headers before any pixel is read: /classify/item and the OGC process answer "
        "413, a scene event is dead-lettered with the reason",
    )
    max_item_bytes: int = Field(default=5_000_000, ge=1)
    data_dir: Path | None = Field(default=None, description="optional local data folder")
    viewer_dir: Path | None = Field(
        default=None,
        description="the map page's folder (static/ and node_modules/ after npm ci); default: "
        "services/inference/viewer beside the package",
    )
    sources: SourcesSettings = Field(default_factory=SourcesSettings)
    model_roots: tuple[str, ...] = Field(
        default=(),
        description="local folders and s3://bucket[/prefix] a promotion on the bus may name its "
        "model files in (the ONNX file, its MLM item and int8 file), besides the service's own "
        "store, where the registry-bridge ships them; no http(s) source. Anyone who could "
        "publish on the bus chose the file inference ran",
    )
    max_request_pixels: int = Field(
        default=30_000_000,
        ge=1,
        description="width x height an uploaded raster may declare (checked from its header, "
        "before any pixel is decoded)",
    )
    max_request_body_bytes: int = Field(
        default=1_000_000, ge=1, description="body of a request other than an upload"
    )
    area_max_pixels: int = Field(
        default=300_000_000,
        ge=1,
        description="pixels one /results/aggregate or /results/change (+ /map) request may read, "
        "summed over its maps and estimated from the results' sizes and footprints before any "
        "map is read; more answer 413 (narrow the area, bbox or datetime). The default holds "
        "two full 10980 x 10980 tiles: the change of a whole tile",
    )
    area_pixels_in_flight: int = Field(
        default=500_000_000,
        ge=1,
        description="pixels all /results/aggregate and /results/change requests may read at "
        "once (about 10 bytes of memory each at the peak); a request that would pass it answers "
        "503 with Retry-After instead of waiting in the threadpool (one alone always runs)",
    )
    stac_max_candidates: int = Field(
        default=10_000,
        ge=1,
        description="index records a /stac search with intersects, filter or a sortby field "
        "other than id and datetime (those the index sorts) may load to check, sort and page "
        "here (those its bbox, datetime and ids select); more answer 413 (narrow bbox, "
        "datetime or ids)",
    )
    vector_max_polygons: int = Field(
        default=50_000,
        ge=1,
        description="regions a map may have for /results/{scene}/vector; more answer 413",
    )

    # OGC API - Processes: jobs and models other than the live one
    jobs_workers: int = Field(
        default=1, ge=1, le=16, description="threads that run asynchronous jobs (not live traffic)"
    )
    jobs_max_pending: int = Field(
        default=16, ge=1, description="jobs accepted but not started; more are refused (503)"
    )
    jobs_heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        description="how often a runner marks its unfinished jobs alive; jobs nobody marked for "
        "three heartbeats (their process stopped) are failed",
    )
    model_cache_size: int = Field(
        default=2,
        ge=0,
        description="sessions of models other than the live one kept loaded (least recently "
        "used goes first); 0 = load for each job and free after it",
    )
    models_prefix: str = Field(
        default="models",
        min_length=1,
        description="object-store prefix of the shipped models (<prefix>/<name>/<version>/"
        "item.json): where models:/NAME/VERSION is looked up when no deployment recorded it",
    )

    # notifications of new results (/subscriptions)
    subscriptions: SubscriptionsSettings = Field(default_factory=SubscriptionsSettings)

    @field_validator("stride")
    @classmethod
    def _centred_stride(cls, stride: int) -> int:
        if stride > 64 or (64 - stride) % 2:
            raise ValueError("must be at most 64 and of the same parity as 64 (e.g. 64, 48, 32)")
        return stride


def scratch_settings(root: Path, **overrides: Any) -> InferenceSettings:
    """Settings to classify in-process under ``root``, a scratch folder: no API key (no REST
    API is served), the in-memory bus, a local store and a SQLite results index in ``root``;
    ``overrides`` set any field (the environment still sets the others). What ``inference
    classify --stac-out``, ``maps evaluate``, the bridge's map check and the benchmarks map
    with. Raises ConfigError naming a bad field."""
    fields: dict[str, Any] = {
        "api_key": SecretStr(""),
        "bus": "memory",
        "store": "local",
        "local_store_root": root / "objects",
        "results_db": f"sqlite:///{root}/results.db",
    }
    return load_settings(InferenceSettings, **(fields | overrides))
