"""The event contracts every eostream service speaks.

Each event is a frozen, closed pydantic model with an ``event_type`` literal and a
``schema_version``. The id is minted once, when the fact happens, and travels unchanged through
retries and redeliveries, so consumers can use it as an idempotency key.

Older payloads are brought up to date by upgrader functions registered with
:func:`register_upgrader`; :func:`parse_event` applies them in order before validation.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from eostream.shared.errors import InvalidEventError

JsonDict = dict[str, Any]
Upgrader = Callable[[JsonDict], JsonDict]


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of all events: identity, time and the natural key used on the bus."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: str
    schema_version: int
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    time: AwareDatetime = Field(default_factory=_now)
    source: str = Field(default="eostream", min_length=1, max_length=200)

    #: The schema version this code writes; payloads with a lower version are upgraded.
    CURRENT_VERSION: ClassVar[int] = 1

    @property
    def key(self) -> str:
        """The natural id that keeps one object's events in order on one partition."""
        raise NotImplementedError


Level = Literal["L1C", "L2A"]
BandSet = Literal["rgb", "ms13", "l2a"]


class SceneDiscovered(Event):
    """A new Sentinel-2 scene is available. The STAC item stays out of the event; its href is in."""

    event_type: Literal["scene.discovered"] = "scene.discovered"
    schema_version: Literal[1] = 1

    item_id: str = Field(min_length=1, max_length=256)
    item_href: str = Field(min_length=1)
    collection: str | None = None
    datetime: AwareDatetime
    tile: str | None = Field(default=None, description="MGRS tile, for example 29RKH")
    cloud_cover: float | None = Field(default=None, ge=0, le=100)
    processing_level: Level
    processing_baseline: str | None = None
    bands: tuple[str, ...] = Field(min_length=1)
    bbox: tuple[float, float, float, float] | None = None
    source_name: str = Field(min_length=1, description="The ingest source that saw the item")
    replace: bool = Field(default=False, description="Re-announced on purpose: recompute results")

    @property
    def key(self) -> str:
        return self.item_id


#: how pairs of training patches are mixed (the trainer's ``TrainConfig.mix``)
MixMode = Literal["none", "mixup", "cutmix", "both"]


class TrainingRequested(Event):
    """Somebody (a person, a schedule, a data change) asks for a model to be trained."""

    event_type: Literal["training.requested"] = "training.requested"
    schema_version: Literal[1] = 1

    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1)
    model_name: str = Field(default="eurosat-landcover", min_length=1, max_length=200)
    band_set: str = Field(default="rgb", description="rgb or ms13; validated by the trainer")
    architecture: str = "small_cnn"
    family: str = Field(
        default="torch",
        description="the library that trains it: torch, keras, ...; validated by the trainer",
    )
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    samples_per_class: int | None = Field(default=None, ge=1)
    split: Literal["random", "spatial"] = "random"
    seed: int = Field(
        default=42,
        ge=0,
        le=2**32 - 1,
        description="0..2**32-1: what numpy's and torch's generators take (a negative or huge "
        "seed failed only at the first epoch, after the run had started)",
    )
    base_model: str | None = Field(
        default=None, description="models:/NAME/VERSION or models:/NAME@alias to fine-tune from"
    )
    pretrained: str | None = Field(
        default=None,
        description="a checkpoint name (eostream data checkpoint NAME) or a checkpoint file to "
        "start a resnet18_imagenet from",
    )
    freeze_backbone: bool = Field(default=False, description="with pretrained: train only the head")
    backbone_lr_scale: float = Field(
        default=1.0, gt=0, le=1, description="with pretrained: the backbone's learning rate factor"
    )
    label_smoothing: float = Field(
        default=0.0, ge=0, le=0.5, description="share of the target spread over every class"
    )
    mix: MixMode = Field(
        default="none", description="mix pairs of training patches (patch classification only)"
    )
    ema_decay: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="above 0: keep and ship an exponential moving average of the weights "
        "(e.g. 0.999)",
    )
    dataset: str | None = Field(
        default=None,
        description="train on labelled chips instead of EuroSAT: a chip dataset (folder or "
        "chips.parquet, eostream labels chips) or a label collection of a static catalogue "
        "(its collection.json); its classes and band set replace EuroSAT's",
    )
    requested_by: str = "unknown"
    reason: str = ""

    @property
    def key(self) -> str:
        return self.request_id


class DatasetUpdated(Event):
    """Labelled training data changed; the trainer may retrain."""

    event_type: Literal["dataset.updated"] = "dataset.updated"
    schema_version: Literal[1] = 1

    dataset: str = Field(min_length=1)
    href: str = Field(min_length=1)
    digest: str = Field(min_length=1)
    band_set: str = "rgb"
    model_name: str | None = Field(
        default=None,
        description="the model to train; default: the dataset's name for labels, else the "
        "trainer's default model",
    )

    @property
    def key(self) -> str:
        return self.dataset


class TrainingStarted(Event):
    event_type: Literal["training.started"] = "training.started"
    schema_version: Literal[1] = 1

    request_id: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    run_url: str = Field(min_length=1)
    experiment_id: str
    reused: bool = Field(
        default=False,
        description="the request had registered its version already (a redelivery): nothing "
        "trains, ``run_id`` is the run that did",
    )

    @property
    def key(self) -> str:
        return self.request_id


class ModelVersionRegistered(Event):
    event_type: Literal["model.version_registered"] = "model.version_registered"
    schema_version: Literal[1] = 1

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    request_id: str | None = None
    band_set: str
    metrics: dict[str, float] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"


class ModelPromoted(Event):
    """A model version is live under an alias; inference loads it from ``artifact_uri``."""

    event_type: Literal["model.promoted"] = "model.promoted"
    schema_version: Literal[1] = 1

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    alias: str = Field(min_length=1)
    artifact_uri: str = Field(min_length=1)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    mlm_item_href: str = Field(min_length=1)
    run_id: str | None = None
    previous_version: str | None = None
    promoted_by: str = "registry-bridge"
    reason: str = ""

    @property
    def key(self) -> str:
        # Keyed by name, not name:version, so that promotions and rollbacks of one model stay in
        # order on one partition: the last ModelPromoted for a name is the live one.
        return self.name


class SceneClassified(Event):
    event_type: Literal["scene.classified"] = "scene.classified"
    schema_version: Literal[1] = 1

    item_id: str = Field(min_length=1)
    model_name: str
    model_version: str
    run_id: str | None = None
    model_precision: Literal["fp32", "int8"] | None = Field(
        default=None, description="the model file that ran: fp32, or its int8 quantisation"
    )
    result_item_href: str
    cog_href: str
    quicklook_href: str | None = None
    class_shares: dict[str, float] = Field(default_factory=dict)
    pixels: int = Field(ge=0)
    duration_seconds: float = Field(ge=0)

    @property
    def key(self) -> str:
        return self.item_id


class ItemReplayRequested(Event):
    """An operator asks ingest to look again at a STAC item it rejected (``eostream dlq replay``).

    Ingest re-reads the item from its source as it is now, forgets the earlier rejection and maps
    it like a poll would: announced once if it is valid now, dead-lettered again if not.
    """

    event_type: Literal["item.replay_requested"] = "item.replay_requested"
    schema_version: Literal[1] = 1

    item_id: str = Field(min_length=1, max_length=256)
    source_name: str = Field(min_length=1, description="The ingest source that rejected it")
    collection: str | None = None
    item_href: str | None = Field(default=None, description="Where ingest read it, if known")
    letter_id: str = Field(min_length=1, description="The dead letter being replayed")
    reason: str = Field(default="", description="Why it was rejected then")
    requested_by: str = "unknown"

    @property
    def key(self) -> str:
        return self.item_id


class DeadLetter(BaseModel):
    """A dead-letter record read back: the original message, untouched, and why it is there.

    On the wire the record is the original key, value and headers plus ``dlq_*`` headers
    (reason, error type, service, original topic/partition/offset, attempts, time).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64")

    reason: str
    error_type: str
    service: str
    original_topic: str
    original_partition: int | None = None
    original_offset: int | None = None
    original_key: str | None = None
    original_headers: dict[str, str] = Field(default_factory=dict)
    original_value: bytes = Field(description="The payload, byte for byte")
    attempts: int = 1
    time: AwareDatetime = Field(default_factory=_now)


AnyEvent = Annotated[
    SceneDiscovered
    | TrainingRequested
    | DatasetUpdated
    | TrainingStarted
    | ModelVersionRegistered
    | ModelPromoted
    | SceneClassified
    | ItemReplayRequested,
    Field(discriminator="event_type"),
]

EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["event_type"].default: cls
    for cls in (
        SceneDiscovered,
        TrainingRequested,
        DatasetUpdated,
        TrainingStarted,
        ModelVersionRegistered,
        ModelPromoted,
        SceneClassified,
        ItemReplayRequested,
    )
}

_any_event: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
_upgraders: dict[tuple[str, int], Upgrader] = {}


def register_upgrader(event_type: str, from_version: int) -> Callable[[Upgrader], Upgrader]:
    """Register ``fn`` to turn a ``from_version`` payload into a ``from_version + 1`` payload."""

    def decorator(fn: Upgrader) -> Upgrader:
        if (event_type, from_version) in _upgraders:
            raise ValueError(f"an upgrader for {event_type} v{from_version} already exists")
        _upgraders[(event_type, from_version)] = fn
        return fn

    return decorator


def upgrade(payload: JsonDict) -> JsonDict:
    """Apply registered upgraders until the payload is at its type's current schema version."""
    event_type = payload.get("event_type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise InvalidEventError(f"unknown event_type {event_type!r}")
    target = _current_version(EVENT_TYPES[event_type])
    version = payload.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise InvalidEventError(f"{event_type}: schema_version must be a positive integer")
    if version > target:
        raise InvalidEventError(
            f"{event_type}: schema_version {version} is newer than this service knows ({target}); "
            "upgrade the service"
        )
    while version < target:
        step = _upgraders.get((event_type, version))
        if step is None:
            raise InvalidEventError(f"{event_type}: no upgrader from schema_version {version}")
        payload = step(dict(payload))
        version += 1
        payload["schema_version"] = version
    return payload


def _current_version(cls: type[Event]) -> int:
    default = cls.model_fields["schema_version"].default
    return int(default)


def parse_event(payload: JsonDict) -> Event:
    """Validate a JSON payload (upgrading older versions) into its event model."""
    from pydantic import ValidationError

    payload = upgrade(payload)
    try:
        event = _any_event.validate_python(payload)
    except ValidationError as exc:
        raise InvalidEventError(_summarise(exc)) from exc
    return event


def _summarise(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        ]
        return f"{exc.title}: " + "; ".join(parts[:5])
    return str(exc)


__all__ = [
    "EVENT_TYPES",
    "AnyEvent",
    "BandSet",
    "DatasetUpdated",
    "DeadLetter",
    "Event",
    "ItemReplayRequested",
    "Level",
    "ModelPromoted",
    "ModelVersionRegistered",
    "SceneClassified",
    "SceneDiscovered",
    "TrainingRequested",
    "TrainingStarted",
    "parse_event",
    "register_upgrader",
    "upgrade",
]
