"""Label items: a user's labels over one scene as a STAC item with the label extension.

:func:`build_vector_label_item` turns a GeoJSON FeatureCollection of polygons or points over a
scene item into a label item; :func:`build_raster_label_item` does the same for a class mask
(the caller reads the mask: this module does no I/O). A label item has

- ``label:type`` (``vector`` or ``raster``), ``label:properties``, ``label:classes`` (the class
  list, from the user's ``labels.json`` or the classes present), ``label:tasks``,
  ``label:description`` and ``label:overviews`` (features or pixels per class);
- ``eostream:label_classes``: the class names present, flat. Searching "items with class water"
  over the nested ``label:classes`` objects needs a CQL2 filter into an array of objects, which
  STAC APIs answer unevenly; over a flat string array it is one ``a_contains``;
- the scene's datetime, a ``source`` link to the scene item, a ``labels`` asset (stored by the
  caller) and a geometry: the labels' extent clipped to the scene footprint.

Bad input raises :class:`LabelError` (a ValueError: an event carrying it is dead-lettered) with a
one-line message. Label collections and searches are in :mod:`eostream.shared.label_catalog`.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pystac

with warnings.catch_warnings():
    # pystac deprecates its label extension because the extension is unmaintained upstream
    # ("pilot"); it is still the STAC way to describe labels, and its fields are stable.
    warnings.simplefilter("ignore", DeprecationWarning)
    from pystac.extensions.label import (
        LabelClasses,
        LabelCount,
        LabelExtension,
        LabelOverview,
        LabelType,
    )
from shapely.errors import GEOSException
from shapely.geometry import Polygon, box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union
from shapely.validation import explain_validity

from eostream.shared.errors import EostreamError

LABEL_SCHEMA = LabelExtension.get_schema_uri()
CLASSES_FIELD = "eostream:label_classes"
LABELS_ASSET = "labels"
DEFAULT_COLLECTION = "eostream-labels"
#: the GeoJSON property holding a feature's class (a string or a list of strings); SCANEO's name
DEFAULT_CLASS_PROPERTY = "labels"
TASKS = ("segmentation", "classification")
#: a per-pixel mask's value for a pixel of no known class (unlabelled, nodata or cloud); the
#: chips' masks, the trainer's loss and the gate's per-pixel hold-out all skip it
MASK_UNKNOWN = 255
#: how complete a label item's labels are: ``complete`` (every pixel of its footprint that no
#: shape covers is background) or ``partial`` (only some objects were drawn: the rest unknown)
COVERAGE_FIELD = "eostream:label_coverage"
COMPLETE, PARTIAL = "complete", "partial"
#: the feature property label tools (SCANEO) use to tell segmentation shapes from prompts
TASKS_PROPERTY = "tasks"
GEOJSON_TYPE = "application/geo+json"


class LabelError(EostreamError, ValueError):
    """Labels that cannot become a label item; the message is one line."""


def parse_class_list(document: object) -> list[str]:
    """The class names of a ``labels.json`` (``{"labels": [{"name": ..., "color": ...}]}``)."""
    entries = document.get("labels") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise LabelError('class list: expected {"labels": [{"name": ..., "color": ...}, ...]}')
    names = []
    for n, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise LabelError(f"class list: entry {n} has no 'name'")
        names.append(name.strip())
    if len(set(names)) != len(names):
        raise LabelError(f"class list: duplicate class names in {names}")
    return names


@dataclass(frozen=True)
class Scene:
    """What a label item needs of its scene item."""

    id: str
    href: str
    footprint: BaseGeometry
    properties: Mapping[str, Any]

    @classmethod
    def from_item(cls, item: Mapping[str, Any], href: str) -> Scene:
        if not isinstance(item, Mapping) or item.get("type") != "Feature" or "id" not in item:
            raise LabelError(f"scene {href}: not a STAC item")
        try:
            footprint = shape(item["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError, GEOSException):
            raise LabelError(f"scene {href}: the item has no usable geometry") from None
        if footprint.is_empty or footprint.area == 0:
            raise LabelError(f"scene {href}: the item's footprint is empty")
        props = item.get("properties") or {}
        if not (props.get("datetime") or props.get("start_datetime")):
            raise LabelError(f"scene {href}: the item has no datetime")
        return cls(str(item["id"]), href, footprint, props)


@dataclass
class LabelItem:
    """A built label item, and what was dropped on the way (one line each)."""

    item: dict[str, Any]
    features: dict[str, Any] | None  # the kept, clipped FeatureCollection (vector labels)
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.item["properties"][CLASSES_FIELD])


def _classes_of(value: object, n: int, prop: str) -> list[str]:
    if isinstance(value, str) and value.strip():
        return [value.strip()]
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    raise LabelError(f"feature {n}: no class in property {prop!r} (got {value!r})")


def _geometry(feature: object, n: int) -> BaseGeometry:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise LabelError(f"feature {n} is not a GeoJSON Feature")
    if not isinstance(feature.get("geometry"), dict):
        raise LabelError(f"feature {n} has no geometry")
    try:
        geom = shape(feature["geometry"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, GEOSException) as exc:
        raise LabelError(f"feature {n} has an invalid geometry ({exc})") from None
    if geom.is_empty:
        raise LabelError(f"feature {n} has an empty geometry")
    if geom.geom_type not in ("Polygon", "MultiPolygon", "Point", "MultiPoint"):
        raise LabelError(f"feature {n} is a {geom.geom_type}; labels are polygons or points")
    if not geom.is_valid:
        raise LabelError(f"feature {n} has an invalid geometry ({explain_validity(geom)})")
    return geom


def build_vector_label_item(
    scene: Scene,
    collection: Mapping[str, Any],
    *,
    asset_href: str,
    class_property: str = DEFAULT_CLASS_PROPERTY,
    class_list: Sequence[str] | None = None,
    task: str = "segmentation",
    item_id: str | None = None,
    description: str | None = None,
) -> LabelItem:
    """The label item of a GeoJSON FeatureCollection over ``scene``.

    Features whose ``tasks`` property exists and does not name ``task`` (a labelling tool's
    prompts, say) are left out; the rest are clipped to the scene footprint. Raises LabelError
    when nothing is left, when no feature overlaps the scene, or on a bad feature.
    """
    _check_task(task)
    if not isinstance(collection, Mapping) or collection.get("type") != "FeatureCollection":
        raise LabelError("labels: not a GeoJSON FeatureCollection")
    features = collection.get("features")
    if not isinstance(features, list) or not features:
        raise LabelError("labels: the FeatureCollection has no features")
    notes: list[str] = []
    kept: list[tuple[dict[str, Any], BaseGeometry, list[str]]] = []
    other_task = 0
    for n, feature in enumerate(features):
        geom = _geometry(feature, n)
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            raise LabelError(f"feature {n}: 'properties' is not an object")
        tasks = props.get(TASKS_PROPERTY)
        if isinstance(tasks, list) and task not in tasks:
            other_task += 1
            continue
        classes = _classes_of(props.get(class_property), n, class_property)
        if class_list is not None:
            unknown = [c for c in classes if c not in class_list]
            if unknown:
                raise LabelError(
                    f"feature {n}: unknown class {unknown[0]!r} (the class list has "
                    f"{', '.join(class_list)})"
                )
        kept.append((props, geom, classes))
    if other_task:
        notes.append(f"left out {other_task} feature(s) labelled for other tasks than {task}")
    if not kept:
        raise LabelError(f"labels: no features for task {task!r}")

    clipped, dropped_features = [], 0
    area_in = sum(g.area for _, g, _ in kept)
    for props, geom, classes in kept:
        if not geom.intersects(scene.footprint):
            dropped_features += 1
            continue
        part = geom if scene.footprint.contains(geom) else _same_kind(geom, scene.footprint)
        if part.is_empty or (geom.area > 0 and part.area == 0):
            dropped_features += 1  # touches the footprint's edge only
            continue
        clipped.append((props, part, classes))
    if not clipped:
        bounds = unary_union([g for _, g, _ in kept]).bounds
        raise LabelError(
            f"labels outside their scene: no feature overlaps scene {scene.id} "
            f"(labels bbox {_fmt(bounds)}, scene bbox {_fmt(scene.footprint.bounds)})"
        )
    area_out = sum(g.area for _, g, _ in clipped)
    share = 100 * (1 - area_out / area_in) if area_in else 0.0
    if dropped_features or share >= 0.05:  # not edge rounding of a box drawn over the scene
        notes.append(
            f"clipped to scene {scene.id}: dropped {dropped_features} of {len(kept)} feature(s) "
            f"and {share:.1f}% of the labelled area"
        )

    counts = Counter(c for _, _, cs in clipped for c in cs)
    kept_fc = _plain(
        {
            "type": "FeatureCollection",
            "features": [
                {"type": "Feature", "properties": dict(p), "geometry": mapping(g)}
                for p, g, _ in clipped
            ],
        }
    )
    extent = unary_union([g for _, g, _ in clipped])
    footprint = (
        box(*extent.bounds).intersection(scene.footprint) if extent.area > 0 else extent.envelope
    )
    item = _label_item(
        scene,
        item_id or default_item_id(scene.id, task, raster=False),
        footprint,
        label_type=LabelType.VECTOR,
        class_property=class_property,
        class_list=list(class_list) if class_list is not None else sorted(counts),
        counts=counts,
        task=task,
        description=description
        or f"{len(clipped)} labelled feature(s) over scene {scene.id} ({task})",
        asset_href=asset_href,
        media_type=GEOJSON_TYPE,
    )
    return LabelItem(item, kept_fc, notes)


@dataclass(frozen=True)
class Mask:
    """What a raster label needs of a class mask: its footprint in lon/lat (EPSG:4326), its
    CRS (for messages) and how many pixels hold each value (nodata left out)."""

    bounds: tuple[float, float, float, float]
    crs: str
    pixel_counts: Mapping[int, int]


def build_raster_label_item(
    scene: Scene,
    mask: Mask,
    value_classes: Mapping[int, str],
    *,
    asset_href: str,
    class_list: Sequence[str] | None = None,
    task: str = "segmentation",
    item_id: str | None = None,
    description: str | None = None,
) -> LabelItem:
    """The label item of a class mask over ``scene`` (``value_classes``: pixel value -> class)."""
    _check_task(task)
    extent = box(*mask.bounds)
    if not extent.intersects(scene.footprint) or extent.intersection(scene.footprint).area == 0:
        raise LabelError(
            f"mask outside its scene: its extent {_fmt(mask.bounds)} ({mask.crs}) does not "
            f"overlap scene {scene.id} ({_fmt(scene.footprint.bounds)})"
        )
    unmapped = sorted(v for v, n in mask.pixel_counts.items() if n and v not in value_classes)
    if unmapped:
        raise LabelError(
            f"mask value {unmapped[0]} has no class (map it: --value-class {unmapped[0]}=NAME)"
        )
    if class_list is not None:
        unknown = [c for c in value_classes.values() if c not in class_list]
        if unknown:
            raise LabelError(
                f"unknown class {unknown[0]!r} (the class list has {', '.join(class_list)})"
            )
    counts: Counter[str] = Counter()
    for value, n in mask.pixel_counts.items():
        if n:
            counts[value_classes[value]] += n
    if not counts:
        raise LabelError("mask: no labelled pixels (all nodata)")
    notes = []
    inside = extent.intersection(scene.footprint)
    if inside.area < extent.area * (1 - 1e-9):
        notes.append(
            f"the mask reaches {100 * (1 - inside.area / extent.area):.1f}% beyond scene "
            f"{scene.id}; the item covers the overlap"
        )
    item = _label_item(
        scene,
        item_id or default_item_id(scene.id, task, raster=True),
        inside,
        label_type=LabelType.RASTER,
        class_property=None,
        class_list=list(class_list) if class_list is not None else sorted(counts),
        counts=counts,
        task=task,
        description=description or f"class mask over scene {scene.id} ({task})",
        asset_href=asset_href,
        media_type=pystac.MediaType.GEOTIFF,
    )
    item["properties"]["eostream:mask_values"] = {str(v): c for v, c in value_classes.items()}
    return LabelItem(item, None, notes)


def _label_item(
    scene: Scene,
    item_id: str,
    footprint: BaseGeometry,
    *,
    label_type: LabelType,
    class_property: str | None,
    class_list: list[str],
    counts: Counter[str],
    task: str,
    description: str,
    asset_href: str,
    media_type: str,
) -> dict[str, Any]:
    _check_id(item_id)
    when = scene.properties.get("datetime")
    props: dict[str, Any] = {CLASSES_FIELD: sorted(counts)}
    if not when:
        props["start_datetime"] = scene.properties["start_datetime"]
        props["end_datetime"] = scene.properties.get("end_datetime", props["start_datetime"])
    item = pystac.Item(
        id=item_id,
        geometry=mapping(footprint),
        bbox=list(footprint.bounds),
        datetime=pystac.utils.str_to_datetime(when) if when else None,
        properties=props,
    )
    label = LabelExtension.ext(item, add_if_missing=True)
    label.apply(
        label_description=description,
        label_type=label_type,
        label_properties=[class_property] if class_property else None,
        label_classes=[LabelClasses.create(classes=class_list, name=class_property)],
        label_tasks=[task],
        label_overviews=[
            LabelOverview.create(
                property_key=class_property,
                counts=[LabelCount.create(name=c, count=counts[c]) for c in sorted(counts)],
            )
        ],
    )
    item.add_link(
        pystac.Link("source", scene.href, media_type=GEOJSON_TYPE, title=f"scene {scene.id}")
    )
    item.add_asset(
        LABELS_ASSET, pystac.Asset(asset_href, media_type=media_type, roles=["labels", "data"])
    )
    data = _plain(item.to_dict(include_self_link=False, transform_hrefs=False))
    if class_property is None:  # a mask has no property; the schema wants a string or nothing
        for overview in data["properties"]["label:overviews"]:
            overview.pop("property_key", None)
    return data


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """JSON types only (shapely's mapping gives tuples, which JSON schemas reject)."""
    out: dict[str, Any] = json.loads(json.dumps(data))
    return out


def _same_kind(geom: BaseGeometry, footprint: BaseGeometry) -> BaseGeometry:
    """The part of ``geom`` inside ``footprint``, polygons kept polygons: an intersection along
    an edge can add lines or points (a GeometryCollection), which are not labels."""
    part = geom.intersection(footprint)
    if geom.area > 0 and part.geom_type == "GeometryCollection":
        polygons = [g for g in getattr(part, "geoms", []) if g.area > 0]
        return unary_union(polygons) if polygons else Polygon()
    return part


def default_item_id(scene_id: str, task: str, *, raster: bool) -> str:
    """The label item's id unless the user names one: one per scene, task and label type."""
    return f"{scene_id}-{task}-{'mask' if raster else 'labels'}"


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise LabelError(f"task {task!r}: expected one of {', '.join(TASKS)}")


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _check_id(item_id: str) -> None:
    if not _ID.fullmatch(item_id):  # not match with $: that lets a trailing newline through
        raise LabelError(f"item id {item_id!r}: use letters, digits, '.', '_' and '-'")


def _fmt(bounds: Sequence[float]) -> str:
    return "[" + ", ".join(f"{b:.5f}" for b in bounds) + "]"
