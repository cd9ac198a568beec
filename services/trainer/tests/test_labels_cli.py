"""``eostream labels``: the real Boadella water labels imported as STAC label items, then found
again by class and bbox; in a static catalogue (embedded mode) and in the stack's STAC API, where
the trainer then cuts chips from the collection ingest would announce."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pystac
import pytest
import rasterio
from pydantic import SecretStr
from pystac.extensions.label import LabelExtension
from pystac_client import Client
from rasterio.transform import from_bounds
from shapely.geometry import box, mapping
from typer.testing import CliRunner

from eostream.inference import reference
from eostream.shared.errors import RetryableError
from eostream.shared.events import DatasetUpdated
from eostream.shared.label_catalog import ALL_ITEMS, LabelQuery, StacApiLabelCatalog, items_digest
from eostream.shared.objects import local_path, read_bytes
from eostream.shared.settings import S3Settings
from eostream.shared.storage.s3 import S3ObjectStore
from eostream.trainer.labelled import dataset_plan
from eostream.trainer.labels_cli import app
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.stac_labels import materialize

FOLDER = "sentinel2_scenes/boadella_l2a_sentinelhub/sentinel_2"
IMPORTED = ("2020-06-21", "2020-09-14", "2021-07-16")  # three dates; 2020-02-02 is held out
RESERVOIR = "2.80,42.34,2.83,42.36"
FAR = "10.0,50.0,10.5,50.5"


def scene_file(data_dir: Path, out: Path, date: str) -> Path:
    """A scene item for a Boadella crop (footprint from the raster, date from its name)."""
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
    path = out / f"boadella-{date}.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def import_dates(data_dir: Path, tmp: Path, target: list[str], collection: str) -> None:
    for date in IMPORTED:
        result = invoke(
            "import",
            "--scene", scene_file(data_dir, tmp, date),
            "--geojson", data_dir / FOLDER / f"Boadella_{date}_labels.geojson",
            "--classes", data_dir / FOLDER / "labels.json",
            "--collection", collection,
            *target,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f"boadella-{date}-segmentation-labels: water (segmentation)" in result.stdout
        assert "[4/4] adding" in result.stderr


def ids(result: Any) -> set[str]:
    assert result.exit_code == 0, result.output
    return {line.split("\t")[0] for line in result.stdout.splitlines() if line}


def test_embedded_import_then_search_by_class_and_bbox(data_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    import_dates(data_dir, tmp_path, ["--home", str(home)], "water-labels")
    wanted = {f"boadella-{d}-segmentation-labels" for d in IMPORTED}

    found = invoke("search", "--home", home, "--collection", "water-labels",
                   "--class", "water", "--bbox", RESERVOIR)  # fmt: skip
    assert ids(found) == wanted
    assert ids(invoke("search", "--home", home, "--collection", "water-labels",
                      "--class", "water", "--bbox", FAR)) == set()  # fmt: skip
    assert ids(invoke("search", "--home", home, "--collection", "water-labels",
                      "--class", "forest")) == set()  # fmt: skip
    one = invoke("search", "--home", home, "--collection", "water-labels",
                 "--datetime", "2020-09-01/2020-12-31")  # fmt: skip
    assert ids(one) == {"boadella-2020-09-14-segmentation-labels"}

    # the static catalogue is self-contained and its label items point at their stored labels
    catalog = pystac.Catalog.from_file(str(home / "labels" / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    assert {i.id for i in items} == wanted
    for item in items:
        labels = local_path(item.assets["labels"].href)
        assert labels is not None and labels.is_relative_to(home / "objects")
        assert json.loads(labels.read_text())["features"][0]["properties"]["labels"] == ["water"]
        assert LabelExtension.ext(item).label_tasks == ["segmentation"]
    listed = invoke("list", "--home", home)
    assert listed.stdout.startswith("water-labels\tclasses: water\ttasks: segmentation")
    assert {i.properties[reference.COVERAGE_FIELD] for i in items} == {reference.COMPLETE}

    # 2020-02-02 traces only part of the reservoir: --partial says so, and its chips then hold
    # water where it is drawn (the rest of its pixels are unknown, not background)
    partial = invoke(
        "import", "--scene", scene_file(data_dir, tmp_path, "2020-02-02"), "--partial",
        "--geojson", data_dir / FOLDER / "Boadella_2020-02-02_labels.geojson",
        "--collection", "water-labels", "--home", home,
    )  # fmt: skip
    assert partial.exit_code == 0, partial.output
    catalog = pystac.Catalog.from_file(str(home / "labels" / "catalog.json"))
    [item] = [i for i in catalog.get_items(recursive=True) if "2020-02-02" in i.id]
    assert item.properties[reference.COVERAGE_FIELD] == reference.PARTIAL


def test_a_class_mask_on_the_scene_grid_becomes_a_raster_label_item(
    data_dir: Path, tmp_path: Path
) -> None:
    """The 2020-06-21 water polygon burnt into a mask on the crop's own grid (1 water, 0 other,
    255 nodata in the first rows), imported with --mask and a value -> class mapping."""
    from rasterio.features import rasterize

    date = "2020-06-21"
    doc = json.loads((data_dir / FOLDER / f"Boadella_{date}_labels.geojson").read_text())
    water = [f["geometry"] for f in doc["features"] if "segmentation" in f["properties"]["tasks"]]
    with rasterio.open(data_dir / FOLDER / f"Boadella_{date}.tif") as src:
        profile = {"crs": src.crs, "transform": src.transform}
        shape_ = (src.height, src.width)
    burnt = rasterize(water, out_shape=shape_, transform=profile["transform"], dtype="uint8")
    burnt[:10] = 255
    mask = tmp_path / "water-mask.tif"
    with rasterio.open(mask, "w", driver="GTiff", width=shape_[1], height=shape_[0], count=1,
                       dtype="uint8", nodata=255, **profile) as dst:  # fmt: skip
        dst.write(burnt[np.newaxis])
    home = tmp_path / "home"
    scene = scene_file(data_dir, tmp_path, date)
    mapping_ = ["--value-class", "0=other", "--value-class", "1=water"]
    result = invoke("import", "--scene", scene, "--mask", mask, *mapping_, "--home", home)
    assert result.exit_code == 0, result.output
    (item,) = pystac.Catalog.from_file(str(home / "labels" / "catalog.json")).get_items(
        recursive=True
    )
    label = LabelExtension.ext(item)
    assert str(label.label_type) == "raster"
    assert label.label_classes is not None and label.label_classes[0].classes == ["other", "water"]
    counts = {c.name: c.count for c in (label.label_overviews or [])[0].counts or []}
    assert counts == {"water": int((burnt == 1).sum()), "other": int((burnt == 0).sum())}
    assert item.assets["labels"].media_type == pystac.MediaType.GEOTIFF
    unmapped = invoke("import", "--scene", scene, "--mask", mask,
                      "--value-class", "1=water", "--home", home)  # fmt: skip
    assert unmapped.exit_code == 2
    assert "mask value 0 has no class" in unmapped.stderr


def test_the_installed_command_fails_in_one_line(tmp_path: Path) -> None:
    """The ``eostream`` entry point loads the labels commands; bad input: one line, status 2."""
    import subprocess
    import sys

    eostream = Path(sys.executable).parent / "eostream"
    run = subprocess.run(
        [str(eostream), "labels", "import", "--scene", str(tmp_path / "nope.json"),
         "--geojson", str(tmp_path / "x.geojson"), "--home", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"eostream labels: {tmp_path / 'nope.json'}: no such file"
    )


@pytest.fixture
def bad(tmp_path: Path) -> dict[str, Path]:
    def write(name: str, data: object) -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return path

    inside = mapping(box(2.80, 42.34, 2.81, 42.35))

    def fc(geometry: object, cls: object = "water") -> dict[str, Any]:
        feature = {"type": "Feature", "properties": {"labels": cls}, "geometry": geometry}
        return {"type": "FeatureCollection", "features": [feature]}

    mask = tmp_path / "far-mask.tif"
    with rasterio.open(
        mask, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32631",
        transform=from_bounds(900000, 5500000, 900080, 5500080, 8, 8),
    ) as dst:  # fmt: skip
        dst.write(np.ones((1, 8, 8), dtype="uint8"))
    nocrs = tmp_path / "no-crs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=8, height=8, count=1,
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(np.ones((1, 8, 8), dtype="uint8"))
    return {
        "outside": write("outside.geojson", fc(mapping(box(10, 50, 11, 51)))),
        "unknown": write("unknown.geojson", fc(inside, "lava")),
        "empty": write("empty.geojson", fc({"type": "Polygon", "coordinates": []})),
        "invalid": write("invalid.geojson", fc({"type": "Polygon", "coordinates": [[
            [2.80, 42.34], [2.81, 42.35], [2.81, 42.34], [2.80, 42.35], [2.80, 42.34]]]})),
        "none": write("none.geojson", {"type": "FeatureCollection", "features": []}),
        "notjson": write("notjson.geojson", "{not json"),
        "mask": mask,
        "nocrs": nocrs,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("outside", "labels outside their scene"),
        ("unknown", "unknown class 'lava'"),
        ("empty", "empty geometry"),
        ("invalid", "invalid geometry (Self-intersection"),
        ("none", "has no features"),
        ("notjson", "not JSON"),
        ("mask", "mask outside its scene"),
        ("nocrs", "it has no CRS"),
        ("missing", "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    data_dir: Path, tmp_path: Path, bad: dict[str, Path], case: str, expected: str
) -> None:
    scene = scene_file(data_dir, tmp_path, "2020-06-21")
    home = tmp_path / "home"
    labels: list[str | Path] = ["--geojson", bad.get(case, tmp_path / "missing.geojson")]
    if case in ("mask", "nocrs"):
        labels = ["--mask", bad[case], "--value-class", "1=water"]
    result = invoke("import", "--scene", scene, *labels, "--home", home,
                    "--classes", data_dir / FOLDER / "labels.json")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("eostream labels:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert not (home / "labels").exists()  # nothing was published


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["search", "--bbox", "1,2,3"], "expected WEST,SOUTH,EAST,NORTH"),
        (["search", "--datetime", "yesterday"], "expected START/END"),
        (["import", "--scene", "s.json"], "exactly one of --geojson"),
        (["search", "--collection", "nope"], "no label collection 'nope'"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = invoke(*args, "--home", tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert expected in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["list", "search"])
def test_a_home_that_is_no_folder_is_one_line(tmp_path: Path, command: str) -> None:
    """``--home`` naming a file, or a folder that is not there (a typo), read as an empty
    catalogue: nothing listed, exit 0."""
    afile = tmp_path / "file"
    afile.write_text("x")
    for home, problem in ((afile, "not a folder"), (tmp_path / "typo", "no such folder")):
        result = invoke(command, "--home", home)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == f"eostream labels: --home {home}: {problem}"
    result = invoke("import", "--scene", "s.json", "--geojson", "g.json", "--home", afile)
    assert result.stderr.strip() == f"eostream labels: --home {afile}: not a folder"


# -- the stack's STAC API ----------------------------------------------------------------------


@pytest.fixture
def s3(s3_endpoint: str, s3_credentials: tuple[str, str]) -> S3Settings:
    key, secret = s3_credentials
    return S3Settings(endpoint=s3_endpoint, access_key=SecretStr(key), secret_key=SecretStr(secret))


@pytest.fixture
def stack_collection(stac_api_url: str, s3: S3Settings) -> Iterator[str]:
    """A label collection only this test run writes, deleted afterwards with its items and
    their stored labels."""
    cid = f"labels-test-{uuid.uuid4().hex[:8]}"
    yield cid
    with httpx.Client(base_url=stac_api_url, timeout=10) as http:
        for date in IMPORTED:
            http.delete(f"/collections/{cid}/items/boadella-{date}-segmentation-labels")
        http.delete(f"/collections/{cid}")
    store = S3ObjectStore(s3, "eostream")
    for info in list(store.list(f"labels/{cid}/")):
        store.delete(info.key)


@pytest.mark.stack
def test_stack_import_then_pystac_client_finds_by_class_and_bbox(
    data_dir: Path,
    tmp_path: Path,
    stac_api_url: str,
    stack_collection: str,
    s3: S3Settings,
    stac_validator: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRAINER_STORE", "s3")
    monkeypatch.setenv("TRAINER_S3__ENDPOINT", s3.endpoint)
    monkeypatch.setenv("TRAINER_S3__ACCESS_KEY", s3.access_key.get_secret_value())
    monkeypatch.setenv("TRAINER_S3__SECRET_KEY", s3.secret_key.get_secret_value())
    import_dates(data_dir, tmp_path, ["--stac-api", stac_api_url], stack_collection)

    client = Client.open(stac_api_url)
    collection = client.get_collection(stack_collection)
    assert collection is not None
    assert collection.summaries.get_list("eostream:label_classes") == ["water"]
    assert collection.summaries.get_list("label:tasks") == ["segmentation"]
    interval = collection.extent.temporal.intervals[0]
    assert [t.date().isoformat() for t in interval if t] == ["2020-06-21", "2021-07-16"]
    assert stac_validator(collection.to_dict()) == []

    def search(cls: str, bbox: str) -> set[str]:
        found = client.search(
            collections=[stack_collection],
            bbox=[float(v) for v in bbox.split(",")],
            filter={"op": "a_contains", "args": [{"property": "eostream:label_classes"}, [cls]]},
            filter_lang="cql2-json",
        )
        return {i.id for i in found.items()}

    wanted = {f"boadella-{d}-segmentation-labels" for d in IMPORTED}
    assert search("water", RESERVOIR) == wanted
    assert search("water", FAR) == set()
    assert search("forest", RESERVOIR) == set()
    # the CLI's search says the same, and the labels asset is in the stack's object store
    cli = invoke("search", "--stac-api", stac_api_url, "--collection", stack_collection,
                 "--class", "water", "--bbox", RESERVOIR)  # fmt: skip
    assert ids(cli) == wanted
    # a scene item in the object store, imported again: the item is replaced, not added
    store = S3ObjectStore(s3, "eostream")
    key = f"labels/{stack_collection}/scenes/boadella-2020-06-21.json"
    store.put_file(key, scene_file(data_dir, tmp_path, "2020-06-21"), "application/geo+json")
    again = invoke("import", "--scene", store.uri(key), "--collection", stack_collection,
                   "--geojson", data_dir / FOLDER / "Boadella_2020-06-21_labels.geojson",
                   "--stac-api", stac_api_url)  # fmt: skip
    assert again.exit_code == 0, again.output
    assert search("water", RESERVOIR) == wanted
    replaced = client.get_collection(stack_collection).get_item(  # type: ignore[union-attr]
        "boadella-2020-06-21-segmentation-labels"
    )
    assert replaced is not None
    assert [x.href for x in replaced.links if x.rel == "source"] == [store.uri(key)]

    for item in client.search(collections=[stack_collection]).items():
        href = item.assets["labels"].href
        assert href.startswith("s3://eostream/labels/")
        assert stac_validator(item.to_dict()) == []
        stored = json.loads(read_bytes(href, s3=s3, max_bytes=10_000_000))
        assert [f["properties"]["labels"] for f in stored["features"]] == [["water"]]


@pytest.mark.stack
def test_stack_label_collection_becomes_the_trainers_chips(
    data_dir: Path,
    tmp_path: Path,
    stac_api_url: str,
    stack_collection: str,
    s3: S3Settings,
    monkeypatch: pytest.MonkeyPatch,
    sqlite_settings: TrainerSettings,
) -> None:
    """What ingest announces for a label collection on the stack (its STAC API URL): the trainer
    copies it (the labels from the object store, a scene item stored there too) and cuts chips
    of the labels' classes."""
    for name, value in (
        ("TRAINER_STORE", "s3"),
        ("TRAINER_S3__ENDPOINT", s3.endpoint),
        ("TRAINER_S3__ACCESS_KEY", s3.access_key.get_secret_value()),
        ("TRAINER_S3__SECRET_KEY", s3.secret_key.get_secret_value()),
    ):
        monkeypatch.setenv(name, value)
    built = reference.build_boadella(data_dir, tmp_path / "ref", IMPORTED[:2])
    scenes = built.parent.parent / "boadella-scenes"
    store = S3ObjectStore(s3, "eostream")
    for i, date in enumerate(IMPORTED[:2]):
        scene = scenes / f"boadella-{date}" / f"boadella-{date}.json"
        href = str(scene)
        if i == 0:  # one scene item in the object store, its assets made absolute
            item = json.loads(scene.read_text())
            for asset in item["assets"].values():
                asset["href"] = str((scene.parent / asset["href"]).resolve())
            key = f"labels/{stack_collection}/scenes/boadella-{date}.json"
            store.put_bytes(key, json.dumps(item).encode(), "application/geo+json")
            href = store.uri(key)
        result = invoke("import", "--scene", href, "--collection", stack_collection,
                        "--geojson", data_dir / FOLDER / f"Boadella_{date}_labels.geojson",
                        "--stac-api", stac_api_url)  # fmt: skip
        assert result.exit_code == 0, result.output

    settings = sqlite_settings.model_copy(update={"s3": s3, "cache_dir": tmp_path / "cache"})
    href = f"{stac_api_url}/collections/{stack_collection}"
    event = DatasetUpdated(dataset=stack_collection, href=href, digest="e" * 64, band_set="l2a")
    plan = dataset_plan(event, settings)
    # not the announced digest: the labels' own, as ingest hashes them, names the training
    announced = items_digest(
        StacApiLabelCatalog(stac_api_url).search(LabelQuery(stack_collection, limit=ALL_ITEMS))
    )
    assert plan.request_id == f"dataset-{stack_collection}-{announced[:16]}"
    # a copy is never written under a digest its labels do not have
    with pytest.raises(RetryableError, match="changed while they were read"):
        materialize(href, tmp_path / "stale", s3, expected="0" * 64)
    assert not (tmp_path / "stale").exists()
    assert plan.classes == ("water", "other") and plan.dataset is not None
    assert (plan.architecture, plan.band_set) == ("seg_unet_indices", "l2a")
    assert plan.base_model is None
    # a deployment that starts label models from a EuroSAT classifier's encoder
    start = {
        "label_base_model": "models:/eurosat-ms@champion",
        "label_architecture": "seg_small_cnn",
    }
    started = dataset_plan(event, settings.model_copy(update=start))
    assert (started.base_model, started.architecture, started.dataset) == (
        "models:/eurosat-ms@champion",
        "seg_small_cnn",
        plan.dataset,
    )
    summary = json.loads((Path(plan.dataset).parent / "dataset.json").read_text())
    assert sum(summary["counts"]["train"].values()) > 20, summary
    assert {c for split in summary["counts"].values() for c in split} == {"water", "other"}
    copied = next((settings.cache_dir / "label-stac").iterdir())
    assert (copied / "collection.json").is_file()
    assert len(list(copied.glob("*/scene.json"))) == 1  # the scene from the object store
