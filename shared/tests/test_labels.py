"""Label items from the real Boadella labels (EOTDL BiDS'23), and every bad input's one line.

Core STAC is checked with stac-validator (offline schemas, root conftest). The label extension's
JSON schema is online only, so its fields are checked through pystac's LabelExtension, which
reads and types each one (and fails on a missing required field).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pystac
import pytest
import rasterio
from pystac.extensions.label import LabelExtension, LabelType
from shapely.geometry import box, mapping, shape
from shapely.ops import unary_union

from eostream.shared.errors import Disposition, classify
from eostream.shared.label_catalog import grow_collection, item_matches
from eostream.shared.labels import (
    CLASSES_FIELD,
    LABEL_SCHEMA,
    LabelError,
    Mask,
    Scene,
    build_raster_label_item,
    build_vector_label_item,
    parse_class_list,
)

FOLDER = "sentinel2_scenes/boadella_l2a_sentinelhub/sentinel_2"
LABELLED = ("2020-02-02", "2020-06-21", "2020-09-14", "2021-07-16")


def scene_item(data_dir: Path, date: str) -> dict[str, Any]:
    """A scene item for a Boadella crop: its footprint from the raster, the date from its name."""
    tif = data_dir / FOLDER / f"Boadella_{date}.tif"
    with rasterio.open(tif) as src:
        footprint = box(*src.bounds)
    item = pystac.Item(
        f"boadella-{date}",
        mapping(footprint),
        list(footprint.bounds),
        pystac.utils.str_to_datetime(f"{date}T10:30:00Z"),
        {"platform": "sentinel-2"},
    )
    item.add_asset("data", pystac.Asset(str(tif), media_type=pystac.MediaType.GEOTIFF))
    return item.to_dict(include_self_link=False)


def labels_of(data_dir: Path, date: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (data_dir / FOLDER / f"Boadella_{date}_labels.geojson").read_text()
    )
    return doc


@pytest.fixture(scope="module")
def class_list(data_dir: Path) -> list[str]:
    return parse_class_list(json.loads((data_dir / FOLDER / "labels.json").read_text()))


def scene(data_dir: Path, date: str) -> Scene:
    return Scene.from_item(scene_item(data_dir, date), f"/scenes/boadella-{date}.json")


def test_class_list_is_read_from_labels_json(class_list: list[str]) -> None:
    assert class_list == ["water", "forest"]


@pytest.mark.parametrize("date", LABELLED)
def test_boadella_water_polygons_become_valid_label_items(
    data_dir: Path, date: str, class_list: list[str], stac_validator: Any
) -> None:
    s = scene(data_dir, date)
    built = build_vector_label_item(
        s, labels_of(data_dir, date), asset_href="/objects/x.geojson", class_list=class_list
    )
    assert stac_validator(built.item) == []
    assert LABEL_SCHEMA in built.item["stac_extensions"]
    item = pystac.Item.from_dict(built.item)
    label = LabelExtension.ext(item)
    assert label.label_type == LabelType.VECTOR
    assert label.label_properties == ["labels"]
    assert label.label_tasks == ["segmentation"]
    assert [(c.name, c.classes) for c in label.label_classes or []] == [("labels", class_list)]
    overviews = label.label_overviews or []
    assert [(c.name, c.count) for c in overviews[0].counts or []] == [("water", 1)]
    assert item.properties[CLASSES_FIELD] == ["water"]
    assert item.datetime is not None and item.datetime.isoformat().startswith(date)
    assert [link.href for link in item.links if link.rel == "source"] == [s.href]
    assert item.assets["labels"].href == "/objects/x.geojson"
    # one segmentation polygon per file: the prompts and classification boxes are left out
    assert built.features is not None and len(built.features["features"]) == 1
    assert any("other tasks" in n for n in built.notes)
    # the item's geometry lies inside the scene and covers the kept polygon
    geom = shape(built.item["geometry"])
    assert geom.difference(s.footprint).area < 1e-12
    assert geom.buffer(1e-9).contains(shape(built.features["features"][0]["geometry"]))


def test_classification_boxes_carry_both_classes(data_dir: Path, class_list: list[str]) -> None:
    built = build_vector_label_item(
        scene(data_dir, "2020-06-21"),
        labels_of(data_dir, "2020-06-21"),
        asset_href="x",
        class_list=class_list,
        task="classification",
    )
    assert built.classes == ["forest", "water"]


def test_labels_partly_outside_are_clipped_and_the_loss_is_said(data_dir: Path) -> None:
    s = scene(data_dir, "2020-06-21")
    w, south, e, n = s.footprint.bounds
    half_out = box(e - (e - w) / 4, south, e + (e - w) / 4, n)  # half of it east of the scene
    far = box(e + 1, south, e + 2, n)
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"labels": "water"}, "geometry": mapping(g)}
            for g in (half_out, far)
        ],
    }
    built = build_vector_label_item(s, doc, asset_href="x")
    assert len(built.notes) == 1
    assert "dropped 1 of 2 feature(s)" in built.notes[0]
    kept = shape(built.features["features"][0]["geometry"]) if built.features else None
    assert kept is not None and kept.area == pytest.approx(half_out.area / 2)


def fc_of(geometry: Any) -> dict[str, Any]:
    feature = {"type": "Feature", "properties": {"labels": "water"}, "geometry": mapping(geometry)}
    return {"type": "FeatureCollection", "features": [feature]}


def test_clipping_keeps_polygons_polygons(data_dir: Path) -> None:
    """A polygon that also runs along the scene's edge from outside: the intersection has a line
    part, which is not a label; what is kept is polygonal."""
    s = scene(data_dir, "2020-06-21")
    _, south, e, n = s.footprint.bounds
    mid = (south + n) / 2
    # one polygon: a block across the east edge, and above it a block outside that touches the
    # edge (the scene's side of it is a line)
    crossing = unary_union([box(e - 0.01, south + 0.001, e + 0.01, mid), box(e, mid, e + 0.01, n)])
    assert crossing.intersection(s.footprint).geom_type == "GeometryCollection"
    doc = fc_of(crossing)
    built = build_vector_label_item(s, doc, asset_href="x")
    assert built.features is not None
    kept = shape(built.features["features"][0]["geometry"])
    assert kept.geom_type in ("Polygon", "MultiPolygon") and kept.is_valid
    assert any("clipped to scene" in n for n in built.notes)


def test_points_are_labels_too(data_dir: Path) -> None:
    doc = labels_of(data_dir, "2020-09-14")
    points = [f for f in doc["features"] if f["geometry"]["type"] == "Point"]
    # SCANEO marks them as prompts; without that mark they are point labels
    built = build_vector_label_item(
        scene(data_dir, "2020-09-14"),
        {
            "type": "FeatureCollection",
            "features": [{**f, "properties": {"labels": ["water"]}} for f in points],
        },
        asset_href="x",
    )
    assert built.item["properties"]["label:overviews"][0]["counts"] == [
        {"name": "water", "count": len(points)}
    ]


def test_a_raster_mask_becomes_a_raster_label_item(data_dir: Path, stac_validator: Any) -> None:
    s = scene(data_dir, "2020-06-21")
    mask = Mask(s.footprint.bounds, "EPSG:4326", {0: 900, 1: 100})
    built = build_raster_label_item(
        s, mask, {0: "other", 1: "water"}, asset_href="m.tif", class_list=None
    )
    assert stac_validator(built.item) == []
    label = LabelExtension.ext(pystac.Item.from_dict(built.item))
    assert label.label_type == LabelType.RASTER
    assert label.label_classes is not None and label.label_classes[0].classes == [
        "other",
        "water",
    ]


def test_the_collection_grows_with_each_import(
    data_dir: Path, class_list: list[str], stac_validator: Any
) -> None:
    coll: dict[str, Any] | None = None
    for date, task in (("2020-02-02", "segmentation"), ("2020-06-21", "classification")):
        built = build_vector_label_item(
            scene(data_dir, date), labels_of(data_dir, date), asset_href="x", task=task
        )
        coll = grow_collection(coll, [built.item], "my-labels")
    assert coll is not None and stac_validator(coll) == []
    assert coll["summaries"][CLASSES_FIELD] == ["forest", "water"]
    assert coll["summaries"]["label:tasks"] == ["classification", "segmentation"]
    assert coll["extent"]["temporal"]["interval"][0][0].startswith("2020-02-02")
    assert coll["extent"]["temporal"]["interval"][0][1].startswith("2020-06-21")


def test_item_matches_by_class_bbox_and_time(data_dir: Path) -> None:
    item = build_vector_label_item(
        scene(data_dir, "2020-06-21"), labels_of(data_dir, "2020-06-21"), asset_href="x"
    ).item
    reservoir = [2.80, 42.34, 2.83, 42.36]
    assert item_matches(item, bbox=reservoir, classes=["water"], tasks=["segmentation"])
    assert not item_matches(item, bbox=[10, 50, 11, 51])
    assert not item_matches(item, classes=["forest"])
    from datetime import UTC, datetime

    assert not item_matches(item, interval=(datetime(2021, 1, 1, tzinfo=UTC), None))


# -- bad input: one line each -----------------------------------------------------------------


def fc(*geoms: dict[str, Any], cls: object = "water") -> dict[str, Any]:
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"labels": cls}, "geometry": g} for g in geoms
        ],
    }


BOWTIE = {"type": "Polygon", "coordinates": [[[2.80, 42.34], [2.81, 42.35], [2.81, 42.34],
                                              [2.80, 42.35], [2.80, 42.34]]]}  # fmt: skip
INSIDE = mapping(box(2.80, 42.34, 2.81, 42.35))


@pytest.mark.parametrize(
    ("doc", "kwargs", "expected"),
    [
        (fc(mapping(box(10, 50, 11, 51))), {}, "labels outside their scene"),
        (fc(INSIDE, cls="lava"), {"class_list": ["water", "forest"]}, "unknown class 'lava'"),
        (fc(BOWTIE), {}, "invalid geometry (Self-intersection"),
        (fc({"type": "Polygon", "coordinates": []}), {}, "empty geometry"),
        (
            fc({"type": "LineString", "coordinates": [[2.8, 42.34], [2.81, 42.35]]}),
            {},
            "LineString",
        ),
        ({"type": "FeatureCollection", "features": []}, {}, "has no features"),
        ({"type": "Feature"}, {}, "not a GeoJSON FeatureCollection"),
        (fc(INSIDE, cls=None), {}, "no class in property 'labels'"),
        (fc(INSIDE, cls=["water", " "]), {}, "no class in property 'labels'"),
        (fc(INSIDE), {"class_property": "class"}, "no class in property 'class'"),
        (
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "geometry": INSIDE, "properties": [1]}],
            },
            {},
            "'properties' is not an object",
        ),
        ({"type": "FeatureCollection", "features": [7]}, {}, "feature 0 is not a GeoJSON Feature"),
        (fc(INSIDE), {"task": "detection"}, "task 'detection'"),
        (fc(INSIDE), {"item_id": "../x"}, "item id '../x'"),
        (fc(INSIDE), {"item_id": "scene-1\n"}, "item id 'scene-1\\n'"),  # a folder's name
    ],
)
def test_bad_vector_labels_give_one_line(
    data_dir: Path, doc: dict[str, Any], kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(LabelError) as info:
        build_vector_label_item(scene(data_dir, "2020-06-21"), doc, asset_href="x", **kwargs)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    assert classify(info.value) == Disposition.DEAD_LETTER  # an event carrying it


def test_a_mask_outside_its_scene_is_refused(data_dir: Path) -> None:
    s = scene(data_dir, "2020-06-21")
    with pytest.raises(LabelError, match="mask outside its scene"):
        build_raster_label_item(
            s, Mask((10, 50, 11, 51), "EPSG:32631", {1: 5}), {1: "w"}, asset_href="x"
        )
    with pytest.raises(LabelError, match="mask value 2 has no class"):
        build_raster_label_item(
            s, Mask(s.footprint.bounds, "EPSG:4326", {1: 5, 2: 1}), {1: "w"}, asset_href="x"
        )


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"labels": []},
        {"labels": [{"color": "#fff"}]},
        {"labels": [{"name": "a"}, {"name": "a"}]},
    ],
)
def test_bad_class_lists_are_refused(doc: object) -> None:
    with pytest.raises(LabelError, match="class list"):
        parse_class_list(doc)


def test_a_scene_without_footprint_or_time_is_refused(data_dir: Path) -> None:
    item = scene_item(data_dir, "2020-06-21")
    with pytest.raises(LabelError, match="no usable geometry"):
        Scene.from_item({**item, "geometry": None}, "s.json")
    with pytest.raises(LabelError, match="no datetime"):
        Scene.from_item({**item, "properties": {"datetime": None}}, "s.json")
