"""Reference sets: labelled real scenes that say how right a map is.

A reference set is a STAC catalog with two collections:

- ``boadella-scenes/``: one item per scene (the pixels a model classifies);
- ``boadella-water-labels/``: one label item per labelled scene (STAC label extension:
  ``label:type``, ``label:classes``, ``label:tasks``, a ``source`` link to its scene item, the
  label GeoJSON as its ``labels`` asset). ``eostream maps evaluate --reference`` takes this
  collection.

What the reference's classes mean in a model's classes is data of the reference set, not code:
the labels collection carries ``eostream:class_mapping`` (reference class -> model classes, e.g.
``water -> [SeaLake, River]``) and ``eostream:background_class`` (the name of everything inside
the labelled area that no label polygon covers; every model class that no mapping names counts
as it).

Each label item says how complete its labels are in ``eostream:label_coverage``:

- ``complete``: every pixel of the item's geometry is labelled (inside a polygon: its class;
  outside: background). All scores are computed over that geometry.
- ``partial``: only some objects were drawn (the Boadella 2020-02-02 labels trace part of the
  reservoir). Pixels outside the polygons are unknown, so only recall can be measured, inside
  the polygons; such items are reported on their own line and left out of the pooled figures.

``build_boadella`` builds the first reference set from the Boadella L2A crops and their hand-made
water labels in the data folder (``eostream maps reference build --from boadella``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.label import LabelClasses, LabelExtension, LabelType
from shapely.geometry import mapping, shape
from shapely.ops import unary_union

from eostream.inference.uploads import item_for_raster
from eostream.shared.labels import COMPLETE as COMPLETE
from eostream.shared.labels import COVERAGE_FIELD as COVERAGE_FIELD
from eostream.shared.labels import PARTIAL as PARTIAL

MAPPING_FIELD = "eostream:class_mapping"
BACKGROUND_FIELD = "eostream:background_class"
LABELS_ASSET = "labels"
#: the GeoJSON property that holds a feature's class(es) (a string or a list of strings)
LABEL_PROPERTY = "labels"
SEGMENTATION = "segmentation"

BOADELLA_FOLDER = "sentinel2_scenes/boadella_l2a_sentinelhub"
#: band order of the Boadella crops (Sentinel Hub L2A evalscript): B8A after B08, no B10
BOADELLA_BANDS = [
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
]  # fmt: skip
#: dates whose label file traces only part of the water (see the module docstring)
BOADELLA_PARTIAL = frozenset({"2020-02-02"})
#: the reference's classes in EuroSAT classes (the classes every eostream model predicts)
BOADELLA_MAPPING = {"water": ["SeaLake", "River"]}
BOADELLA_BACKGROUND = "other"
SOURCES = ("boadella",)


def scene_id(date: str) -> str:
    return f"boadella-{date}"


def label_id(date: str) -> str:
    return f"boadella-water-{date}"


def segmentation_geometries(collection: dict[str, Any]) -> list[tuple[dict[str, Any], list[str]]]:
    """The labelled shapes of a label GeoJSON and their classes.

    Label tools such as SCANEO write prompts (points) and whole-image classification boxes beside
    the drawn shapes, told apart by a ``tasks`` property: where features carry ``tasks``, only
    those with ``segmentation`` count; polygons without ``tasks`` count too. Raises ValueError
    when the document is not a GeoJSON FeatureCollection of valid geometries.
    """
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        raise ValueError("not a GeoJSON FeatureCollection")
    features = collection.get("features")
    if not isinstance(features, list):
        raise ValueError("a FeatureCollection without a 'features' list")
    out = []
    for n, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise ValueError(f"feature {n} is not a GeoJSON Feature")
        props = feature.get("properties") or {}
        geometry = feature.get("geometry")
        if not isinstance(geometry, dict):
            raise ValueError(f"feature {n} has no geometry")
        try:
            geom = shape(geometry)
        except Exception as exc:
            raise ValueError(f"feature {n} has an invalid geometry ({exc})") from None
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        tasks = props.get("tasks")
        if tasks is not None and SEGMENTATION not in tasks:
            continue
        classes = props.get(LABEL_PROPERTY, [])
        out.append((geometry, [classes] if isinstance(classes, str) else list(classes)))
    return out


def build_boadella(data_dir: Path, out_dir: Path, dates: Sequence[str] = ()) -> Path:
    """Write the Boadella reference set to ``out_dir``; returns its labels ``collection.json``.

    Scene items point at the crops in the data folder (absolute paths; nothing is copied); label
    items get a byte-for-byte copy of their GeoJSON beside them. ``dates`` keeps only those
    acquisition dates (all by default).
    """
    folder = data_dir / BOADELLA_FOLDER / "sentinel_2"
    tifs = sorted(folder.glob("Boadella_????-??-??.tif"))
    if dates:
        tifs = [t for t in tifs if t.stem.removeprefix("Boadella_") in dates]
    if not tifs:
        raise FileNotFoundError(f"no Boadella crops in {folder}")
    bbox = json.loads((data_dir / BOADELLA_FOLDER / "boadella_bbox.geojson").read_text())
    footprint = bbox["features"][0]["geometry"]

    scenes: list[pystac.Item] = []
    for tif in tifs:
        date = tif.stem.removeprefix("Boadella_")
        d = item_for_raster(tif.resolve(), scene_id(date), BOADELLA_BANDS, level="L2A")
        d["properties"]["datetime"] = f"{date}T10:30:00Z"
        d["properties"]["platform"] = "sentinel-2"
        d["properties"]["eostream:band_order"] = BOADELLA_BANDS
        scenes.append(pystac.Item.from_dict(d, preserve_dict=False))

    labels: list[tuple[pystac.Item, Path]] = []
    by_id = {s.id: s for s in scenes}
    for geojson in sorted(folder.glob("Boadella_????-??-??_labels.geojson")):
        date = geojson.stem.removeprefix("Boadella_").removesuffix("_labels")
        scene = by_id.get(scene_id(date))
        if scene is None:
            continue
        partial = date in BOADELLA_PARTIAL
        shapes = segmentation_geometries(json.loads(geojson.read_text()))
        classes = sorted({c for _, cs in shapes for c in cs})
        if partial:
            area = unary_union([shape(g) for g, _ in shapes])
            geometry, item_bbox = mapping(area), list(area.bounds)
        else:
            geometry, item_bbox = footprint, list(scene.bbox or area_bounds(footprint))
        item = pystac.Item(
            id=label_id(date),
            geometry=geometry,
            bbox=item_bbox,
            datetime=scene.datetime,
            properties={
                COVERAGE_FIELD: PARTIAL if partial else COMPLETE,
                "eostream:label_source": f"{BOADELLA_FOLDER}/sentinel_2/{geojson.name}",
            },
        )
        label = LabelExtension.ext(item, add_if_missing=True)
        label.apply(
            label_description=(
                "hand-made water polygons (SCANEO); "
                + (
                    "PARTIAL: only part of the water is traced, score recall inside the polygons"
                    if partial
                    else "complete: outside the polygons is not water"
                )
            ),
            label_type=LabelType.VECTOR,
            label_properties=[LABEL_PROPERTY],
            label_classes=[LabelClasses.create(classes=classes, name=LABEL_PROPERTY)],
            label_tasks=[SEGMENTATION],
            label_methods=["manual"],
        )
        label.add_source(scene, assets=["data"])
        label.add_geojson_labels(geojson.name, title="water polygons")
        labels.append((item, geojson))

    out_dir.mkdir(parents=True, exist_ok=True)
    root = pystac.Catalog(
        id="boadella-reference",
        description="Reference set: Sentinel-2 L2A crops of the Boadella reservoir (Spain) and "
        "hand-made water labels (EOTDL BiDS'23 workshop data), for map accuracy",
        title="Boadella water reference set",
    )
    scene_coll = _collection(
        "boadella-scenes", "Sentinel-2 L2A crops, 12 bands, about 10 m (Sentinel Hub)", scenes
    )
    label_coll = _collection(
        "boadella-water-labels",
        "Hand-made water labels of Boadella scenes; evaluate maps against this collection",
        [item for item, _ in labels],
    )
    LabelExtension.add_to(label_coll)
    label_coll.extra_fields[MAPPING_FIELD] = BOADELLA_MAPPING
    label_coll.extra_fields[BACKGROUND_FIELD] = BOADELLA_BACKGROUND
    label_coll.summaries.add("label:classes", [{"name": LABEL_PROPERTY, "classes": ["water"]}])
    label_coll.summaries.add("label:type", ["vector"])
    label_coll.summaries.add("label:tasks", [SEGMENTATION])
    root.add_child(scene_coll)
    root.add_child(label_coll)
    root.normalize_hrefs(str(out_dir.resolve()))
    for item, geojson in labels:
        target = Path(str(item.get_self_href())).parent / geojson.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(geojson, target)
        item.assets[LABELS_ASSET].href = geojson.name  # beside the item JSON
    root.save(pystac.CatalogType.SELF_CONTAINED)
    return Path(str(label_coll.get_self_href()))


def area_bounds(geometry: dict[str, Any]) -> list[float]:
    return list(shape(geometry).bounds)


def _collection(cid: str, description: str, items: list[pystac.Item]) -> pystac.Collection:
    times = [i.datetime for i in items if i.datetime is not None]
    bounds = [i.bbox for i in items if i.bbox]
    extent = pystac.Extent(
        pystac.SpatialExtent(
            [
                [
                    min(b[0] for b in bounds),
                    min(b[1] for b in bounds),
                    max(b[2] for b in bounds),
                    max(b[3] for b in bounds),
                ]
            ]
        ),
        pystac.TemporalExtent([[min(times, default=datetime.now(UTC)), max(times, default=None)]]),
    )
    coll = pystac.Collection(id=cid, description=description, extent=extent, license="MIT")
    coll.add_items(items)
    return coll
