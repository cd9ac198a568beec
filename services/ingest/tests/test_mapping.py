"""STAC item -> SceneDiscovered on real items from four providers, and the rejections."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from eostream.ingest.bands import normalise
from eostream.ingest.errors import ItemRejected
from eostream.ingest.mapping import event_id, item_id, item_version, to_scene

from .conftest import JsonDict, malformed_items

ALL_BUT_B10 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B11", "B12", "B8A")


def _load(data_dir: Path, rel: str) -> JsonDict:
    item: JsonDict = json.loads((data_dir / rel).read_text())
    return item


def test_earth_search_v1_items_map_with_tile_level_baseline_bands(
    earth_search_v1: list[JsonDict],
) -> None:
    scenes = [to_scene(i, source="es") for i in earth_search_v1]
    assert len(scenes) == 10
    assert {s.tile for s in scenes} == {"13TDE"}
    assert {s.processing_level for s in scenes} == {"L2A"}
    assert all(s.bands == ALL_BUT_B10 for s in scenes)
    first, raw = scenes[0], earth_search_v1[0]
    assert first.item_id == raw["id"]
    assert first.key == raw["id"]
    assert first.cloud_cover == pytest.approx(raw["properties"]["eo:cloud_cover"])
    assert first.processing_baseline == raw["properties"]["s2:processing_baseline"]
    assert first.item_href.startswith("https://earth-search.aws.element84.com/v1/collections/")
    assert first.bbox == tuple(raw["bbox"])
    # the item itself stays out of the event
    assert "assets" not in first.model_dump()


def test_29rkh_item_with_local_href(rkh_item_path: Path) -> None:
    item = json.loads(rkh_item_path.read_text())
    scene = to_scene(item, source="local", href=str(rkh_item_path))
    assert (scene.tile, scene.processing_level, scene.processing_baseline) == (
        "29RKH",
        "L2A",
        "02.14",
    )
    assert scene.item_href == str(rkh_item_path)
    assert scene.bands == ALL_BUT_B10  # the -jp2 duplicates collapse to one name each
    assert scene.datetime.isoformat().startswith("2020-02-19T11:34:25")


@pytest.mark.parametrize(
    ("rel", "tile", "level", "baseline"),
    [
        ("sentinel2_stac/earth_search_v0/S2A_28QCH_20200714_0_L2A.json", "28QCH", "L2A", "02.14"),
        ("sentinel2_stac/planetary_computer/sentinel-2-item.json", "24XWR", "L2A", "04.00"),
        (
            "sentinel2_stac/stactools_sentinel2_examples/S2A_T01LAC_20200717T221944_L1C.json",
            "01LAC",
            "L1C",
            "02.09",
        ),
    ],
)
def test_other_providers(data_dir: Path, rel: str, tile: str, level: str, baseline: str) -> None:
    scene = to_scene(_load(data_dir, rel), source="x", href="file:///x.json")
    assert (scene.tile, scene.processing_level, scene.processing_baseline) == (
        tile,
        level,
        baseline,
    )
    assert {"B02", "B03", "B04", "B08"} <= set(scene.bands)


def test_l1c_carries_b10(data_dir: Path) -> None:
    rel = "sentinel2_stac/stactools_sentinel2_examples/S2A_T01LAC_20200717T221944_L1C.json"
    assert "B10" in to_scene(_load(data_dir, rel), source="x", href="x").bands


def test_eurosat_patch_needs_an_assumed_level(data_dir: Path) -> None:
    item = _load(data_dir, "eurosat100_stac/stac/subset/test/item-1.json")
    with pytest.raises(ItemRejected, match="unknown processing level"):
        to_scene(item, source="eurosat", href="x")
    scene = to_scene(item, source="eurosat", href="x", assume_level="L1C")
    assert scene.processing_level == "L1C"
    assert len(scene.bands) == 13 and "B8A" in scene.bands  # B08A normalised
    assert scene.tile is None


def test_another_missions_item_is_refused_even_with_an_assumed_level(data_dir: Path) -> None:
    """The real Landsat 8 item of pystac-client's recorded search: with ``assume_level`` (which
    the unknown-level refusal advised) its OLI bands went on the bus as Sentinel-2's (nir08 as
    B8A, Landsat's scale and offset)."""
    import yaml

    cassette = data_dir / "sentinel2_stac/pystac_client_cassette/test_multiple_collections.yaml"
    pages = [
        json.loads(i["response"]["body"]["string"])
        for i in yaml.safe_load(cassette.read_text())["interactions"]
    ]
    found = [f for page in pages for f in page.get("features", ())]
    [landsat] = [f for f in found if f["id"].startswith("LC08_")]
    [sentinel] = [f for f in found if f["id"].startswith("S2")]
    for assumed in (None, "L2A"):
        with pytest.raises(ItemRejected, match="not a Sentinel-2 item: platform 'landsat-8'"):
            to_scene(landsat, source="x", href="x", assume_level=assumed)
    assert to_scene(sentinel, source="x", href="x").processing_level == "L2A"
    for named in ({"constellation": "Sentinel 2"}, {"platform": "Sentinel-2B"}):
        assert to_scene({**sentinel, "properties": {**sentinel["properties"], **named}},
                        source="x", href="x").processing_level == "L2A"  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("no-assets", "missing assets"),
        ("no-band-assets", "missing assets"),
        ("null-geometry", "bad geometry"),
        ("self-intersecting", "bad geometry: Self-intersection"),
        ("not-lonlat", "bad geometry"),
        ("unknown-level", "unknown processing level"),
        ("no-datetime", "missing datetime"),
        ("bbox-text", "bad bbox: .* no finite number"),
        ("bbox-null", "bad bbox: .* no finite number"),
        ("bbox-nan", "bad bbox: .* no finite number"),
        ("properties-list", "properties must be an object"),
    ],
)
def test_malformed_items_are_rejected_with_a_reason(
    earth_search_v1: list[JsonDict], kind: str, reason: str
) -> None:
    item = malformed_items(earth_search_v1[0])[kind]
    with pytest.raises(ItemRejected, match=reason):
        to_scene(item, source="es")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("roles", "data", "roles must be a list of strings"),
        ("eo:bands", {"name": "B04"}, "eo:bands must be a list"),
        ("raster:bands", [{"scale": "a"}], "scale must be a finite number"),
    ],
)
def test_fields_of_the_wrong_type_are_rejected_not_raised(
    earth_search_v1: list[JsonDict], field: str, value: object, reason: str
) -> None:
    """Rejected with the reason (recorded, dead-lettered, the poll goes on): an exception of
    another kind would fail the whole poll, at every poll."""
    item = copy.deepcopy(earth_search_v1[0])
    key = next(k for k in item["assets"] if k.lower() in ("red", "b04"))
    item["assets"][key][field] = value
    with pytest.raises(ItemRejected, match=reason):
        to_scene(item, source="es")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"links": 4.5}, "no href"),  # iterated: TypeError
        # without grid:code the mgrs:* fields are read: int([]) raised TypeError, int("13x")
        # ValueError; now they are no tile, and the id gives it
        ({"properties.grid:code": None, "properties.mgrs:utm_zone": []}, None),
        ({"properties.grid:code": None, "properties.mgrs:utm_zone": "13x"}, None),
    ],
)
def test_fields_that_raised_are_read_or_rejected(
    earth_search_v1: list[JsonDict], change: dict[str, object], expected: str | None
) -> None:
    """Found by the property test below: each raised from the mapping."""
    item = copy.deepcopy(earth_search_v1[0])
    for key, value in change.items():
        parent, _, name = key.rpartition(".")
        (item[parent] if parent else item)[name] = value
    if expected is None:
        assert to_scene(item, source="es").tile == "13TDE"
    else:
        with pytest.raises(ItemRejected, match=expected):
            to_scene(item, source="es")


def test_event_id_is_stable_per_item_version_and_fresh_on_replace(
    earth_search_v1: list[JsonDict],
) -> None:
    item = earth_search_v1[0]
    a, b = to_scene(item, source="es"), to_scene(item, source="es")
    assert a.id == b.id == event_id("es", item["id"], item_version(item))
    updated = json.loads(json.dumps(item))
    updated["properties"]["updated"] = "2030-01-01T00:00:00Z"
    assert to_scene(updated, source="es").id != a.id
    again = to_scene(item, source="es", replace=True)
    assert again.replace and again.id != a.id


@pytest.mark.parametrize(
    ("name", "band"),
    [
        ("blue", "B02"),
        ("B2", "B02"),
        ("B08A", "B8A"),
        ("nir08", "B8A"),
        ("red-jp2", "B04"),
        ("blue_20m", "B02"),
        ("scl", None),
        ("B13", None),
        ("visual", None),
    ],
)
def test_band_names_normalise(name: str, band: str | None) -> None:
    assert normalise(name) == band


# -- any item: a SceneDiscovered or ItemRejected, never another error ---------------------------
#: JSON values of every kind, NaN and infinities included (Python's json reads them)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(item: JsonDict) -> list[tuple[str | int, ...]]:
    """Where a value can be replaced: every top-level, property and asset field, and inside the
    geometry, the links, the bbox and the assets' band lists."""
    out: list[tuple[str | int, ...]] = [(k,) for k in item]
    out += [("properties", k) for k in item["properties"]]
    out += [("links", 0), ("links", 0, "href"), ("links", 0, "rel"), ("bbox", 0)]
    out += [("geometry", "type"), ("geometry", "coordinates"), ("geometry", "coordinates", 0)]
    for name, asset in item["assets"].items():
        out += [("assets", name, k) for k in asset]
        for key in ("raster:bands", "eo:bands"):
            if isinstance(asset.get(key), list) and asset[key]:
                out += [("assets", name, key, 0, k) for k in asset[key][0]]
    return out


def _put(item: JsonDict, path: tuple[str | int, ...], value: object) -> None:
    """``value`` at ``path`` in ``item``, where the path still leads (an earlier change may have
    replaced a step of it)."""
    node: object = item
    *steps, last = path
    for step in steps:
        if isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
        elif isinstance(node, dict) and isinstance(step, str):
            node = node.get(step)
        else:
            return
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    elif isinstance(node, dict) and isinstance(last, str):
        node[last] = value


@hsettings(
    max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(data=st.data())
def test_any_field_of_any_type_is_mapped_or_rejected_never_raised(
    earth_search_v1: list[JsonDict], data: st.DataObject
) -> None:
    """A real item with up to three fields replaced by any JSON value (found this way: ``links``
    a number, ``mgrs:utm_zone`` a list or a text, a text or a null in the bbox and ``properties``
    or ``assets`` a list raised from the mapping, failing the source's poll; each is a case
    above now)."""
    item = copy.deepcopy(earth_search_v1[0])
    where = st.sampled_from(_paths(item))
    for path, value in data.draw(st.lists(st.tuples(where, JSON_VALUES), min_size=1, max_size=3)):
        _put(item, path, value)
    item_id(item), item_version(item)  # computed before the item is checked
    try:
        to_scene(item, source="fuzz")
    except ItemRejected:
        pass
