"""Change over time in an area, on twelve real results: the twelve Boadella L2A dates classified
by a real 13-band model (``centre_cnn`` trained for one epoch on the real EuroSAT MS patches, the
map-gate champion's recipe) through the service's own pipeline, served over real HTTP.

The class areas of an area that covers the scene must be the per-scene statistics (written by
the pipeline, computed apart from the aggregation); an area that cuts the scene must count the
pixels whose centre is inside it (checked against a count made here from the COG by longitude).
The data cube is opened with plain xarray. ~1 minute on 2 cores (the training: ~20 s).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
import typer
import xarray as xr
from PIL import Image
from pydantic import SecretStr
from rasterio.windows import Window
from typer.testing import CliRunner

from eostream.inference import testing
from eostream.inference.api.app import create_app
from eostream.inference.errors import BadInputError
from eostream.inference.results_cli import app as results_cli
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import ModelPromoted
from eostream.shared.ops import OpsServer

from .conftest import BOADELLA_BANDS

pytestmark = pytest.mark.slow

DATES = (
    "2020-01-13", "2020-01-18", "2020-01-23", "2020-01-28", "2020-02-02", "2020-06-21",
    "2020-09-14", "2021-06-26", "2021-07-16", "2021-07-21", "2022-03-08", "2022-06-01",
)  # fmt: skip
BOADELLA = "sentinel2_scenes/boadella_l2a_sentinelhub"
AREA = "2.79,42.33,2.84,42.37"  # holds the whole crop (2.79203-2.83802, 42.33058-42.36457)
SPLIT = 2.8151  # a longitude between two pixel centres (pixels are 0.000121 deg wide)
UNCERTAIN = "uncertain"


@pytest.fixture(scope="module")
def model(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelPromoted:
    """A 13-band centre_cnn trained for one epoch the fixed way (docs/maps-accuracy.md)."""
    import torch

    from eostream.shared.modelcard import ModelCard
    from eostream.trainer.export import export_onnx
    from eostream.trainer.recipe import fit_recipe, load_training_data

    tmp = tmp_path_factory.mktemp("areas-model")
    torch.set_num_threads(2)
    data = load_training_data(data_dir, tmp / "cache", "ms13")
    net = fit_recipe(data, "centre_cnn", augmentations=("radiometry", "centre"), epochs=1)
    card = ModelCard(
        name="areas",
        band_set="ms13",
        bands=data.bands,
        scaling=data.scaling,
        architecture="centre_cnn",
    )
    path = tmp / "areas-1.onnx"
    export_onnx(net, card, path)
    blob = path.read_bytes()
    return ModelPromoted(
        name="areas",
        version="1",
        alias="champion",
        artifact_uri=path.as_uri(),
        sha256=hashlib.sha256(blob).hexdigest(),
        mlm_item_href="file:///models/areas/1/mlm.json",
        run_id="run1",
    )


def boadella_item(data_dir: Path, folder: Path, date: str, tif: Path | None = None) -> Path:
    raster = tif or data_dir / BOADELLA / "sentinel_2" / f"Boadella_{date}.tif"
    scene = raster.stem.lower().replace("_", "-")
    item = testing.item_for_raster(
        raster, scene, BOADELLA_BANDS, level="L2A", when=f"{date}T10:30:00Z"
    )
    out = folder / f"{scene}.json"
    out.write_text(json.dumps(item))
    return out


def area_settings(root: Path) -> InferenceSettings:
    return InferenceSettings(
        api_key=SecretStr("areas-key"),
        bus="memory",
        store="local",
        local_store_root=root / "objects",
        results_db=f"sqlite:///{root}/results.db",
        intra_op_threads=2,
        stride=32,
        model_wait_seconds=5,
        model_roots=(tempfile.gettempdir(),),  # the test model's folder
        _env_file=None,
    )


@dataclass(frozen=True)
class Served:
    url: str
    service: InferenceService
    data_dir: Path

    def stats(self, date: str) -> dict[str, object]:
        record = self.service.results.get(f"boadella-{date}")
        assert record is not None
        return record.stats


@pytest.fixture(scope="module")
async def twelve(
    data_dir: Path, model: ModelPromoted, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    root = tmp_path_factory.mktemp("areas")
    settings = area_settings(root)
    service = build_service(settings, bus=InMemoryBus(service="inference"))
    await service.start()
    await asyncio.to_thread(service.deployment.deploy, model)
    for date in DATES:
        href = str(boadella_item(data_dir, root, date))
        await asyncio.to_thread(service.pipeline.classify_href, href)
    server = OpsServer(create_app(settings, service), "127.0.0.1", 0)
    await server.start()
    try:
        yield Served(server.url, service, data_dir)
    finally:
        await server.stop()
        await service.stop()


async def get(url: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as client:
        return await client.get(url, params=params or None)  # {} would drop url's query


def class_pixels(stats: dict[str, object]) -> dict[str, int]:
    classes = stats["classes"]
    assert isinstance(classes, dict)
    out = {name: int(v["pixels"]) for name, v in classes.items()}
    uncertain = stats["uncertain"]
    assert isinstance(uncertain, dict)
    return out | {UNCERTAIN: int(uncertain["pixels"])}


def class_km2(stats: dict[str, object]) -> dict[str, float]:
    classes = stats["classes"]
    uncertain = stats["uncertain"]
    assert isinstance(classes, dict) and isinstance(uncertain, dict)
    out = {name: float(v["area_km2"]) for name, v in classes.items()}
    return out | {UNCERTAIN: float(uncertain["area_km2"])}


async def test_the_areas_of_twelve_dates_are_the_sums_of_the_per_scene_statistics(
    twelve: Served,
) -> None:
    response = await get(f"{twelve.url}/results/aggregate", bbox=AREA)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [d["date"] for d in body["dates"]] == list(DATES)
    assert [e["name"] for e in body["legend"]][-1] == UNCERTAIN
    # every map names its model, and all twelve are one model's: a series of like with like
    [one] = body["models"]
    assert all(d["models"] == [one] for d in body["dates"]) and one.startswith("areas v")
    totals: dict[str, float] = {}
    expected: dict[str, float] = {}
    for entry in body["dates"]:
        stats = twelve.stats(entry["date"])
        assert entry["scenes"] == [f"boadella-{entry['date']}"]
        pixels, km2 = class_pixels(stats), class_km2(stats)
        assert {k: v["pixels"] for k, v in entry["classes"].items()} == pixels
        assert entry["area_pixels"] == stats["pixels"]
        assert entry["nodata_pixels"] == stats["masked_pixels"]
        for name, value in entry["classes"].items():
            # the statistics use one pixel area (the scene's centre), rounded to 4 decimals
            assert value["km2"] == pytest.approx(km2[name], rel=1e-3, abs=2e-4)
            totals[name] = totals.get(name, 0.0) + value["km2"]
            expected[name] = expected.get(name, 0.0) + km2[name]
    assert totals == pytest.approx(expected, rel=1e-3, abs=2e-3)
    assert sum(totals.values()) == pytest.approx(12 * 377 * 380 * 9.995e-5, rel=2e-3)

    as_csv = await get(f"{twelve.url}/results/aggregate", bbox=AREA, f="csv")
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == 12 * len(body["legend"])
    by_key = {(r["date"], r["class"]): r for r in rows}
    for entry in body["dates"]:
        for name, value in entry["classes"].items():
            row = by_key[(entry["date"], name)]
            assert int(row["pixels"]) == value["pixels"]
            assert float(row["km2"]) == pytest.approx(value["km2"])
            assert int(row["nodata_pixels"]) == entry["nodata_pixels"]  # a cloudy date says so
            assert float(row["area_km2"]) == pytest.approx(entry["area_km2"])
    async with httpx.AsyncClient(timeout=120) as client:
        accepted = await client.get(
            f"{twelve.url}/results/aggregate",
            params={"bbox": AREA, "datetime": "2020-06-01T00:00:00Z/2020-12-31T00:00:00Z"},
            headers={"Accept": "text/csv"},
        )
    assert accepted.status_code == 200 and accepted.headers["content-type"].startswith("text/csv")
    assert {r["date"] for r in csv.DictReader(io.StringIO(accepted.text))} == {
        "2020-06-21",
        "2020-09-14",
    }
    # the CLI names the model too (version numbers are each model's own)
    runner = CliRunner()
    for name, rows_expected in (("areas", 12 * len(body["legend"])), ("another-model", 0)):
        args = ["aggregate", "--url", twelve.url, "--bbox", AREA, "--model-name", name]
        result = await asyncio.to_thread(runner.invoke, results_cli, args)
        if rows_expected:
            assert result.exit_code == 0, result.output
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 + rows_expected
            # which result (so which model version) each date's areas come from
            assert lines[0].endswith(",results") and "note:" not in result.output
            first = next(csv.DictReader(io.StringIO("\n".join(lines[:2]))))
            assert first["results"] == " ".join(body["dates"][0]["results"])
        else:
            assert result.exit_code == 2 and "no result map meets the area" in result.output


async def test_an_area_that_cuts_the_scene_counts_the_pixels_inside_it(twelve: Served) -> None:
    west, east, whole = [
        (await get(f"{twelve.url}/results/aggregate", bbox=b, classes="SeaLake,Forest")).json()
        for b in (f"2.79,42.33,{SPLIT},42.37", f"{SPLIT},42.33,2.84,42.37", AREA)
    ]
    date = DATES.index("2020-09-14")
    record = twelve.service.results.get("boadella-2020-09-14")
    assert record is not None
    cog = twelve.service.store.get_bytes(f"{record.prefix}/classification.tif")
    with rasterio.MemoryFile(cog) as mem, mem.open() as ds:
        labels = ds.read(1)
        centres = ds.transform.c + ds.transform.a * (np.arange(ds.width) + 0.5)
    in_west = labels[:, centres < SPLIT]
    names = list(record.stats["classes"])
    for name in ("SeaLake", "Forest"):
        value = names.index(name)
        here = west["dates"][date]["classes"][name]["pixels"]
        assert here == int((in_west == value).sum())
        there = east["dates"][date]["classes"][name]["pixels"]
        assert here + there == whole["dates"][date]["classes"][name]["pixels"]
        assert set(west["dates"][date]["classes"]) == {"SeaLake", "Forest"}
    west_area = west["dates"][date]["area_pixels"]
    assert west_area == in_west.size and 0 < west_area < 377 * 380

    # the same area as a GeoJSON body (POST), and the reservoir's real outline (681 KB)
    box = {"type": "Polygon", "coordinates": [[[2.79, 42.33], [SPLIT, 42.33], [SPLIT, 42.37],
                                               [2.79, 42.37], [2.79, 42.33]]]}  # fmt: skip
    outline = json.loads((twelve.data_dir / BOADELLA / "boadella.geojson").read_text())
    async with httpx.AsyncClient(timeout=120) as client:
        posted = await client.post(
            f"{twelve.url}/results/aggregate",
            json={"intersects": box, "classes": ["SeaLake", "Forest"]},
        )
        reservoir = await client.post(
            f"{twelve.url}/results/aggregate",
            json={"intersects": outline["features"][0]["geometry"], "f": "csv"},
        )
    assert posted.json()["dates"] == west["dates"]
    assert reservoir.status_code == 200, reservoir.text[:300]
    rows = list(csv.DictReader(io.StringIO(reservoir.text)))
    inside = sum(int(r["pixels"]) for r in rows if r["date"] == "2020-09-14")
    assert 0 < inside < 377 * 380


async def test_the_change_matrix_of_two_dates_and_its_map(twelve: Served) -> None:
    aggregate = (await get(f"{twelve.url}/results/aggregate", bbox=AREA)).json()
    response = await get(f"{twelve.url}/results/change", a="2020-06-21", b="2020-09-14", bbox=AREA)
    assert response.status_code == 200, response.text
    change = response.json()
    assert change["a"] == "boadella-2020-06-21__areas__v1"
    by_id = await get(f"{twelve.url}/results/change", a=change["a"], b=change["b"])
    assert by_id.json()["pixels"] == change["pixels"]
    matrix = np.array(change["pixels"])
    dates = {d["date"]: d for d in aggregate["dates"]}
    for i, name in enumerate(change["classes"]):
        assert matrix[i].sum() == dates["2020-06-21"]["classes"][name]["pixels"]
        assert matrix[:, i].sum() == dates["2020-09-14"]["classes"][name]["pixels"]
    assert change["compared_pixels"] == 377 * 380
    assert change["changed_km2"] + change["unchanged_km2"] == pytest.approx(
        dates["2020-06-21"]["area_km2"], rel=1e-6
    )

    png = await get(change["links"]["map"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(png.content)) as picture:  # says what it compares
        texts = dict(picture.text)  # type: ignore[attr-defined]
        colours = picture.getpalette() or []
    assert texts["a"].startswith(change["a"]) and texts["b"].startswith(change["b"])
    assert " v" in texts["a"] and "run " in texts["a"]
    unchanged = tuple(colours[3 * 251 : 3 * 251 + 3])  # its own grey, not a class's colour
    assert unchanged == (205, 205, 205) and "light grey" in texts["description"]
    cog = await get(change["links"]["cog"])
    assert cog.status_code == 200
    with rasterio.MemoryFile(cog.content) as mem, mem.open() as ds:
        codes = ds.read(1)
        assert ds.crs.to_epsg() == 4326 and codes.shape == (377, 380)
    values = [*range(len(change["classes"]) - 1), 254]
    for i, va in enumerate(values):
        for j, vb in enumerate(values):
            assert int((codes == va * 256 + vb).sum()) == matrix[i, j]


async def test_the_cube_opens_with_plain_xarray_and_holds_the_twelve_maps(
    twelve: Served, tmp_path: Path
) -> None:
    out, plot = tmp_path / "area.zarr", tmp_path / "area.png"
    args = ["cube", "--url", twelve.url, "--bbox", AREA, "--out", str(out), "--plot", str(plot)]
    result = await asyncio.to_thread(CliRunner().invoke, results_cli, args)
    assert result.exit_code == 0, result.output
    assert "map 12/12" in result.output and plot.read_bytes().startswith(b"\x89PNG")

    cube = xr.open_zarr(out, mask_and_scale=False)  # plain xarray: uint8 labels, 255 nodata
    labels = cube["classification"]
    assert labels.dims == ("time", "y", "x") and labels.shape == (12, 377, 380)
    assert [str(t)[:10] for t in cube["time"].values] == list(DATES)
    names = labels.attrs["flag_meanings"].split()
    flags = [int(v) for v in labels.attrs["flag_values"]]
    assert names[-1] == UNCERTAIN and flags[-1] == 254
    ref = cube["spatial_ref"].attrs
    assert labels.attrs["grid_mapping"] == "spatial_ref" and 'ID["EPSG",4326]' in ref["crs_wkt"]
    first = twelve.service.results.get("boadella-2020-01-13")
    assert first is not None
    cog = twelve.service.store.get_bytes(f"{first.prefix}/classification.tif")
    with rasterio.MemoryFile(cog) as mem, mem.open() as ds:
        transform = ds.transform
    assert [float(v) for v in ref["GeoTransform"].split()] == pytest.approx(
        [transform.c, transform.a, 0, transform.f, 0, transform.e]
    )
    assert float(cube["x"][0]) == pytest.approx(transform.c + transform.a / 2)
    for t, date in enumerate(DATES):
        plane = labels.isel(time=t).values
        expected = class_pixels(twelve.stats(date))
        assert {n: int((plane == v).sum()) for n, v in zip(names, flags, strict=True)} == expected
    masked = xr.open_zarr(out)["classification"]  # CF decoding: nodata is NaN
    assert masked.dtype.kind == "f"


async def test_bad_input_gets_400_with_a_message(twelve: Served) -> None:
    url = f"{twelve.url}/results/aggregate"
    cases = {
        "intersects is not JSON": {"intersects": "{not json"},
        "must be a GeoJSON Polygon": {"intersects": json.dumps({"type": "Point"})},
        "linear ring needs at least four": {
            "intersects": json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]})
        },
        "must end where it starts": {
            "intersects": json.dumps(
                {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}
            )
        },
        "crosses the antimeridian": {"bbox": "170,-10,-170,10"},
        "unknown class(es) 'Mangrove'": {"bbox": AREA, "classes": "Forest,Mangrove"},
        "give the area": {},
        "must be four numbers": {"bbox": "1,2,3"},
    }
    for message, params in cases.items():
        response = await get(url, **params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["code"] == "bad_input"
        assert message in response.json()["description"], response.text
    unknown = await get(f"{twelve.url}/results/change", a="2019-01-01", b="2020-06-21", bbox=AREA)
    assert unknown.status_code == 404 and "no result of 2019-01-01" in unknown.text

    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, results_cli, ["aggregate", "--url", twelve.url, "--bbox", "170,0,-170,5"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "crosses the antimeridian" in lines[0], result.output


async def test_two_maps_of_different_grids_are_not_compared(
    data_dir: Path, model: ModelPromoted, tmp_path: Path
) -> None:
    """A real crop of the 2020-06-21 scene (another grid) against the whole scene: 400."""
    source = data_dir / BOADELLA / "sentinel_2" / "Boadella_2020-06-21.tif"
    crop = tmp_path / "Boadella_crop_2020-06-21.tif"
    with rasterio.open(source) as ds:
        window = Window(40, 30, 200, 180)
        profile = ds.profile | {
            "width": 200, "height": 180, "transform": ds.window_transform(window),
        }  # fmt: skip
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(ds.read(window=window))
    settings = area_settings(tmp_path)
    service = build_service(settings, bus=InMemoryBus(service="inference"))
    await service.start()
    try:
        await asyncio.to_thread(service.deployment.deploy, model)
        for tif in (None, crop):
            href = str(boadella_item(data_dir, tmp_path, "2020-06-21", tif))
            await asyncio.to_thread(service.pipeline.classify_href, href)
        app = create_app(settings, service)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ids = {r["scene_id"]: r["id"] for r in (await client.get("/results")).json()["results"]}
            a, b = ids["boadella-2020-06-21"], ids["boadella-crop-2020-06-21"]
            response = await client.get("/results/change", params={"a": a, "b": b})
            assert response.status_code == 400
            assert "different grids" in response.json()["description"]
            by_date = await client.get(
                "/results/change", params={"a": "2020-06-21", "b": "2020-06-21", "bbox": AREA}
            )
            assert by_date.status_code == 400 and "pass result ids" in by_date.text
    finally:
        await service.stop()


def test_a_bbox_is_four_finite_numbers() -> None:
    """One parser for every route's bbox (/results, /stac, aggregate): infinities are no box
    (/results and /stac/search took ``-inf,...`` as the whole world)."""
    from eostream.inference.api.params import parse_bbox

    assert parse_bbox("2.8,42.3,2.9,42.4") == (2.8, 42.3, 2.9, 42.4)
    for text in ("-inf,-90,180,90", "0,0,inf,1", "nan,0,1,1", "1,2,3"):
        with pytest.raises(BadInputError, match="must be four numbers"):
            parse_bbox(text)


def test_overwrite_replaces_only_a_zarr_store(tmp_path: Path) -> None:
    """``--overwrite`` removed any folder it was given, with everything in it."""
    from eostream.inference.maps_cli import app as maps_cli

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("keep me")
    for app, args in (
        (maps_cli, ["cube", str(tmp_path / "catalog.json")]),
        (results_cli, ["cube", "--url", "http://127.0.0.1:1", "--bbox", "0,0,1,1"]),
    ):
        result = CliRunner().invoke(app, [*args, "--out", str(victim), "--overwrite"])
        assert result.exit_code != 0 and "is not a zarr store" in result.output, result.output
    assert (victim / "important.txt").read_text() == "keep me"


def test_a_date_past_the_plots_calendar_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A result dated 9999-12-31 (the API stores what an item says) gave `results plot` a
    matplotlib traceback; aggregate and cube take it."""
    from eostream.inference.results_cli import _plot

    legend = [{"name": "Forest", "color_hint": "006400"}]
    dates = [
        {"date": day, "classes": {"Forest": {"km2": 1.0, "pixels": 100}}}
        for day in ("2020-06-21", "9999-12-31")
    ]
    with pytest.raises(typer.Exit):
        _plot({"legend": legend, "dates": dates}, {"bbox": [0, 0, 1, 1]}, tmp_path / "p.png")
    error = capsys.readouterr().err
    assert error.startswith("error: cannot plot these dates (2020-06-21, 9999-12-31)"), error
    assert error.count("\n") == 1
