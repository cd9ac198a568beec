"""The models catalogue: every shipped MLM item as an item of the STAC collection
``eostream-models``, so that a model can be found by task, class, band, area or metric.

One code path builds what is published (pure functions, no I/O): :func:`catalog_item` takes the
shipped MLM item (immutable, the commit marker in the models bucket) and adds the version's
current state from the registry (aliases, status, gate verdict and figures);
:func:`build_collection` merges a collection's extents and summaries with new items. The
publishers of :mod:`.publishers` write them: a STAC API with the transactions extension (the
stack's stac-fastapi-pgstac) or a static catalogue folder (the embedded mode's).

:class:`ModelsCatalog` is run by the bridge after every operation on a model (and so after each
reconcile pass): it re-derives the items of the model's shipped versions and publishes those
that changed since it last published them. A catalogue that does not answer never fails a
promotion: it is logged, and the next operation publishes again. Versions are never deleted:
an archived version stays findable, with ``eostream:status`` ``archived``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pystac
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from stac_model.base import TaskEnum  # type: ignore[import-untyped]
from stac_model.schema import SCHEMA_URI as MLM_SCHEMA  # type: ignore[import-untyped]

from eostream.registry_bridge.audit import AuditLog, trusted_gate
from eostream.registry_bridge.port import ModelRegistry
from eostream.registry_bridge.publishers import HIERARCHY, CatalogPublisher
from eostream.registry_bridge.shipping import Shipper
from eostream.shared import mlm, tags
from eostream.shared.modelcard import ModelCard

log = logging.getLogger(__name__)

VERSION_EXTENSION = "https://stac-extensions.github.io/version/v1.2.0/schema.json"
#: what a version is now: the live model, the one waiting, a former champion, or only shipped
STATUSES = ("champion", "challenger", "archived", "shipped")
#: item properties whose values the collection summarises (a sorted list of each one's values)
SUMMARISED = (
    "mlm:tasks",
    "eostream:classes",
    "eostream:bands",
    "eostream:model_name",
    "mlm:architecture",
    "mlm:framework",
    "processing:level",
    "gsd",
)


@dataclass(frozen=True)
class VersionState:
    """What the registry says of a shipped version now."""

    aliases: tuple[str, ...]
    tags: Mapping[str, str]
    #: the gate's verdict the bridge trusts (its audit log's), shown instead of the tag; None:
    #: the tag's
    verdict: str | None = None


# ------------------------------------------------------------------ pure: items and collection
def status_of(state: VersionState) -> str:
    if tags.CHAMPION in state.aliases:
        return "champion"
    if tags.CHALLENGER in state.aliases:
        return "challenger"
    if state.tags.get(tags.STAGE) == tags.STAGE_ARCHIVED:
        return "archived"
    return "shipped"


def _figure(value: str) -> Any:
    """A gate figure as a number (or a JSON object/list of them); None when it is not one."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict | list) else None


def gate_properties(version_tags: Mapping[str, str], verdict: str | None = None) -> dict[str, Any]:
    """The gate's verdict and every figure it recorded on the version (``eostream.gate.*`` tags:
    accuracy, and whatever else the gate measures, map accuracy included) as item properties
    ``eostream:gate`` and ``eostream:gate:<name>``. ``verdict``: the verdict the bridge trusts
    (its audit log's, :func:`~eostream.registry_bridge.audit.trusted_gate`), shown instead of
    the tag."""
    props: dict[str, Any] = {}
    if verdict is not None:
        props["eostream:gate"] = verdict
    elif tags.GATE in version_tags:
        props["eostream:gate"] = version_tags[tags.GATE]
    prefix = tags.GATE + "."
    for key, value in sorted(version_tags.items()):
        if not key.startswith(prefix):
            continue
        field = "eostream:gate:" + key.removeprefix(prefix).replace(".", "_")
        if key == tags.GATE_REASONS:
            reasons = _figure(value)
            props[field] = reasons if isinstance(reasons, list) else [value]
        elif key == tags.GATE_EVAL_RUN:
            props[field] = value
        else:
            figure = _figure(value)
            if figure is not None:
                props[field] = figure
    return props


def _classes(props: Mapping[str, Any]) -> list[str]:
    # each output lists the classes (a patch model's per-pixel map output repeats them)
    names = (
        str(c["name"])
        for output in props.get("mlm:output", [])
        for c in output.get("classification:classes", [])
    )
    return list(dict.fromkeys(names))


def _bands(props: Mapping[str, Any]) -> list[str]:
    return [
        str(b["name"] if isinstance(b, dict) else b)
        for model_input in props.get("mlm:input", [])
        for b in model_input.get("bands", [])
    ]


def catalog_item(
    shipped: Mapping[str, Any], state: VersionState, collection: str
) -> dict[str, Any]:
    """The catalogue's item of a shipped version: the shipped MLM item, in ``collection``, with
    the version's current aliases, status and gate figures, and flat lists of its classes and
    bands (CQL2 cannot reach into ``mlm:output``), linked to the shipped item (``alternate``)."""
    data = copy.deepcopy(dict(shipped))
    props = data["properties"]
    origin = next((link["href"] for link in data.get("links", []) if link["rel"] == "self"), None)
    links = [link for link in data.get("links", []) if link["rel"] not in HIERARCHY]
    if origin:
        links.append(
            {
                "rel": "alternate",
                "href": origin,
                "type": "application/geo+json",
                "title": "the MLM item in the models bucket",
            }
        )
    data["links"] = links
    data["collection"] = collection
    props.update(
        {
            "version": str(props.get("eostream:model_version", "")),
            "eostream:aliases": sorted(state.aliases),
            "eostream:status": status_of(state),
            "eostream:classes": _classes(props),
            "eostream:bands": _bands(props),
            **gate_properties(state.tags, state.verdict),
        }
    )
    for key, prop in (
        (tags.PROMOTED_AT, "eostream:promoted_at"),
        (tags.PROMOTED_BY, "eostream:promoted_by"),
    ):
        if key in state.tags:
            props[prop] = state.tags[key]
    data["stac_extensions"] = sorted({*data.get("stac_extensions", []), VERSION_EXTENSION})
    return data


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def build_collection(
    existing: Mapping[str, Any] | None, items: Iterable[Mapping[str, Any]], collection: str
) -> dict[str, Any]:
    """The collection with its extent and summaries grown to cover ``items`` (merged with the
    ``existing`` collection's, so a publisher never needs every item at hand; nothing shrinks,
    as no version is ever removed)."""
    summaries: dict[str, set[Any]] = {key: set() for key in SUMMARISED}
    bbox: list[float] | None = None
    start: datetime | None = None
    end: datetime | None = None
    if existing:
        for key in SUMMARISED:
            values = existing.get("summaries", {}).get(key)
            if isinstance(values, list):
                summaries[key].update(values)
        extent = existing.get("extent", {})
        boxes = extent.get("spatial", {}).get("bbox") or [None]
        bbox = list(boxes[0]) if boxes[0] else None
        interval = (extent.get("temporal", {}).get("interval") or [[None, None]])[0]
        start, end = _when(interval[0]), _when(interval[1])
    for item in items:
        props = item["properties"]
        for key in SUMMARISED:
            value = props.get(key)
            if isinstance(value, list):
                summaries[key].update(value)
            elif value is not None:
                summaries[key].add(value)
        b = item.get("bbox")
        if b:
            bbox = (
                list(b)
                if bbox is None
                else [
                    min(bbox[0], b[0]),
                    min(bbox[1], b[1]),
                    max(bbox[2], b[2]),
                    max(bbox[3], b[3]),
                ]
            )
        for field, pick in (("start_datetime", min), ("end_datetime", max)):
            when = _when(props.get(field) or props.get("datetime"))
            if when is None:
                continue
            if field == "start_datetime":
                start = when if start is None else pick(start, when)
            else:
                end = when if end is None else pick(end, when)
    return {
        "type": "Collection",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": [MLM_SCHEMA, VERSION_EXTENSION],
        "id": collection,
        "title": "eostream models",
        "description": "Every model version the eostream registry-bridge shipped, as a STAC MLM "
        "item: bands, scaling, classes, the ONNX artifact, its version and aliases, the gate's "
        "verdict and figures, training data and MLflow run. Archived versions stay, with "
        "eostream:status 'archived'.",
        "keywords": ["machine learning model", "STAC MLM", "land cover", "EuroSAT", "Sentinel-2"],
        "license": "other",
        "extent": {
            "spatial": {"bbox": [bbox or list(mlm.EUROPE_BBOX)]},
            "temporal": {
                "interval": [[_iso(start) if start else None, _iso(end) if end else None]]
            },
        },
        "summaries": {k: sorted(v) for k, v in summaries.items() if v},
        "links": [],
    }


# ------------------------------------------------------------------ validation
def _core_problems(data: Mapping[str, Any], kind: pystac.STACObjectType) -> list[str]:
    try:
        JsonSchemaSTACValidator().validate_core(dict(data), kind, str(data.get("stac_version")))
    except Exception as exc:  # STACValidationError
        return [f"not a valid STAC {kind.value.lower()}: {exc}".splitlines()[0]]
    return []


def validate_collection(data: Mapping[str, Any]) -> list[str]:
    """Every problem with the models collection: the core STAC schema (offline), the MLM tasks
    it summarises (stac-model's task names) and its extent."""
    problems = _core_problems(data, pystac.STACObjectType.COLLECTION)
    known = {t.value for t in TaskEnum}
    for task in data.get("summaries", {}).get("mlm:tasks", []):
        if task not in known:
            problems.append(f"summaries: {task!r} is not an MLM task")
    if MLM_SCHEMA not in data.get("stac_extensions", []):
        problems.append("the MLM extension is not declared in stac_extensions")
    for box in data.get("extent", {}).get("spatial", {}).get("bbox", []):
        if len(box) != 4 or box[0] > box[2] or box[1] > box[3]:
            problems.append(f"extent: bad bbox {box}")
    return problems


def validate_catalog_item(data: Mapping[str, Any], collection: str) -> list[str]:
    """Every problem with a catalogue item: the MLM item checks (core schema, MLM fields through
    stac-model, its card and checksum) plus the catalogue's own fields."""
    props = data.get("properties", {})
    try:
        card = ModelCard.model_validate(props[mlm.CARD_PROPERTY])
        sha256 = str(props["eostream:sha256"])
    except (KeyError, ValueError) as exc:
        return [f"not an eostream MLM item: {exc}".splitlines()[0]]
    problems = mlm.validate_item(dict(data), card, sha256)
    if data.get("collection") != collection:
        problems.append(f"collection is {data.get('collection')!r}, not {collection!r}")
    if props.get("eostream:status") not in STATUSES:
        problems.append(f"eostream:status {props.get('eostream:status')!r} not one of {STATUSES}")
    if props.get("eostream:classes") != list(card.classes):
        problems.append("eostream:classes differ from the card's classes")
    if props.get("eostream:bands") != list(card.bands):
        problems.append("eostream:bands differ from the card's bands")
    if props.get("version") != props.get("eostream:model_version"):
        problems.append("version differs from eostream:model_version")
    return problems


# ------------------------------------------------------------------ the catalogue
class ModelsCatalog:
    """Keeps the published items of a model's shipped versions in step with the registry.
    Blocking and not thread-safe: the bridge runs :meth:`refresh` under its lock."""

    def __init__(
        self,
        registry: ModelRegistry,
        shipper: Shipper,
        publisher: CatalogPublisher | None,
        collection: str,
        audit: AuditLog | None = None,
    ) -> None:
        self.registry = registry
        self.shipper = shipper
        self.publisher = publisher
        self.collection = collection
        self.audit = audit  # the gate's verdicts on record, shown instead of the tags
        self._shipped: dict[tuple[str, str], dict[str, Any]] = {}  # immutable once shipped
        self._published: dict[str, str] = {}  # item id -> digest of what was published

    def refresh(self, name: str) -> list[str]:
        """Publish the items of ``name``'s shipped versions that changed since last published;
        the ids published. Failures are logged, never raised (the next operation retries)."""
        if self.publisher is None:
            return []
        try:
            return self._refresh(name)
        except Exception as exc:
            log.warning(
                "models catalogue %s not updated for %s (%s); the next operation retries",
                self.publisher.where,
                name,
                exc,
            )
            return []

    def items(self, name: str) -> list[dict[str, Any]]:
        """The catalogue items of ``name``'s shipped versions as they should be now."""
        aliases: dict[str, list[str]] = {}
        for alias in (tags.CHAMPION, tags.CHALLENGER):
            version = self.registry.alias_version(name, alias)
            if version is not None:
                aliases.setdefault(version, []).append(alias)
        found = []
        entries = self.audit.entries(name) if self.audit is not None else None
        for mv in sorted(self.registry.versions(name), key=lambda v: int(v.version)):
            if mv.tags.get(tags.SHIPPED) != "true":
                continue
            shipped = self._shipped.get((name, mv.version))
            if shipped is None:
                shipped = self.shipper.item(name, mv.version)
                if shipped is None:
                    continue
                self._shipped[(name, mv.version)] = shipped
            verdict = (
                trusted_gate(mv.tags.get(tags.GATE), entries, mv.version, mv.created_ms)
                if entries is not None
                else None
            )
            state = VersionState(tuple(aliases.get(mv.version, ())), mv.tags, verdict)
            found.append(catalog_item(shipped, state, self.collection))
        return found

    def _refresh(self, name: str) -> list[str]:
        assert self.publisher is not None  # noqa: S101 - checked by refresh
        changed = []
        for item in self.items(name):
            digest = hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()
            if self._published.get(item["id"]) != digest:
                changed.append((item, digest))
        if not changed:
            return []
        new = [item for item, _ in changed]
        collection = build_collection(self.publisher.current_collection(), new, self.collection)
        self.publisher.publish(collection, new)
        for item, digest in changed:
            self._published[item["id"]] = digest
        ids = [item["id"] for item in new]
        log.info("models catalogue %s: published %s", self.publisher.where, ", ".join(ids))
        return ids
