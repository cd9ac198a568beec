"""The Boadella time series as one cube: values as inference reads them, zarr that plain xarray
opens, pixels sampled under the water labels, and a per-pixel model that maps a held-out date."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.windows import Window
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
from typer.testing import CliRunner

from eostream.inference import accuracy, reference, sampling, scenecube
from eostream.inference.engine import NODATA
from eostream.inference.fetch import gdal_env
from eostream.inference.maps_cli import app
from eostream.inference.scene import SceneReader, prepare_scene
from eostream.shared.label_catalog import StaticLabelCatalog
from eostream.shared.labels import Scene, build_vector_label_item
from eostream.shared.modelcard import BandScaling, ModelCard

HELD_OUT = np.datetime64("2021-07-16T10:30:00", "ns")
TRAIN = ("2020-06-21", "2020-09-14")
#: a few pixels (row, col): reservoir, shore, fields, corners
PIXELS = [(0, 0), (120, 200), (188, 190), (250, 75), (376, 379)]


@pytest.fixture(scope="module")
def boadella(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The reference set (scene items + label items) and its labels collection."""
    out = tmp_path_factory.mktemp("boadella") / "ref"
    return out, reference.build_boadella(data_dir, out)


def test_cube_is_lazy_and_holds_what_inference_feeds_a_model(boadella: tuple[Path, Path]) -> None:
    scenes = scenecube.scenes_in(str(boadella[0]))
    assert len(scenes) == 12
    cube = scenecube.build(scenes, reference.BOADELLA_BANDS)
    assert not cube[scenecube.VARIABLE].variable._in_memory  # nothing read yet
    assert dict(cube[scenecube.VARIABLE].sizes) == {"time": 12, "band": 12, "y": 377, "x": 380}
    t = [str(s.id) for s in scenes].index("boadella-2020-06-21")
    rows, cols = zip(*PIXELS, strict=True)
    got = cube[scenecube.VARIABLE].isel(time=t).values[:, list(rows), list(cols)]  # [band, n]
    # independently: the file's DNs (Sentinel Hub L2A, x10000) in the Boadella band order
    with rasterio.open(scenes[t].item["assets"]["data"]["href"]) as ds:
        dn = np.stack([ds.read(window=Window(c, r, 1, 1))[:, 0, 0] for r, c in PIXELS], axis=1)
    np.testing.assert_allclose(got, dn * 1e-4, rtol=1e-6, atol=1e-7)
    # a model whose card scales reflectance sees cube * scale + offset, through inference's reader
    bands = ("B08", "B03", "B8A")  # not the file's order
    card = ModelCard(
        name="pixel",
        band_set="ms13",
        bands=bands,
        scaling=tuple(BandScaling(band=b, scale=2.5, offset=-0.1) for b in bands),
        processing_level="L2A",
        task="pixel",
        patch_size=1,
    )
    plan = prepare_scene(scenes[t].item, scenes[t].href, card, policy="refuse", b10_fill=0.0)
    with SceneReader(plan, card, gdal_env(None), max_pixels=10**8) as reader:
        units, _ = reader.read(0, 377)
    cube_units = cube[scenecube.VARIABLE].isel(time=t).sel(band=list(bands)).values * 2.5 - 0.1
    for r, c in PIXELS:
        np.testing.assert_allclose(cube_units[:, r, c], units[:, r, c], rtol=1e-5, atol=1e-6)


def test_boadella_cube_pixel_model_maps_a_held_out_date(
    boadella: tuple[Path, Path], tmp_path: Path
) -> None:
    root, labels_href = boadella
    lazy = scenecube.build(scenecube.scenes_in(str(root)), reference.BOADELLA_BANDS)
    store = scenecube.write_zarr(lazy, tmp_path / "boadella.zarr")
    cube = xr.open_zarr(store)  # plain xarray, no eostream
    assert cube.sizes["time"] == 12
    assert cube[scenecube.VARIABLE].attrs["grid_mapping"] == "spatial_ref"
    assert "EPSG" in cube["spatial_ref"].attrs["crs_wkt"]

    labels = sampling.load_labels(str(labels_href))
    assert labels.classes == ("water", "other")
    times = [str(t)[:10] for t in cube["time"].values]
    not_train = [t for t in cube["time"].values if str(t)[:10] not in TRAIN]
    table = sampling.sample(cube, labels, exclude=not_train, max_per_class=3000, seed=0)
    assert sorted({str(t)[:10] for t in table.time}) == list(TRAIN)  # held-out never sampled
    assert table.features == tuple(reference.BOADELLA_BANDS)
    assert table.x.dtype == np.float32 and 0 <= table.x.min() and table.x.max() < 1.5
    assert table.counts() == {"water": 6000, "other": 6000}
    # a value in the table is the cube's value at its time and place
    k = 17
    t_k = times.index(str(table.time[k])[:10])
    np.testing.assert_array_equal(
        table.x[k], cube[scenecube.VARIABLE].isel(time=t_k, y=table.row[k], x=table.col[k]).values
    )
    # the partial date gives positives only: outside its polygons is unknown, not "other"
    partial = sampling.sample(
        cube, labels, exclude=[t for t in cube["time"].values if str(t)[:10] != "2020-02-02"]
    )
    assert len(partial) > 1000 and set(partial.y.tolist()) == {0}
    # spatial split: whole 64-px blocks on one side
    train, test = sampling.block_split(table, size=64, test_fraction=0.25, seed=1)
    assert len(train) and len(test)
    assert not set(train.blocks(64).tolist()) & set(test.blocks(64).tolist())

    # what a pixel model fitted on the table states in its card: these bands, reflectance in
    card = sampling.card_for(table, "boadella-water-hgb")
    assert card.bands == table.bands and card.classes == ("water", "other")
    assert all((s.scale, s.offset) == (1.0, 0.0) for s in card.scaling) and card.patch_size == 1
    with threadpool_limits(1):  # OpenMP threads on shared cores only fight each other
        model = HistGradientBoostingClassifier(max_iter=25, random_state=0).fit(table.x, table.y)
        maps = {t: sampling.classify(cube, t, model.predict) for t in range(cube.sizes["time"])}
    held = times.index("2021-07-16")
    item = next(i for i in labels.items if i.item_id.endswith("2021-07-16"))
    water = labels.classes.index("water")
    model_iou = accuracy.class_scores(sampling.confusion(cube, labels, item, maps[held]), water).iou
    # NDWI > 0 on the same pixels (the map evaluation's baseline)
    plane = cube[scenecube.VARIABLE].isel(time=held)
    is_water, _ = accuracy.ndwi_water(plane.sel(band="B03").values, plane.sel(band="B08").values)
    ndwi_map = np.where(is_water, water, labels.background).astype(np.uint8)
    ndwi_map[maps[held] == NODATA] = NODATA
    ndwi_iou = accuracy.class_scores(sampling.confusion(cube, labels, item, ndwi_map), water).iou
    logging.getLogger(__name__).warning(
        "held-out 2021-07-16 water IoU: pixel model %.3f, NDWI>0 %.3f", model_iou, ndwi_iou
    )
    assert model_iou is not None and model_iou > 0.8
    assert ndwi_iou is not None and ndwi_iou > 0.8
    # the snowy/cloudy 2020-01-18 is left unmapped, not called water or land
    assert (maps[times.index("2020-01-18")] == NODATA).mean() > 0.9

    out = tmp_path / "maps.zarr"
    scenecube.maps_dataset(cube, maps, labels.classes).to_zarr(
        out, consolidated=True, zarr_format=2
    )
    back = xr.open_zarr(out, mask_and_scale=False)["classification"]
    assert back.attrs["flag_meanings"].split()[:2] == ["water", "other"]
    np.testing.assert_array_equal(back.isel(time=held).values, maps[held])


def test_cube_cli_writes_zarr_and_refuses_bad_input(
    boadella: tuple[Path, Path], tmp_path: Path
) -> None:
    root = str(boadella[0])
    runner = CliRunner()
    out = tmp_path / "two.zarr"
    args = ["cube", root, "--out", str(out), "--date", "2020-06-21", "--date", "2021-07-16"]
    done = runner.invoke(app, [*args, "--band", "B03", "--band", "b08"])
    assert done.exit_code == 0, done.output
    cube = xr.open_zarr(out)
    assert [str(b) for b in cube["band"].values] == ["B03", "B08"]
    assert [str(s) for s in cube["scene_id"].values] == [
        "boadella-2020-06-21",
        "boadella-2021-07-16",
    ]
    for bad, says in [
        (args, "exists"),
        (["cube", str(tmp_path / "nope"), "--out", str(tmp_path / "x.zarr")], "not a readable"),
        (["cube", root, "--out", str(tmp_path / "y.zarr"), "--band", "B99"], "unknown band"),
        (["cube", root, "--out", str(tmp_path / "w.zarr"), "--band", "B10"], "no asset for band"),
        (["cube", root, "--out", str(tmp_path / "z.zarr"), "--date", "1999-01-01"], "no scene"),
    ]:
        result = runner.invoke(app, bad)
        assert result.exit_code == 2
        assert says in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_users_label_items_sample_like_the_reference_set(
    boadella: tuple[Path, Path], data_dir: Path, tmp_path: Path
) -> None:
    """A label item as `eostream labels import --home` writes it (shared.labels, a static label
    catalogue, the GeoJSON behind a file:// URI) is sampled on the cube like a reference item."""
    root = boadella[0]
    scene_path = root / "boadella-scenes/boadella-2020-06-21/boadella-2020-06-21.json"
    scene = Scene.from_item(json.loads(scene_path.read_text()), str(scene_path))
    folder = data_dir / reference.BOADELLA_FOLDER / "sentinel_2"
    document = json.loads((folder / "Boadella_2020-06-21_labels.geojson").read_text())
    stored = tmp_path / "objects/labels.geojson"
    built = build_vector_label_item(scene, document, asset_href=stored.as_uri())
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps(built.features))
    StaticLabelCatalog(tmp_path / "labels").add("my-labels", [built.item])

    cube = scenecube.build(scenecube.scenes_in(str(root)), ["B03", "B08"])
    mine = sampling.load_labels(str(tmp_path / "labels"))
    assert mine.classes == ("water", "other")  # the classes drawn, then the background
    table = sampling.sample(cube, mine, max_per_class=500, seed=3)
    assert {str(t)[:10] for t in table.time} == {"2020-06-21"}
    assert table.counts() == {"water": 500, "other": 500}
    ref = sampling.load_labels(str(boadella[1]))
    same_date = [t for t in cube["time"].values if str(t)[:10] != "2020-06-21"]
    theirs = sampling.sample(cube, ref, exclude=same_date)
    # the same polygons: every pixel the user's item calls water, the reference calls water too
    water = {(r, c) for r, c, y in zip(theirs.row, theirs.col, theirs.y, strict=True) if y == 0}
    assert all(
        (r, c) in water for r, c, y in zip(table.row, table.col, table.y, strict=True) if y == 0
    )
