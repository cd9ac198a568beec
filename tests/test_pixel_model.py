"""A per-pixel scikit-learn model through the whole path, on real data (issue #19).

The trainer fits a small HistGradientBoosting pixel model on pixels of the real EuroSAT MS
patches (the gate's hold-out left out, the L1C->L2A radiometry jitter on) for a
TrainingRequested asking for ``pixel_hgb``, tracks it with MLflow's scikit-learn autologging and
registers it (an MLflow sqlite registry in the test's folder); the registry-bridge verifies the
ONNX export against the registered scikit-learn estimator, gates it on the EuroSAT hold-out
(patches scored by the mean of the per-pixel probabilities) and on the Boadella reference set
(the map check), promotes and ships it; inference classifies the real Boadella L2A crop of
2020-09-14 with the shipped file. Never trained on the Boadella labels.

Bar: water IoU >= 0.7 on that date (NDWI > 0: 0.930; this small model: ~0.8, the benchmark's
bigger one more, see docs/maps-accuracy.md). ~2-3 minutes on 2 busy cores.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import mlflow
import pytest
import rasterio
from pydantic import SecretStr

from eostream.inference import evaluation, reference
from eostream.inference.settings import InferenceSettings
from eostream.registry_bridge.bridge import build_bridge
from eostream.registry_bridge.registry import build_registry
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared import tags
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import TrainingRequested
from eostream.shared.holdout import HoldoutSettings
from eostream.shared.storage import build_object_store
from eostream.trainer.pipeline import tracker_for, train_and_register
from eostream.trainer.plan import plan_training
from eostream.trainer.settings import TrainerSettings

pytestmark = pytest.mark.slow

DATE = "2020-09-14"
BAR = 0.7
NAME = "eurosat-pixel-e2e"
#: a small hold-out keeps the gate's per-pixel scoring cheap; trainer and bridge share it
HOLDOUT = HoldoutSettings(per_class=5)


async def test_sklearn_pixel_model_is_gated_shipped_and_maps_real_l2a_water(
    data_dir: Path, tmp_path: Path, sqlite_mlflow: str
) -> None:
    mlflow_uri = sqlite_mlflow
    boadella = reference.build_boadella(data_dir, tmp_path / "ref", dates=[DATE])

    # 1. the trainer, asked for a pixel model the way an event asks
    trainer = TrainerSettings(
        bus="memory",
        mlflow_tracking_uri=mlflow_uri,
        experiment_name="pixel-e2e",
        data_dir=data_dir,
        cache_dir=tmp_path / "trainer-cache",
        gate_holdout=HOLDOUT,
        input_augmentation=("radiometry",),
        num_threads=1,  # OpenMP threads of the boosting spin against each other on busy cores
    )
    plan = plan_training(
        TrainingRequested(
            model_name=NAME, band_set="ms13", architecture="pixel_hgb", epochs=5, batch_size=40
        )
    )
    trained = train_and_register(plan, trainer, tracker=tracker_for(trainer))
    version = trained.version
    card = json.loads(version.tags[tags.MODEL_CARD])
    assert (card["task"], card["library"], card["patch_size"]) == ("pixel", "scikit-learn", 1)
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    run = client.get_run(version.run_id)
    assert run.data.params["max_iter"] == "50", "autologged by mlflow.sklearn.autolog"
    assert trained.metrics["onnx_max_abs_diff"] < 1e-3

    # 2. the registry-bridge: verify, gate (hold-out + map check), promote, ship
    bridge_settings = BridgeSettings(
        bus="memory",
        store="local",
        local_store_root=tmp_path / "objects",
        bucket="eostream",
        mlflow_tracking_uri=mlflow_uri,
        data_dir=data_dir,
        model_names=(NAME,),
        holdout=HOLDOUT,
        gate={
            "min_accuracy": 0.2,
            "max_class_drop": 1.0,
            "reference": str(boadella),
            "map_uncertain_below": 0.0,  # as the evaluation below: every pixel its top class
        },
        registration_grace_seconds=0,
        retry_attempts=2,
        retry_backoff_seconds=0.05,
    )
    store = build_object_store(bridge_settings)
    store.check()
    bridge = build_bridge(
        bridge_settings,
        registry=build_registry(bridge_settings),
        store=store,
        bus=InMemoryBus(service="registry-bridge"),
    )
    outcome = await bridge.handle_version(NAME, version.version)
    assert outcome.state == "promoted", outcome.reasons
    gated = dict(client.get_model_version(NAME, version.version).tags)
    assert gated[tags.GATE] == "passed"
    gate_water = float(gated[tags.GATE_MAP_FIGURE])
    model_key, item_key = bridge.shipper.keys(NAME, version.version)
    mlm = json.loads(store.get_bytes(item_key))
    assert mlm["properties"]["eostream:library"] == "scikit-learn"
    shipped = tmp_path / "shipped.onnx"
    shipped.write_bytes(store.get_bytes(model_key))

    # 3. inference classifies the real L2A scene with the shipped model
    inference = InferenceSettings(
        api_key=SecretStr(""),
        bus="memory",
        store="local",
        local_store_root=tmp_path / "inference",
        results_db=f"sqlite:///{tmp_path}/results.db",
        uncertain_below=0.0,  # every pixel gets its top class
        intra_op_threads=2,
    )
    report = await asyncio.to_thread(
        evaluation.evaluate, str(boadella), str(shipped), settings=inference
    )
    assert not report.errors
    (item,) = report.items
    water = evaluation.scores_for(item.model_cm, report.classes, partial=False)["water"]
    assert item.ndwi_cm is not None
    ndwi = evaluation.scores_for(item.ndwi_cm, report.classes, partial=False)["water"]
    logging.getLogger(__name__).warning(
        f"{DATE}: pixel model water IoU {water['iou']:.3f} (gate {gate_water:.3f}), "
        f"NDWI {ndwi['iou']:.3f}"
    )
    assert water["iou"] >= BAR, (water, ndwi)
    assert water["iou"] == pytest.approx(gate_water, abs=1e-6), "one code path"

    (result_path,) = [
        p
        for p in (tmp_path / "inference").rglob("*.json")
        if "eostream:model_library" in p.read_text()
    ]
    result = json.loads(result_path.read_text())["properties"]
    assert result["eostream:model_library"] == "scikit-learn"
    assert result["eostream:model_task"] == "pixel"
    assert result["gsd"] == pytest.approx(10.0, rel=0.01), "the scene's 10 m grid"
    assert result["eostream:window"] == {
        "patch": 1,
        "stride": 1,
        "padding": "reflect",
        "labels": "pixel",
    }
    (cog,) = [p for p in (tmp_path / "inference").rglob("classification.tif")]
    with rasterio.open(cog) as src:  # the crop's own grid (EPSG:4326), one cell per pixel
        labels = src.read(1)
    assert labels.size == result["eostream:pixels"], "one label per 10 m pixel"
    # a true 10 m map: labels change between neighbouring pixels, not in 64 px blocks
    assert (labels[:, 1:] != labels[:, :-1]).mean() > 0.01
