"""The int8 variant: quantised after the gate, checked against fp32, shipped beside it only when it
passes; inference on CPU runs it and says so in its result items.

The model is the fixtures' small CNN trained for seconds on real EuroSAT RGB patches; the int8
one is made by the bridge's own quantisation, calibrated on real training patches, and checked on
the real hold-out. Inference reads what the bridge shipped (local store) and classifies a real
(downsampled) Sentinel-2 scene with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
from onnx import numpy_helper
from pydantic import SecretStr

from eostream.inference import testing
from eostream.inference.model import ModelInfo, load_model
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.registry_bridge.calibration import (
    calibration_files,
    load_calibration,
    training_candidates,
)
from eostream.registry_bridge.holdout import Holdout
from eostream.registry_bridge.input_stem import FUSED_NODE
from eostream.registry_bridge.quantize import check, judge
from eostream.registry_bridge.settings import BridgeSettings, Int8Settings
from eostream.shared import mlm, tags
from eostream.shared.events import ModelPromoted
from eostream.shared.holdout import HoldoutSettings, held_out_files
from eostream.shared.modelcard import EUROSAT_CLASSES, ModelCard
from eostream.shared.storage import build_object_store

from .conftest import HOLDOUT_PER_CLASS, make_bridge

NAME = "eurosat-landcover"
RKH = "sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled/S2A_29RKH_20200219_0_L2A.json"


def with_int8(settings: BridgeSettings, **int8: Any) -> BridgeSettings:
    return settings.model_copy(update={"int8": Int8Settings(enabled=True, **int8)})


def promoted_event(version: str) -> ModelPromoted:
    """The ModelPromoted the bridge announced, rebuilt from the tags it wrote on the version."""
    mv = mlflow.MlflowClient().get_model_version(NAME, version)
    return ModelPromoted(
        name=NAME,
        version=version,
        alias=tags.CHAMPION,
        artifact_uri=mv.tags[tags.ARTIFACT_URI],
        sha256=mv.tags[tags.SHA256],
        mlm_item_href=mv.tags[tags.MLM_ITEM_HREF],
        run_id=mv.run_id,
        promoted_by="registry-bridge",
        reason="test",
        source="registry-bridge",
    )


def classify(tmp: Path, data_dir: Path, event: ModelPromoted, **overrides: Any) -> dict[str, Any]:
    """Deploy ``event`` on a CPU-only inference service and classify the real 29RKH scene;
    returns the result item's properties and the live model's description."""
    settings = InferenceSettings(
        api_key=SecretStr("test-key-123"),
        bus="memory",
        store="local",
        local_store_root=tmp / "objects",
        results_db=f"sqlite:///{tmp}/results.db",
        intra_op_threads=1,
        stride=32,
        allow_coarse_scenes=True,
        providers=("CPUExecutionProvider",),
        model_roots=(str(tmp.parent),),  # where the bridge's own store shipped it
        _env_file=None,
        **overrides,
    )
    tmp.mkdir(parents=True, exist_ok=True)
    item = tmp / "rkh.json"
    testing.localise_item(data_dir / RKH, item)
    service = build_service(settings, consume=False)
    try:
        service.deployment.deploy(event)
        outcome = service.pipeline.classify_href(str(item))
        described = service.deployment.describe()
    finally:
        service.results.close()
    return {"properties": outcome.record.item["properties"], "model": described}


async def test_a_passing_int8_ships_beside_fp32_and_inference_runs_it_on_cpu(
    bridge_settings: BridgeSettings, register: Any, models: Any, tmp_path: Path, data_dir: Path
) -> None:
    settings = with_int8(bridge_settings, max_accuracy_loss=0.05)
    store = build_object_store(settings)
    bridge = make_bridge(settings, store=store)
    version = register(models.better)
    assert (await bridge.handle_version(NAME, version)).state == "promoted"

    model_key, item_key = bridge.shipper.keys(NAME, version)
    int8_key = model_key.replace("model.onnx", "model.int8.onnx")
    assert sorted(o.key for o in store.list("models/")) == sorted([model_key, int8_key, item_key])
    fp32, int8 = store.get_bytes(model_key), store.get_bytes(int8_key)
    assert b"QuantizeLinear" in int8 and b"QuantizeLinear" not in fp32  # (QDQ)
    # every convolution int8, the first one's input quantised once per band by a QuantizeLinear
    # that also does the model's normalisation (x / 255 here)
    graph = onnx.load_model_from_string(int8).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    weights = [made_by.get(node.input[1], "fp32") for node in graph.node if node.op_type == "Conv"]
    assert weights == ["DequantizeLinear"] * len(weights) and len(weights) > 1
    assert [n.name for n in graph.node if graph.input[0].name in n.input] == [FUSED_NODE]
    item = json.loads(store.get_bytes(item_key))
    asset = item["assets"][mlm.INT8_ASSET]
    assert asset["file:checksum"] == "1220" + hashlib.sha256(int8).hexdigest()
    assert asset["file:size"] == len(int8) and asset[mlm.PRECISION] == "int8"
    assert asset["eostream:int8_check"] == "passed" and "mlm:model" not in asset["roles"]
    assert item["assets"]["model"][mlm.PRECISION] == "fp32"
    # both kernels were timed (BRIDGE_INT8__CONV_KERNEL=auto) and the item says which shipped:
    # the GEMM one stores the int8 convolution weights with zero point -1, the direct one with 0
    kernel = asset["eostream:int8_conv_kernel"]
    initialisers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    conv_weights = {node.input[1] for node in graph.node if node.op_type == "Conv"}
    zero_points = {
        int(initialisers[node.input[2]].flat[0])
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.output[0] in conv_weights
    }
    assert zero_points == {-1 if kernel == "gemm" else 0}
    # loaded by its path (evaluation of a local file), the int8 file still names itself int8
    info = ModelInfo(name=NAME, version=version)
    cpu = ("CPUExecutionProvider",)
    assert load_model(int8, info, expected_sha256=None, providers=cpu).precision == "int8"
    assert load_model(fp32, info, expected_sha256=None, providers=cpu).precision == "fp32"
    assert item["properties"]["eostream:sha256"] == hashlib.sha256(fp32).hexdigest()
    # the verdict and its figures, on the version
    vtags = mlflow.MlflowClient().get_model_version(NAME, version).tags
    assert vtags[tags.INT8] == "passed"
    assert vtags[tags.INT8_SHA256] == hashlib.sha256(int8).hexdigest()
    delta = float(vtags[tags.INT8_ACCURACY_DELTA])
    assert -0.05 <= delta == asset["eostream:holdout_accuracy_delta"]
    assert 0 < float(vtags[tags.INT8_AGREEMENT]) <= 1
    reasons = json.loads(vtags[tags.INT8_REASONS])
    assert reasons[0].startswith("PASS: hold-out accuracy int8")
    assert any(f"on onnxruntime's {kernel} kernels, timed here" in r for r in reasons), reasons

    # inference on CPU runs the int8 file and names it; with int8 off, the fp32 one
    event = promoted_event(version)
    ran = classify(tmp_path / "int8", data_dir, event)
    assert ran["properties"]["eostream:model_precision"] == "int8"
    assert ran["properties"]["eostream:execution_provider"] == "CPUExecutionProvider"
    assert ran["properties"]["eostream:model_sha256"] == event.sha256  # the version's identity
    assert ran["model"]["precision"] == "int8"
    off = classify(tmp_path / "fp32", data_dir, event, int8_on_cpu=False)
    assert off["properties"]["eostream:model_precision"] == "fp32"


async def test_an_int8_that_fails_its_check_is_not_shipped_and_fp32_is(
    bridge_settings: BridgeSettings,
    register: Any,
    models: Any,
    card: ModelCard,
    tmp_path: Path,
    data_dir: Path,
) -> None:
    # a loss of at most -1 asks int8 to be 100 points more accurate than fp32: it cannot be
    settings = with_int8(bridge_settings, max_accuracy_loss=-1.0)
    store = build_object_store(settings)
    bridge = make_bridge(settings, store=store)
    version = register(models.better)
    assert (await bridge.handle_version(NAME, version)).state == "promoted"

    model_key, item_key = bridge.shipper.keys(NAME, version)
    assert sorted(o.key for o in store.list("models/")) == sorted([model_key, item_key])
    item = json.loads(store.get_bytes(item_key))
    assert list(item["assets"]) == ["model"]
    assert mlm.validate_item(item, card, item["properties"]["eostream:sha256"]) == []
    vtags = mlflow.MlflowClient().get_model_version(NAME, version).tags
    assert vtags[tags.INT8] == "failed" and vtags[tags.SHIPPED] == "true"
    assert vtags[tags.INT8_SHA256] == ""
    reasons = json.loads(vtags[tags.INT8_REASONS])
    assert reasons[0].startswith("FAIL: hold-out accuracy int8") and "at most -1.0000" in reasons[0]
    assert vtags[tags.INT8_ACCURACY_DELTA]  # measured, just not good enough

    # inference runs the fp32 file it was promoted with
    ran = classify(tmp_path / "inf", data_dir, promoted_event(version))
    assert ran["properties"]["eostream:model_precision"] == "fp32"
    assert ran["model"]["precision"] == "fp32"


def test_calibration_patches_are_training_patches_never_the_holdout(data_dir: Path) -> None:
    for holdout in (HoldoutSettings(), HoldoutSettings(per_class=HOLDOUT_PER_CLASS)):
        files = calibration_files(data_dir, "rgb", 100, holdout)
        held = set(held_out_files(data_dir, "rgb", holdout.per_class, holdout.salt))
        assert len(files) == len(set(files)) == 100 and not set(files) & held
        assert len({f.split("/")[1] for f in files}) == 10  # every class


def test_ms13_calibration_draws_on_every_training_patch_outside_the_holdout(
    data_dir: Path,
) -> None:
    """The hold-out is drawn from the tifs under eurosat_ms and takes 270 of the 276 in the data
    folder; calibrating on the 6 others (2 classes) clipped the activations of every other
    class. The trainer also trains on the EuroSAT100 catalogue's tifs (its MANIFEST), so the
    calibration draws on those too: every class, and still none of the hold-out."""
    holdout = HoldoutSettings()
    held = held_out_files(data_dir, "ms13", holdout.per_class, holdout.salt)
    held_keys = {(f.split("/")[-2], f.split("/")[-1]) for f in held}
    files = calibration_files(data_dir, "ms13", 256, holdout)
    assert len(files) == len(set(files)) > 100
    assert not {(f.split("/")[-2], f.split("/")[-1]) for f in files} & held_keys
    per_class = {cls: sum(f.split("/")[-2] == cls for f in files) for cls in EUROSAT_CLASSES}
    assert min(per_class.values()) >= 9, per_class
    assert sum(f.startswith("eurosat100_stac/") for f in files) > 90
    trained = {f for names in training_candidates(data_dir, "ms13").values() for f in names}
    assert set(files) <= trained
    images = load_calibration(data_dir, "ms13", 256, holdout)
    assert images.shape == (len(files), 13, 64, 64) and 0 < float(np.median(images)) < 1


def test_ms13_training_candidates_without_a_manifest_are_the_tifs_under_eurosat_ms(
    tmp_path: Path,
) -> None:
    """A data folder without eurosat_ms/MANIFEST.csv (tifs copied in by hand): the calibration
    takes the tifs under eurosat_ms, one per class and file name, as the hold-out's candidates
    are; the manifest, once there, decides (its duplicates left out)."""
    for rel in (
        "eurosat_ms/a/Forest/Forest_1.tif",
        "eurosat_ms/b/Forest/Forest_1.tif",  # the same patch from a second source
        "eurosat_ms/a/River/River_2.tif",
        "eurosat_ms/a/Clouds/Clouds_3.tif",  # not a EuroSAT class
        "eurosat100_stac/c/Forest_4.tif",  # only a manifest names tifs outside eurosat_ms
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    found = training_candidates(tmp_path, "ms13")
    assert found["Forest"] == ["eurosat_ms/a/Forest/Forest_1.tif"]
    assert found["River"] == ["eurosat_ms/a/River/River_2.tif"]
    assert sum(map(len, found.values())) == 2

    (tmp_path / "eurosat_ms" / "MANIFEST.csv").write_text(
        "path,class_name,duplicate_of\n"
        "eurosat_ms/a/Forest/Forest_1.tif,Forest,\n"
        "eurosat_ms/b/Forest/Forest_1.tif,Forest,eurosat_ms/a/Forest/Forest_1.tif\n"
        "eurosat100_stac/c/Forest_4.tif,Forest,\n"
    )
    found = training_candidates(tmp_path, "ms13")
    assert found["Forest"] == ["eurosat_ms/a/Forest/Forest_1.tif", "eurosat100_stac/c/Forest_4.tif"]
    assert sum(map(len, found.values())) == 2


def test_judge() -> None:
    s = Int8Settings(max_accuracy_loss=0.01, max_map_loss=0.02)
    ok, reasons = judge(0.90, 0.895, None, None, s, map_checked=False)
    assert ok and reasons[0].startswith("PASS") and "map check skipped" in reasons[1]
    ok, reasons = judge(0.90, 0.88, None, None, s, map_checked=False)
    assert not ok and reasons[0].startswith("FAIL")
    ok, reasons = judge(0.90, 0.90, 0.70, 0.67, s, map_checked=True)
    assert not ok and reasons[1].startswith("FAIL: map figure int8 0.6700 vs fp32 0.7000")
    ok, _ = judge(0.90, 0.90, 0.70, None, s, map_checked=True)
    assert not ok  # the int8 maps could not be scored
    ok, reasons = judge(0.90, 0.91, 0.70, 0.71, s, map_checked=True)
    assert ok and all(r.startswith("PASS") for r in reasons)


def test_other_tasks_ship_fp32_only_and_a_calibration_that_cannot_be_read_fails_the_check(
    card: ModelCard, data_dir: Path
) -> None:
    def never(*_: Any) -> Any:
        raise AssertionError("must not run")

    def unreadable() -> Any:
        return load_calibration(data_dir / "nowhere", "rgb", 50, HoldoutSettings())

    empty = Holdout("rgb", (), np.zeros(0, np.int64), np.zeros((0, 3, 64, 64), np.float32), "")
    pixel = card.model_copy(update={"task": "pixel"})
    kwargs: dict[str, Any] = {"holdout": empty, "logits": never}
    result = check(b"", pixel, settings=Int8Settings(), calibration=never, **kwargs)
    assert (result.outcome, result.onnx_bytes) == ("skipped", None)
    assert "only patch and segmentation" in result.reasons[0]
    assert result.as_tags()[tags.INT8] == "skipped"
    segmentation = card.model_copy(update={"task": "segmentation"})
    unmasked = check(b"", segmentation, settings=Int8Settings(), calibration=never, **kwargs)
    assert unmasked.outcome == "failed" and "hold-out with masks" in unmasked.reasons[0]
    off = check(b"", card, settings=Int8Settings(enabled=False), calibration=never, **kwargs)
    assert off.outcome == "skipped"
    broken = check(b"", card, settings=Int8Settings(), calibration=unreadable, **kwargs)
    assert (broken.outcome, broken.onnx_bytes) == ("failed", None)
    assert "FileNotFoundError" in broken.reasons[0]
