"""The gate's map check on the real stack's MLflow, the real Boadella reference set and real models.

Three 13-band models are trained for seconds on the real EuroSAT MS patches (outside the gate's
hold-out), the way the trainer does (``eostream.trainer``):

* ``champion``: centre_cnn with the radiometry and centre augmentations, 1 epoch;
* ``patches``: small_cnn without them, 3 epochs: better on EuroSAT patches, worse on the L2A maps
  (docs/maps-accuracy.md: it has never seen L2A-dark visible bands, so it floods the hills);
* ``better``: the champion's recipe, 2 epochs: better on both.

No figure is written by hand: the hold-out accuracy and the map figures are the gate's own
evaluations, read back from the versions' tags. The test checks that the models are what their
names say (from those figures) and then the verdicts. The reference set is the real Boadella
water labels of 2020-09-14, built by ``eostream maps reference build``'s code.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch

from eostream.inference import reference
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared import tags
from eostream.shared.holdout import HoldoutSettings
from eostream.shared.modelcard import ModelCard
from eostream.trainer.export import export_onnx
from eostream.trainer.models import EuroSATNet
from eostream.trainer.recipe import fit_recipe, load_training_data

from .conftest import make_bridge, register_version

pytestmark = [pytest.mark.stack, pytest.mark.slow]

DATE = "2020-09-14"
FIXED = ("radiometry", "centre")  # the augmentations that make maps right on L2A scenes


@dataclass(frozen=True)
class Trained:
    model: EuroSATNet
    onnx: bytes
    card: ModelCard


@pytest.fixture(scope="session")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    tmp = tmp_path_factory.mktemp("map-gate-models")
    torch.set_num_threads(2)
    data = load_training_data(data_dir, tmp / "cache", "ms13")
    recipes = {
        "champion": ("centre_cnn", FIXED, 1),
        "patches": ("small_cnn", (), 3),
        "better": ("centre_cnn", FIXED, 2),
    }
    out = {}
    for role, (architecture, augmentations, epochs) in recipes.items():
        model = fit_recipe(data, architecture, augmentations=augmentations, epochs=epochs)
        card = ModelCard(
            name="eurosat-landcover",
            band_set="ms13",
            bands=data.bands,
            scaling=data.scaling,
            architecture=architecture,
            training_data_digest=data.selection.digest,
        )
        path = tmp / f"{role}.onnx"
        export_onnx(model, card, path)
        out[role] = Trained(model, path.read_bytes(), card)
    return out


@pytest.fixture(scope="session")
def boadella(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference.build_boadella(data_dir, tmp_path_factory.mktemp("boadella"), dates=[DATE])


def settings_for(
    mlflow_uri: str, data_dir: Path, tmp: Path, name: str, **gate: Any
) -> BridgeSettings:
    return BridgeSettings(
        bus="memory",
        store="local",
        local_store_root=tmp / "objects",
        bucket="eostream",
        mlflow_tracking_uri=mlflow_uri,
        data_dir=data_dir,
        model_names=(name,),
        holdout=HoldoutSettings(),  # the trainer's selection left exactly these out
        # the per-class recall check is opened wide: this test is about the map check
        gate={"min_accuracy": 0.2, "max_class_drop": 1.0, **gate},
        registration_grace_seconds=0,
        retry_attempts=2,
        retry_backoff_seconds=0.05,
    )


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(mlflow.MlflowClient().get_model_version(name, version).tags)


def champion_of(name: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, tags.CHAMPION).version)


async def test_gate_refuses_better_patches_worse_maps_and_promotes_better_on_both(
    mlflow_uri: str,
    data_dir: Path,
    tmp_path: Path,
    trained: dict[str, Trained],
    boadella: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    name = f"eurosat-landcover-mapgate-{uuid.uuid4().hex[:8]}"

    def register(role: str) -> str:
        t = trained[role]
        return register_version(mlflow_uri, t.model, name=name, onnx_bytes=t.onnx, card=t.card)

    # 1. The champion is gated by a bridge without a reference set: the map check is skipped.
    plain = make_bridge(settings_for(mlflow_uri, data_dir, tmp_path, name))
    v1 = register("champion")
    assert (await plain.handle_version(name, v1)).state == "promoted"
    t1 = version_tags(name, v1)
    assert t1[tags.GATE_MAP] == tags.GATE_MAP_SKIPPED
    assert any("map check skipped" in r for r in json.loads(t1[tags.GATE_REASONS]))
    assert tags.GATE_MAP_FIGURE not in t1

    # 2. With the Boadella reference set: better on patches, worse on the map -> failed.
    configured = settings_for(
        mlflow_uri, data_dir, tmp_path, name, reference=str(boadella), map_stride=16
    )
    bridge = make_bridge(configured)
    v2 = register("patches")
    caplog.set_level(logging.INFO, logger="eostream.registry_bridge.gatekeeper")
    outcome = await bridge.handle_version(name, v2)
    t2, t1 = version_tags(name, v2), version_tags(name, v1)
    # what the two models are, by the gate's own evaluations
    assert float(t2[tags.GATE_ACCURACY]) > float(t1[tags.GATE_ACCURACY]), "better on patches"
    champion_figure = float(t1[tags.GATE_MAP_MEAN_IOU])  # scored once, kept in its tags
    assert t1[tags.GATE_MAP_KEY] == t2[tags.GATE_MAP_KEY]
    assert float(t2[tags.GATE_MAP_CHAMPION_FIGURE]) == pytest.approx(champion_figure, abs=1e-6)
    figure = float(t2[tags.GATE_MAP_FIGURE])
    assert figure < champion_figure - configured.gate.map_margin, "worse on the map"
    # the figures say what they were measured on and with, beside the baseline on those pixels
    conditions = json.loads(t2[tags.GATE_MAP_CONDITIONS])
    assert conditions == {
        "reference": "boadella-water-labels",
        "items": conditions["items"],
        "stride": 16,
        "uncertain_below": 0.5,  # inference's default: the figure is that of the maps served
        "file": "fp32",
    }
    assert conditions["items"] and all(i.startswith("boadella-water-") for i in conditions["items"])
    assert json.loads(t1[tags.GATE_MAP_CONDITIONS]) == conditions  # the champion, same set
    assert (
        0.8 < float(t2[tags.GATE_MAP_NDWI_IOU]) == pytest.approx(float(t1[tags.GATE_MAP_NDWI_IOU]))
    )
    # the verdict
    assert outcome.state == "failed"
    assert (t2[tags.GATE], t2[tags.GATE_MAP], t2[tags.GATE_MAP_METRIC]) == (
        "failed",
        "failed",
        "mean_iou",
    )
    failures = [r for r in json.loads(t2[tags.GATE_REASONS]) if r.startswith("FAIL")]
    assert len(failures) == 1 and failures[0].startswith("FAIL: map mean_iou"), failures
    assert f"{figure:.4f}" in failures[0] and f"{champion_figure:.4f}" in failures[0]
    assert champion_of(name) == v1
    # the figures are on the candidate's gate run too
    run = mlflow.MlflowClient().get_run(t2[tags.GATE_EVAL_RUN]).data.metrics
    assert run["map_mean_iou"] == pytest.approx(figure, abs=1e-6)
    assert run["map_iou_water"] == pytest.approx(figure, abs=1e-6)  # one reference class
    assert 0 < run["map_ndwi_iou_water"] <= 1 and 0 < run["map_overall_accuracy"] <= 1
    scorings = [r for r in caplog.records if "scoring the champion" in r.getMessage()]
    assert len(scorings) == 1

    # 3. Better on both -> promoted; a fresh bridge reads the champion's figures from its tags.
    caplog.clear()
    bridge = make_bridge(configured)
    v3 = register("better")
    outcome = await bridge.handle_version(name, v3)
    t3 = version_tags(name, v3)
    assert float(t3[tags.GATE_ACCURACY]) > float(t1[tags.GATE_ACCURACY])
    assert float(t3[tags.GATE_MAP_FIGURE]) > champion_figure
    assert outcome.state == "promoted", outcome.reasons
    assert (t3[tags.GATE], t3[tags.GATE_MAP]) == ("passed", "passed")
    assert champion_of(name) == v3
    assert not [r for r in caplog.records if "scoring the champion" in r.getMessage()]
