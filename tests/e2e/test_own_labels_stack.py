"""The own-labels loop on the real local stack, each service its own process, with no human step
after the import: the water polygons of three real Boadella dates are imported as STAC label
items into the stack's STAC API (2020-02-02 traces only part of the reservoir: ``--partial``);
ingest announces the label collection; the trainer trains a water segmentation network from
them; the registry-bridge gates it on the dataset's test chips, pixel by pixel, and on its map of
the fourth labelled date (2021-07-16), and promotes it; inference maps all twelve Boadella dates
at 10 m with it. The champion's water IoU on the held-out date is measured beside NDWI > 0 on
the same pixels, in the same run."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio
from mlflow import MlflowClient
from typer.testing import CliRunner

from eostream.inference import evaluation, reference
from eostream.runner.driver import DeploymentDriver, watch_collection
from eostream.runner.processes import ProcessGroup
from eostream.shared import tags
from eostream.shared.deployment import Deployment, LocalStack
from eostream.shared.modelcard import ModelCard
from eostream.shared.objects import absolute_href, read_bytes
from eostream.shared.storage.s3 import S3ObjectStore
from eostream.trainer.labels_cli import app as labels_app

pytestmark = [pytest.mark.stack, pytest.mark.alone, pytest.mark.slow]

log = logging.getLogger(__name__)
TRAIN = ("2020-02-02", "2020-06-21", "2020-09-14")
PARTIAL = {"2020-02-02"}
HELD_OUT = "2021-07-16"
FOLDER = reference.BOADELLA_FOLDER + "/sentinel_2"

#: every pixel gets its top class, as the bridge's map check scores maps (`eostream maps evaluate`
#: with INFERENCE_UNCERTAIN_BELOW=0)
SCORING = {"uncertain_below": 0.0, "intra_op_threads": 2}


def _absolute(scene: Path) -> dict[str, Any]:
    """A Boadella scene item with its asset hrefs absolute (the services read the crops where
    they lie)."""
    item: dict[str, Any] = json.loads(scene.read_text())
    for asset in item["assets"].values():
        asset["href"] = str((scene.parent / asset["href"]).resolve())
    item["links"] = []
    return item


class OwnLabels:
    """The deployment, its scene and label collections, and the scene items to insert."""

    def __init__(self, driver: DeploymentDriver, labels: str, scenes: dict[str, Path]) -> None:
        self.driver = driver
        self.labels = labels
        self.scenes = scenes


@pytest.fixture(scope="module")
def own_labels(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnLabels]:
    try:
        stack = LocalStack.from_environ()
    except Exception as exc:  # the stack tests fail, never skip, without the stack
        pytest.fail(str(exc))
    run = uuid.uuid4().hex[:8]
    home = tmp_path_factory.mktemp(f"own-labels-{run}")
    labels, scene_collection = f"water-{run}", f"boadella-{run}"
    built = reference.build_boadella(data_dir, home / "reference")
    scene_dir = built.parent.parent / "boadella-scenes"
    scenes = {p.parent.name: p for p in sorted(scene_dir.glob("boadella-*/boadella-*.json"))}
    # the gate's map check: the fourth labelled date, which no label item of the loop covers
    gate_reference = reference.build_boadella(data_dir, home / "gate-reference", (HELD_OUT,))
    body = {
        "type": "Collection",
        "id": scene_collection,
        "stac_version": "1.1.0",
        "description": "Boadella L2A crops (Sentinel Hub)",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[2.7, 42.3, 2.9, 42.4]]},
            "temporal": {"interval": [["2020-01-01T00:00:00Z", None]]},
        },
        "links": [],
    }
    httpx.post(f"{stack.stac_api_url}/collections", json=body, timeout=30).raise_for_status()
    deployment = Deployment(
        name=f"own-labels-{run}",
        home=home,
        data_dir=data_dir,
        topic_prefix=f"own-labels-{run}.",
        model_name=labels,  # a label collection's model is named after it
    )
    group = ProcessGroup(
        stack,
        deployment,
        env={
            "ingest": {
                "INGEST_SOURCES": watch_collection(stack, scene_collection, "boadella"),
                "INGEST_POLL_INTERVAL_SECONDS": "1",
                "INGEST_LABELS__CATALOG": stack.stac_api_url,
                "INGEST_LABELS__COLLECTIONS": json.dumps([labels]),
                "INGEST_LABELS__POLL_INTERVAL_SECONDS": "1",
            },
            "trainer": {
                "TRAINER_NUM_THREADS": "2",
                "TRAINER_DEVICE": "cpu",
                # 100 optimiser steps, not the default 300: the masks' water is learnt before that
                "TRAINER_MIN_CHIP_STEPS": "100",
            },
            "registry-bridge": {
                "BRIDGE_GATE__REFERENCE": str(gate_reference),
                "BRIDGE_RECONCILE_INTERVAL_SECONDS": "5",
                "BRIDGE_CATALOG__COLLECTION": f"own-labels-models-{run}",
            },
            "inference": {
                "INFERENCE_INTRA_OP_THREADS": "1",
                "INFERENCE_RESULTS_PREFIX": f"own-labels-results-{run}",
                "INFERENCE_COLLECTION_ID": f"own-labels-classifications-{run}",
                "INFERENCE_CATALOG__COLLECTION": f"own-labels-results-{run}",
            },
        },
    )
    stopping = threading.Event()
    supervisor = threading.Thread(
        target=group.supervise, args=(stopping.is_set,), kwargs={"poll": 0.5}, daemon=True
    )
    group.start()
    supervisor.start()
    store = S3ObjectStore(stack.s3_settings(), "eostream")
    try:
        yield OwnLabels(DeploymentDriver(stack, group, run, scene_collection, {}, store), labels,
                        scenes)  # fmt: skip
    finally:
        stopping.set()
        supervisor.join(timeout=10)
        group.stop()
        ours = (f"own-labels-results-{run}", f"own-labels-models-{run}")
        for collection in (scene_collection, labels, *ours):
            httpx.delete(f"{stack.stac_api_url}/collections/{collection}", timeout=30)


@pytest.mark.usefixtures("root_logging")
def test_labels_imported_into_the_stac_api_end_as_a_segmentation_champion_mapping_twelve_dates(
    own_labels: OwnLabels, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, stack = own_labels.driver, own_labels.driver.stack
    s3 = stack.s3_settings()
    # the labels CLI stores the GeoJSON in the stack's object store, where the services read it
    for name, value in (
        ("TRAINER_STORE", "s3"),
        ("TRAINER_S3__ENDPOINT", s3.endpoint),
        ("TRAINER_S3__ACCESS_KEY", s3.access_key.get_secret_value()),
        ("TRAINER_S3__SECRET_KEY", s3.secret_key.get_secret_value()),
    ):
        monkeypatch.setenv(name, value)
    for date in TRAIN:
        scene = tmp_path / f"boadella-{date}.json"
        scene.write_text(json.dumps(_absolute(own_labels.scenes[f"boadella-{date}"])))
        words = ["import", "--scene", str(scene), "--collection", own_labels.labels,
                 "--geojson", str(data_dir / FOLDER / f"Boadella_{date}_labels.geojson"),
                 "--stac-api", stack.stac_api_url]  # fmt: skip
        imported = CliRunner().invoke(
            labels_app, [*words, *(["--partial"] if date in PARTIAL else [])]
        )
        assert imported.exit_code == 0, imported.output

    # no step after the import: announced, trained, gated and promoted by the services
    [promoted] = system.wait(
        "the label collection's first champion", system.promoted, 900, every=3.0
    )
    system.wait_for_champion(promoted.version, timeout=240)
    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    version = client.get_model_version(own_labels.labels, promoted.version)
    card = ModelCard.from_json(version.tags[tags.MODEL_CARD])
    assert (card.task, card.architecture, card.classes) == (
        "segmentation",
        "seg_unet_indices",  # the trainer's default model for labels
        ("water", "other"),
    )
    assert version.tags[tags.GATE] == tags.GATE_PASSED
    assert version.tags[tags.GATE_MAP] == tags.GATE_PASSED  # its map of 2021-07-16, scored
    gate_map_iou = float(version.tags[tags.GATE_MAP_FIGURE])
    run = client.get_run(str(version.run_id))
    assert run.data.metrics["test_pixel_iou_water"] > 0.8, run.data.metrics

    # the twelve dates arrive as scenes: every one is mapped by the champion, at 10 m
    for scene_id, path in own_labels.scenes.items():
        body = _absolute(path) | {"collection": system.collection}
        response = httpx.post(
            f"{stack.stac_api_url}/collections/{system.collection}/items", json=body, timeout=30
        )
        assert response.status_code in (200, 201), (scene_id, response.text[:300])
    results = system.wait_for_results(list(own_labels.scenes), 600)
    assert len(results) == 12
    for scene_id, result in results.items():
        assert result["model_version"] == promoted.version, (scene_id, result)
        assert set(result["class_shares"]) <= {"water", "other", "uncertain"}, result
        result_item = httpx.get(f"{system.inference_url}/results/{scene_id}/item", timeout=30)
        properties = result_item.json()["properties"]
        assert properties["eostream:model_task"] == "segmentation"
        assert properties["eostream:window"]["labels"] == "centre crop per pixel"
        assert properties["gsd"] == pytest.approx(10.0, rel=0.01), "the scene's 10 m grid"
        # the bridge's int8 twin passed its pixel check: the CPU maps come from it
        assert properties["eostream:model_precision"] == "int8", properties
    held_out = results[f"boadella-{HELD_OUT}"]
    assert 0.02 < held_out["class_shares"]["water"] < 0.2, held_out
    cog = httpx.get(f"{system.inference_url}/results/boadella-{HELD_OUT}/cog", timeout=30)
    cog.raise_for_status()
    tif = data_dir / FOLDER / f"Boadella_{HELD_OUT}.tif"
    with rasterio.open(tif) as scene, rasterio.MemoryFile(cog.content) as mem, mem.open() as ds:
        # the scene's own 10 m grid (the crop is stored in lon/lat): one label per pixel
        assert (ds.shape, ds.crs) == (scene.shape, scene.crs)
        assert ds.transform.almost_equals(scene.transform)

    # the champion's water on the held-out date against its labels, beside NDWI > 0
    onnx = tmp_path / "champion.onnx"
    onnx.write_bytes(read_bytes(promoted.artifact_uri, s3=s3, max_bytes=50_000_000))
    ref = reference.build_boadella(data_dir, tmp_path / "held-out", (HELD_OUT,))
    report = evaluation.evaluate(str(ref), str(onnx), overrides=SCORING)
    assert not report.errors, report.errors
    [item] = report.items
    assert item.ndwi_cm is not None
    model = evaluation.scores_for(item.model_cm, report.classes, partial=False)["water"]
    ndwi = evaluation.scores_for(item.ndwi_cm, report.classes, partial=False)["water"]
    log.warning(
        "%s: champion water IoU %.3f (P %.3f R %.3f), NDWI > 0 %.3f; gate map mean IoU %.3f",
        HELD_OUT, model["iou"], model["precision"], model["recall"], ndwi["iou"], gate_map_iou,
    )  # fmt: skip
    assert model["iou"] >= ndwi["iou"] - 0.03, (model, ndwi)
    assert np.isfinite(gate_map_iou)

    # the int8 file that made the twelve maps, scored the same way
    assert version.tags[tags.INT8] == "passed", version.tags.get(tags.INT8_REASONS)
    mlm_item = json.loads(read_bytes(promoted.mlm_item_href, s3=s3, max_bytes=5_000_000))
    int8_href = absolute_href(mlm_item["assets"]["model_int8"]["href"], promoted.mlm_item_href)
    int8 = tmp_path / "champion.int8.onnx"
    int8.write_bytes(read_bytes(int8_href, s3=s3, max_bytes=50_000_000))
    [item8] = evaluation.evaluate(str(ref), str(int8), overrides=SCORING).items
    model8 = evaluation.scores_for(item8.model_cm, report.classes, partial=False)["water"]
    log.warning(
        "%s: int8 champion water IoU %.3f (P %.3f R %.3f)",
        HELD_OUT, model8["iou"], model8["precision"], model8["recall"],
    )  # fmt: skip
    assert model8["iou"] == pytest.approx(model["iou"], abs=0.02), (model8, model)
