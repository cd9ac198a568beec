"""Settings of the ingest service: the sources it watches and where it keeps its state.

Sources come from ``INGEST_SOURCES`` (a JSON list) or from a YAML/JSON file named by
``INGEST_SOURCES_FILE``; both may be given, the lists are joined. Names must be unique.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from eostream.shared import topics
from eostream.shared.events import Level
from eostream.shared.settings import ServiceSettings

BBox = tuple[float, float, float, float]


class ItemFilter(BaseModel):
    """What a source lets through. Pushed to the API where it can be, checked again locally."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    collections: tuple[str, ...] = ()
    bbox: BBox | None = None
    aoi: dict[str, Any] | None = Field(default=None, description="GeoJSON geometry (EPSG:4326)")
    max_cloud_cover: float | None = Field(default=None, ge=0, le=100)
    levels: tuple[Level, ...] = ()
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.bbox is not None and self.aoi is not None:
            raise ValueError("give bbox or aoi, not both")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
                raise ValueError(f"bbox {self.bbox} is not west,south,east,north in degrees")
        if self.start and self.end and self.start > self.end:
            raise ValueError("start is after end")
        return self


class _SourceBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    filter: ItemFilter = ItemFilter()
    assume_level: Level | None = Field(
        default=None,
        description="level to use when an item names none (e.g. EuroSAT patches are L1C)",
    )


class StacApiSource(_SourceBase):
    kind: Literal["stac_api"] = "stac_api"
    url: str = Field(min_length=1)
    page_size: int = Field(default=100, ge=1, le=10000)
    overlap_seconds: float = Field(
        default=3 * 86400, ge=0, description="re-search this far behind the watermark"
    )
    timeout_seconds: float = Field(default=30.0, gt=0)


class StaticSource(_SourceBase):
    kind: Literal["static"] = "static"
    href: str = Field(
        min_length=1,
        description="catalog.json, collection.json, an item, a FeatureCollection or a "
        "stac-geoparquet table (.parquet, .geoparquet); path, s3:// or http(s)://",
    )
    href_rewrites: dict[str, str] = Field(
        default_factory=dict,
        description="prefix -> replacement: read catalogues with absolute-URL links offline",
    )
    allowed_roots: tuple[str, ...] = Field(
        default=(),
        description="where the catalogue's item and child links may lead besides its own folder "
        "(local), bucket (s3://) or host (http[s]://) and its rewrite targets: folders, "
        "s3://bucket entries or http(s)://host URLs; any other link is dead-lettered, not read",
    )


SourceConfig = Annotated[StacApiSource | StaticSource, Field(discriminator="kind")]

#: CloudEvent types the push endpoint takes: EOEPCA's resource-registration notifications and
#: eostream's own (ADR 0016).
PUSH_EVENT_TYPES = (
    "org.eoepca.resource-registration.resource.added",
    "org.eoepca.resource-registration.resource.updated",
    "org.eostream.stac.item.created",
    "org.eostream.stac.item.updated",
)


class PushSettings(BaseModel):
    """``INGEST_PUSH__*``: the HTTP endpoint that takes signed CloudEvents naming new items."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    host: str = Field(default="127.0.0.1", description="bind address of a push server of its own")
    port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="a port of its own (0: any free one); None: served on the ops server",
    )
    secret: SecretStr | None = Field(
        default=None, description="Standard Webhooks signing secret (whsec_<base64> or text)"
    )
    tolerance_seconds: float = Field(
        default=300.0, gt=0, le=3600, description="how far webhook-timestamp may be from now"
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=16 * 1_048_576)
    event_types: tuple[str, ...] = PUSH_EVENT_TYPES
    source: str | None = Field(
        default=None,
        description="the configured source pushed items belong to; None: the one whose filter "
        "admits the item's collection",
    )

    @model_validator(mode="after")
    def _secret_when_enabled(self) -> Self:
        if self.enabled and (self.secret is None or len(self.secret.get_secret_value()) < 16):
            raise ValueError(
                "INGEST_PUSH__ENABLED=true needs INGEST_PUSH__SECRET (16 characters at least)"
            )
        return self


class NotifySettings(BaseModel):
    """``INGEST_NOTIFY__*``: PostgreSQL LISTEN/NOTIFY on new items of a pgstac database."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    dsn: SecretStr | None = Field(
        default=None, description="the pgstac database (the STAC API's); else EOSTREAM_PG_DSN"
    )
    database: str | None = Field(
        default="stac", description="the database to connect to (empty: the DSN's own)"
    )
    channel: str = Field(default="eostream_items", pattern=r"^[a-z_][a-z0-9_]{0,40}$")
    install_trigger: bool = Field(
        default=True, description="create the NOTIFY trigger on pgstac.items at start (idempotent)"
    )
    source: str | None = Field(
        default=None,
        description="the configured source notified items belong to; None: by collection",
    )
    reconnect_seconds: float = Field(default=1.0, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)


class LabelsSettings(BaseModel):
    """``INGEST_LABELS__*``: label collections announced as datasets (``DatasetUpdated``) each
    time their items change, for the trainer to learn from (:mod:`eostream.ingest.labelwatch`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    catalog: str | None = Field(
        default=None,
        description="a static label catalogue folder (embedded: <home>/labels) or a STAC API "
        "root URL; None: labels are not watched",
    )
    collections: tuple[str, ...] = Field(
        default=(), description="the label collections to watch; empty: every one"
    )
    band_set: str = Field(
        default="l2a",
        description="the band set to cut label chips in: l2a (the 12 bands of L2A scenes: what "
        "per-pixel models on spectral indices need), ms13 (L1C scenes) or rgb",
    )
    poll_interval_seconds: float = Field(default=60.0, gt=0)
    settle_seconds: float = Field(
        default=10.0,
        ge=0,
        description="announce a changed collection once its items have not changed for this "
        "long: several dates imported one after the other start one training, not one each",
    )


StateKind = Literal["sqlite", "postgres"]


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="INGEST_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    sources: tuple[SourceConfig, ...] = ()
    sources_file: Path | None = None

    state: StateKind = "sqlite"
    sqlite_path: Path = Path(".eostream/ingest-state.sqlite")
    pg_dsn: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("INGEST_PG_DSN", "EOSTREAM_PG_DSN")
    )
    pg_database: str = "results"
    pg_schema: str = Field(default="ingest", pattern=r"^[a-z_][a-z0-9_]*$")

    topic: str = topics.SCENES_DISCOVERED
    poll_interval_seconds: float = Field(default=60.0, gt=0)
    backoff_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    publish_batch: int = Field(default=100, ge=1, le=10000)
    replay_topic: str = topics.INGEST_REPLAY
    leader_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how often a standby replica tries the leader lock, and the leader checks it",
    )
    push: PushSettings = PushSettings()
    notify: NotifySettings = NotifySettings()
    labels: LabelsSettings = LabelsSettings()

    @model_validator(mode="after")
    def _sources(self) -> Self:
        if self.sources_file is not None:
            extra = load_sources_file(self.sources_file)
            object.__setattr__(self, "sources", (*self.sources, *extra))
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        if self.state == "postgres" and self.pg_dsn is None:
            raise ValueError("INGEST_STATE=postgres needs INGEST_PG_DSN (or EOSTREAM_PG_DSN)")
        for what, chosen in (("PUSH", self.push.source), ("NOTIFY", self.notify.source)):
            if chosen is not None and chosen not in names:
                raise ValueError(f"INGEST_{what}__SOURCE={chosen!r} is not a configured source")
        if self.notify.enabled and self.notify.dsn is None and self.pg_dsn is None:
            raise ValueError(
                "INGEST_NOTIFY__ENABLED=true needs INGEST_NOTIFY__DSN (or EOSTREAM_PG_DSN)"
            )
        return self

    def notify_dsn(self) -> str | None:
        """The pgstac database to LISTEN on: NOTIFY__DSN, else the PostgreSQL DSN, with
        NOTIFY__DATABASE put in when the DSN names no database."""
        secret = self.notify.dsn or self.pg_dsn
        if secret is None:
            return None
        from psycopg.conninfo import make_conninfo

        dsn = secret.get_secret_value()
        return make_conninfo(dsn, dbname=self.notify.database) if self.notify.database else dsn

    def source(self, name: str) -> StacApiSource | StaticSource:
        for s in self.sources:
            if s.name == name:
                return s
        from eostream.ingest.errors import UnknownSource

        known = ", ".join(s.name for s in self.sources) or "none"
        raise UnknownSource(f"no source named {name!r} (configured: {known})")


def load_sources_file(path: Path) -> list[StacApiSource | StaticSource]:
    """Read a YAML or JSON list of sources (or a mapping with a ``sources`` list)."""
    from pydantic import TypeAdapter

    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if isinstance(data, dict):
        data = data.get("sources", [])
    adapter: TypeAdapter[list[StacApiSource | StaticSource]] = TypeAdapter(list[SourceConfig])
    return adapter.validate_python(data)


def utc_text(value: datetime) -> str:
    """RFC 3339 in UTC with a Z, as STAC APIs want it."""
    from datetime import UTC

    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
