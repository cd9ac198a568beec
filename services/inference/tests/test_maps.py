"""Map accuracy: the Boadella reference set, the metrics, the NDWI baseline, bad reference items,
and ``eostream maps evaluate`` end to end with a small model and a sqlite MLflow."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pystac
import pytest
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from rasterio.features import rasterize
from typer.testing import CliRunner

from eostream.inference import accuracy, evaluation, reference, testing
from eostream.inference.evaluation import read_band_on_grid
from eostream.inference.maps_cli import app

LABEL_SCHEMA = Path(__file__).parent / "schemas" / "label-v1.0.1.json"
runner = CliRunner()


def _offline_validator() -> JsonSchemaSTACValidator:
    """pystac's validator with the core schemas it ships and the label extension's schema
    from tests/schemas: no network."""
    validator = JsonSchemaSTACValidator()
    validator.schema_cache[reference_schema_uri()] = json.loads(LABEL_SCHEMA.read_text())
    return validator


def reference_schema_uri() -> str:
    from pystac.extensions.label import LabelExtension

    return LabelExtension.get_schema_uri()


@pytest.fixture
def boadella_ref(data_dir: Path, tmp_path: Path) -> Path:
    return reference.build_boadella(data_dir, tmp_path / "ref")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    card = testing.model_card("rgb", name="small-cnn-untrained", level="L2A")
    path = tmp_path / "small.onnx"
    path.write_bytes(testing.build_small_cnn(card, seed=3))
    return path


def test_boadella_reference_set_is_valid_stac(boadella_ref: Path) -> None:
    pystac.validation.set_validator(_offline_validator())
    try:
        root = pystac.Catalog.from_file(str(boadella_ref.parent.parent / "catalog.json"))
        root.validate_all()
    finally:
        pystac.validation.set_validator(JsonSchemaSTACValidator())
    labels = pystac.Collection.from_file(str(boadella_ref))
    assert labels.extra_fields[reference.MAPPING_FIELD] == {"water": ["SeaLake", "River"]}
    items = {i.id: i for i in labels.get_items()}
    assert sorted(items) == [
        "boadella-water-2020-02-02",
        "boadella-water-2020-06-21",
        "boadella-water-2020-09-14",
        "boadella-water-2021-07-16",
    ]
    coverage = {k: v.properties[reference.COVERAGE_FIELD] for k, v in items.items()}
    assert coverage["boadella-water-2020-02-02"] == reference.PARTIAL
    assert sum(v == reference.COMPLETE for v in coverage.values()) == 3
    item = items["boadella-water-2020-06-21"]
    assert item.properties["label:type"] == "vector"
    assert item.properties["label:tasks"] == ["segmentation"]
    scene = pystac.Item.from_file(str(item.get_links("source")[0].get_absolute_href()))
    assert scene.id == "boadella-2020-06-21"
    assert Path(str(scene.assets["data"].get_absolute_href())).is_file()
    assert Path(str(item.assets["labels"].get_absolute_href())).is_file()
    scenes = list(root.get_child("boadella-scenes").get_items())  # type: ignore[union-attr]
    assert len(scenes) == 12


def test_metrics_on_a_hand_made_example() -> None:
    # 4x4: class 1 = water, 0 = other; the last row is outside the evaluated area
    truth = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    pred = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    valid = np.ones((4, 4), bool)
    valid[3] = False
    cm = accuracy.confusion_matrix(truth, pred, 2, valid)
    assert cm.tolist() == [[7, 1], [1, 3]]  # rows: reference, columns: prediction
    water = accuracy.class_scores(cm, 1)
    assert (water.precision, water.recall) == (0.75, 0.75)
    assert water.f1 == pytest.approx(0.75)
    assert water.iou == pytest.approx(3 / 5)
    assert accuracy.overall_accuracy(cm) == pytest.approx(10 / 12)
    none = accuracy.class_scores(accuracy.confusion_matrix(truth, pred * 0, 2, valid), 1)
    assert none.precision is None and none.recall == 0.0  # nothing predicted: undefined
    water_mask, defined = accuracy.ndwi_water(
        np.array([[0.1, 0.0], [0.3, 0.2]]), np.array([[0.3, 0.0], [0.1, 0.2]])
    )
    assert water_mask.tolist() == [[False, False], [True, False]]
    assert defined.tolist() == [[True, False], [True, True]]


def test_a_tuned_ndwi_threshold_is_chosen_on_the_other_dates_only() -> None:
    """Leave one date out: a date's threshold is the best of the OTHER complete dates' pooled
    water IoU; its own labels (or a partial date's) choose nothing."""
    ref = evaluation.Reference("labels", "labels", {"water": ["SeaLake"]}, "other", [])

    def cm(tp: int, fn: int, fp: int) -> np.ndarray:  # rows: water, other
        return np.array([[tp, fn], [fp, 1000]])

    def sweep(best: float) -> dict[float, np.ndarray]:  # IoU peaks at ``best``
        return {t: cm(100, int(abs(t - best) * 100), 0) for t in accuracy.NDWI_THRESHOLDS}

    def result(date: str, best: float, coverage: str = reference.COMPLETE) -> evaluation.ItemResult:
        return evaluation.ItemResult(
            date, date, date, coverage, 1, cm(1, 0, 0), cm(1, 0, 0), ndwi_sweep=sweep(best)
        )

    a, b, c = result("a", 0.3), result("b", -0.1), result("c", -0.1)
    partial = result("p", 0.5, reference.PARTIAL)
    report = evaluation.Report("m", "m", ref, items=[a, b, c, partial])
    tuned = report.tuned_ndwi(a)
    assert tuned is not None
    assert (tuned[0], tuned[2]) == (-0.1, ["b", "c"])  # not a's own 0.3, not the partial's
    assert (tuned[1] == a.ndwi_sweep[-0.1]).all()
    each = [report.tuned_ndwi(r) for r in (a, b, c)]
    assert each[1] is not None and each[1][2] == ["a", "c"]
    pooled = report.pooled("ndwi_tuned")
    assert pooled is not None
    assert (pooled == np.sum([t[1] for t in each if t is not None], axis=0)).all()
    # a second item of a's date (another scene that day) does not tune a's threshold
    twin = evaluation.ItemResult(
        "a2", "a2", "a", reference.COMPLETE, 1, cm(1, 0, 0), cm(1, 0, 0), ndwi_sweep=sweep(0.5)
    )
    with_twin = evaluation.Report("m", "m", ref, items=[a, twin, b, c])
    assert (t := with_twin.tuned_ndwi(a)) is not None and t[2] == ["b", "c"] and t[0] == -0.1
    # one complete date alone has no other date to tune on
    assert evaluation.Report("m", "m", ref, items=[a]).tuned_ndwi(a) is None
    assert evaluation.Report("m", "m", ref, items=[a]).pooled("ndwi_tuned") is None


def test_ndwi_reaches_high_water_iou_on_a_real_boadella_date(boadella_ref: Path) -> None:
    labels = pystac.Collection.from_file(str(boadella_ref))
    item = labels.get_item("boadella-water-2020-06-21")
    assert item is not None
    scene = pystac.Item.from_file(str(item.get_links("source")[0].get_absolute_href()))
    import rasterio

    with rasterio.open(str(scene.assets["data"].get_absolute_href())) as ds:
        grid, transform, crs = ds.shape, ds.transform, ds.crs
    green = read_band_on_grid(scene, "B03", grid, transform, crs)
    nir = read_band_on_grid(scene, "B08", grid, transform, crs)
    assert 0.01 < float(np.nanmedian(green)) < 0.2  # reflectance, not DN
    water, defined = accuracy.ndwi_water(green, nir)
    shapes = reference.segmentation_geometries(
        json.loads(Path(str(item.assets["labels"].get_absolute_href())).read_text())
    )
    truth = rasterize([(g, 1) for g, _ in shapes], out_shape=grid, transform=transform)
    cm = accuracy.confusion_matrix(truth, water.astype(int), 2, defined)
    assert accuracy.class_scores(cm, 1).iou > 0.8  # type: ignore[operator]


def _break(ref: Path) -> None:
    """Three bad items beside a good (partial) one."""
    folder = ref.parent
    # 1. labels far from their scene (the item's geometry moved 10 degrees east)
    path = folder / "boadella-water-2020-06-21" / "boadella-water-2020-06-21.json"
    item = json.loads(path.read_text())
    shift = [[[x + 10, y] for x, y in ring] for ring in item["geometry"]["coordinates"]]
    item["geometry"]["coordinates"] = shift
    item["bbox"] = [item["bbox"][0] + 10, item["bbox"][1], item["bbox"][2] + 10, item["bbox"][3]]
    path.write_text(json.dumps(item))
    # 2. a class the mapping (and so the model) does not know
    path = folder / "boadella-water-2020-09-14" / "boadella-water-2020-09-14.json"
    item = json.loads(path.read_text())
    item["properties"]["label:classes"] = [{"name": "labels", "classes": ["snow"]}]
    path.write_text(json.dumps(item))
    # 3. a label file that is not GeoJSON
    (folder / "boadella-water-2021-07-16" / "Boadella_2021-07-16_labels.geojson").write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type"'
    )


def test_bad_reference_items_each_get_one_line_and_the_rest_goes_on(
    boadella_ref: Path, tmp_path: Path
) -> None:
    _break(boadella_ref)
    card = testing.model_card("rgb", name="tiny", level="L2A")
    model = tmp_path / "tiny.onnx"
    model.write_bytes(testing.build_onnx(card, seed=1))
    result = runner.invoke(
        app, ["evaluate", "--model", str(model), "--reference", str(boadella_ref.parent)]
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, result.stderr
    assert "Traceback" not in result.stderr
    joined = "\n".join(errors)
    assert "boadella-water-2020-06-21: the labels" in joined and "do not overlap" in joined
    assert "boadella-water-2020-09-14: label class(es) 'snow'" in joined
    assert "boadella-water-2021-07-16: the label file" in joined and "not valid GeoJSON" in joined
    # the good item was still evaluated (partial labels: recall only)
    assert "2020-02-02  partial" in result.stdout
    assert "1 item" not in result.stderr and "3 item(s) could not be evaluated" in result.stderr


def test_a_model_item_is_told_from_an_onnx_file_by_its_name_else_its_first_byte() -> None:
    def unread(uri: str) -> bytes:
        raise AssertionError(f"{uri} was read, its name says what it is")

    item = b' \n{"type": "Feature"}'
    assert evaluation.read_item("s3://models/m/3/item.json", lambda _: item) == item
    assert evaluation.read_item("/models/m/3/model.ONNX", unread) is None
    item_url = "http://stac.example/collections/eostream-models/items/m-3"
    assert evaluation.read_item(item_url, lambda _: item) == item
    assert evaluation.read_item(item_url, lambda _: b"\x08\x08\x12\x07pytorch") is None


def test_a_model_item_that_is_not_one_is_one_line(boadella_ref: Path, tmp_path: Path) -> None:
    """``--model`` may name a version's MLM item (tests/test_map_accuracy.py evaluates a real
    one); a JSON file that is not one ends the command with one line."""
    for text in ('{"id": "x"}', "not json"):
        item = tmp_path / "item.json"
        item.write_text(text)
        result = runner.invoke(
            app, ["evaluate", "--model", str(item), "--reference", str(boadella_ref.parent)]
        )
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and "is not an MLM item" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # a STAC API that does not answer (nothing listens on the port): one line too
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/collections/models/items/m-3"
    result = runner.invoke(
        app, ["evaluate", "--model", url, "--reference", str(boadella_ref.parent)]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_maps_evaluate_end_to_end_logs_to_mlflow(
    data_dir: Path,
    tmp_path: Path,
    model_file: Path,
    sqlite_mlflow: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a STAC API the service would publish its results to: an evaluation's maps never go there
    # (a version's evaluation would replace the served result item, which has the same id)
    requests: list[str] = []

    class Catalogue(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(f"GET {self.path}")
            self.send_error(404)

        do_POST = do_PUT = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    catalogue = ThreadingHTTPServer(("127.0.0.1", 0), Catalogue)
    threading.Thread(target=catalogue.serve_forever, daemon=True).start()
    monkeypatch.setenv(
        "INFERENCE_CATALOG__STAC_API_URL", f"http://127.0.0.1:{catalogue.server_port}"
    )

    built = runner.invoke(
        app,
        [
            "reference", "build", "--from", "boadella", "--out", str(tmp_path / "ref"),
            "--data-dir", str(data_dir), "--date", "2020-06-21", "--date", "2020-09-14",
        ],
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    labels = tmp_path / "ref" / "boadella-water-labels" / "collection.json"
    uri = sqlite_mlflow
    result = runner.invoke(
        app,
        [
            "evaluate", "--model", str(model_file), "--reference", str(labels),
            "--mlflow-uri", uri, "--experiment", "maps-test", "--out", str(tmp_path / "out"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    assert "2020-06-21  complete" in result.stdout and "2020-09-14  complete" in result.stdout
    assert "NDWI water" in result.stdout and "tuned NDWI" in result.stdout
    # how the maps were made, which moves the figures, and what they left uncertain
    made = re.search(r"maps at stride (\d+), uncertain below ([\d.]+): ([\d.]+)% of", result.stdout)
    assert made and made.group(2) == "0.5", result.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pooled"]["ndwi"]["water"]["iou"] > 0.8
    assert (summary["precision"], summary["model_version"]) == ("fp32", None)
    catalogue.shutdown()
    assert requests == [], requests
    assert set(summary["pooled"]["model"]) == {"water", "other"}
    assert (tmp_path / "out" / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("maps-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["ndwi_water_iou"] > 0.8
    assert "water_recall" in run.data.metrics
    assert "2020-06-21/ndwi/water_iou" in run.data.metrics
    assert run.data.params["class_mapping"] == json.dumps({"water": ["SeaLake", "River"]})
    assert run.data.params["precision"] == "fp32"
    assert run.data.params["scoring_uncertain_below"] == "0.5"
    assert run.data.params["scoring_stride"] == made.group(1)
    items = summary["items"]
    assert summary["scoring"]["uncertain_below"] == 0.5
    assert all(0 <= item["uncertain_pixels"] for item in items)
    assert sum(i["uncertain_pixels"] for i in items) / sum(i["pixels"] for i in items) == (
        pytest.approx(float(made.group(3)) / 100, abs=0.001)
    )
    # the tuned baseline: each date's NDWI threshold chosen on the other date's labels
    first, second = items
    assert (first["ndwi_tuned"]["tuned_on"], second["ndwi_tuned"]["tuned_on"]) == (
        ["2020-09-14"],
        ["2020-06-21"],
    )
    assert all(-0.5 <= i["ndwi_tuned"]["threshold"] <= 0.5 for i in items)
    assert summary["pooled"]["ndwi_tuned"]["water"]["iou"] > 0.8
    assert run.data.metrics["ndwi_tuned_water_iou"] > 0.8
    assert "2020-09-14/ndwi_tuned/water_iou" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run.info.run_id, "map-accuracy")}
    assert "map-accuracy/confusion.png" in names
    assert run.data.tags["eostream.package"] == "eostream-inference"  # and the commit
    assert run.data.tags["mlflow.source.git.commit"] != ""


def test_the_confusion_figures_name_the_model_version_precision_and_run() -> None:
    """Their panels said "model eurosat-landcover": which version, file and run made the maps
    scored was in the terminal only."""
    from typing import cast

    from eostream.inference.evaluation import Reference, Report
    from eostream.inference.maps_report import made_by

    report = Report(
        "item.json", "eurosat-landcover", cast(Reference, None), "int8", "3", "2d0599f5c"
    )
    assert made_by(report) == "eurosat-landcover v3, int8\nrun 2d0599f5"
    assert made_by(Report("m.onnx", "m", cast(Reference, None))) == "m, fp32"
