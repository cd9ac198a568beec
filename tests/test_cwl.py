"""deploy/cwl: the EO application packages (OGC 20-089) are valid CWL, and run with cwltool
without containers on real data: the training package trains on 100 real EuroSAT MS patches for
one epoch, then the prediction package classifies a real Sentinel-2 L2A crop, staged in as a STAC
catalog, with the ONNX model the training package produced. Both stage out STAC catalogs, which
are checked for real: core STAC schemas (pystac's offline copies), MLM fields (stac-model),
assets on disk, a model that onnxruntime runs on real patches, and a land-cover map on the
scene's grid whose class counts match its statistics.

No server is needed. cwltool and the ``python`` the packages run come from this interpreter's
virtual environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from eostream.inference.uploads import item_for_raster
from eostream.shared import mlm
from eostream.shared.modelcard import EUROSAT_CLASSES, METADATA_KEY, ModelCard

ROOT = Path(__file__).resolve().parents[1]
CWL = ROOT / "deploy" / "cwl"
BIN = Path(sys.executable).parent  # the uv venv: cwltool and eostream
PACKAGES = {
    "eostream-train.cwl": ("eostream-train", "train", "eostream/trainer:latest"),
    "eostream-predict.cwl": ("eostream-predict", "classify", "eostream/inference:latest"),
}
SCENE = "sentinel2_scenes/boadella_l2a_sentinelhub/sentinel_2/Boadella_2020-06-21.tif"
SCENE_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
NODATA = 255
UNCERTAIN = 254  # eostream.inference.engine.UNCERTAIN: below the confidence threshold


def cwltool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(BIN / "cwltool"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def run_package(package: str, job: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run a package's workflow on a job with cwltool --no-container; its output object."""
    work.mkdir(parents=True, exist_ok=True)
    job_file = work / "job.yml"
    job_file.write_text(yaml.safe_dump(job))
    workflow = PACKAGES[package][0]
    done = cwltool(
        "--no-container",
        "--preserve-environment",
        "PATH",
        "--outdir",
        str(work / "out"),
        "--tmpdir-prefix",
        f"{work}/tmp/",
        "--tmp-outdir-prefix",
        f"{work}/tmp-out/",
        f"{CWL / package}#{workflow}",
        str(job_file),
        cwd=work,
    )
    assert done.returncode == 0, f"cwltool {package} failed:\n{done.stderr[-4000:]}"
    return dict(json.loads(done.stdout))


def job_template(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((CWL / name).read_text()))


def check_catalog(folder: Path) -> list[pystac.Item]:
    """The STAC catalog in ``folder``: core-valid, self-contained, every asset on disk."""
    assert (folder / "catalog.json").is_file(), sorted(p.name for p in folder.iterdir())
    validator = JsonSchemaSTACValidator()
    catalog = pystac.Catalog.from_file(str(folder / "catalog.json"))
    validator.validate_core(
        catalog.to_dict(), pystac.STACObjectType.CATALOG, catalog.to_dict()["stac_version"]
    )
    items = list(catalog.get_items(recursive=True))
    assert items, "the catalog links no items"
    for item in items:
        data = json.loads(Path(str(item.get_self_href())).read_text())
        validator.validate_core(data, pystac.STACObjectType.ITEM, data["stac_version"])
        for key, asset in data["assets"].items():
            assert not Path(asset["href"]).is_absolute(), f"{key}: {asset['href']} is absolute"
            path = Path(item.assets[key].get_absolute_href() or "")
            assert path.is_file() and path.resolve().is_relative_to(folder.resolve()), path
    return items


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training package's output catalog: one epoch on 10 real patches per class."""
    job = job_template("train-job.yml")
    job["eurosat"]["path"] = str(data_dir)
    out = run_package("eostream-train.cwl", job, tmp_path_factory.mktemp("cwl-train"))
    return Path(out["model"]["path"])


@pytest.fixture(scope="module")
def stage_in(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Sentinel-2 L2A crop staged in as the best practice does: a folder holding a
    self-contained STAC catalog, the item beside its raster, the asset href relative."""
    folder = tmp_path_factory.mktemp("stage-in")
    tif = data_dir / SCENE
    item = pystac.Item.from_dict(
        item_for_raster(
            tif, "boadella-2020-06-21", SCENE_BANDS, level="L2A", when="2020-06-21T10:30:00Z"
        )
    )
    (folder / item.id).mkdir()
    shutil.copyfile(tif, folder / item.id / tif.name)
    item.assets["data"].href = str(folder / item.id / tif.name)
    catalog = pystac.Catalog("stage-in", "Sentinel-2 scenes to classify")
    catalog.add_item(item)
    catalog.normalize_hrefs(str(folder))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return folder


@pytest.fixture(scope="module")
def predicted(trained: Path, stage_in: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prediction package's output catalog for the staged-in scene and the trained model."""
    (model,) = trained.glob("*/model.onnx")
    job = job_template("predict-job.yml")
    job["scenes"]["path"] = str(stage_in)
    job["model"]["path"] = str(model)
    out = run_package("eostream-predict.cwl", job, tmp_path_factory.mktemp("cwl-predict"))
    return Path(out["maps"]["path"])


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_package_is_valid_cwl_in_the_application_package_shape(package: str) -> None:
    done = cwltool("--validate", str(CWL / package), cwd=CWL)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"{package} is valid CWL" in done.stdout + done.stderr
    workflow_id, tool_id, image = PACKAGES[package]
    document = yaml.safe_load((CWL / package).read_text())
    assert document["cwlVersion"] == "v1.2"
    assert document["s:softwareVersion"] and document["s:codeRepository"]
    assert document["s:author"]
    processes = {p["id"]: p for p in document["$graph"]}
    workflow, tool = processes[workflow_id], processes[tool_id]
    assert workflow["class"] == "Workflow" and workflow["label"] and workflow["doc"]
    assert tool["class"] == "CommandLineTool"
    # the service alone (its image holds no `eostream` runner), as `python -m eostream.<package>`
    assert tool["baseCommand"][:3] == [
        "python",
        "-m",
        f"eostream.{image.split('/')[1].split(':')[0]}",
    ]
    # a hint, so that cwltool --no-container (and platforms with their own images) can run it
    assert tool["hints"]["DockerRequirement"]["dockerPull"] == image
    assert "DockerRequirement" not in tool.get("requirements", {})
    assert "InlineJavascriptRequirement" not in tool.get("requirements", {})
    # stage-out: one Directory output holding a STAC catalog
    (output,) = workflow["outputs"].values()
    assert output["type"] == "Directory"


def test_train_package_stages_out_a_model_catalog(trained: Path, data_dir: Path) -> None:
    (item,) = check_catalog(trained)
    props = item.properties
    card = ModelCard.model_validate(props["eostream:model_card"])
    assert card.band_set == "ms13" and card.classes == EUROSAT_CLASSES
    # the checks the registry-bridge runs on the items it ships: STAC core schema, MLM fields
    # through stac-model's models, bands/classes/scaling against the card, the asset's checksum
    assert mlm.validate_item(item.to_dict(), card, props["eostream:sha256"]) == []
    assert props["eostream:metric:epochs_run"] == 1
    assert 0.0 <= props["eostream:metric:test_accuracy"] <= 1.0

    onnx_path = Path(item.assets["model"].get_absolute_href() or "")
    blob = onnx_path.read_bytes()
    assert item.assets["model"].roles == ["mlm:model", "data"]
    assert item.assets["model"].extra_fields["file:checksum"] == "1220" + props["eostream:sha256"]
    assert hashlib.sha256(blob).hexdigest() == props["eostream:sha256"]
    card_file = Path(item.assets["model-card"].get_absolute_href() or "")
    assert ModelCard.from_json(card_file.read_text()) == card

    # the ONNX runs in onnxruntime on real EuroSAT MS patches and gives [N, 10] logits
    import onnxruntime as ort

    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    assert ModelCard.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY]) == card
    tifs = sorted((data_dir / "eurosat_ms").rglob("*.tif"))[:5]
    patches = []
    for tif in tifs:
        with rasterio.open(tif) as ds:  # EuroSAT MS file order: B01..B08, B09, B10, B11, B12, B8A
            assert ds.count == len(card.bands)
            patches.append(ds.read().astype(np.float32))
    (logits,) = session.run([card.output_name], {card.input_name: np.stack(patches)})
    assert logits.shape == (len(tifs), 10)
    assert np.isfinite(logits).all()


def test_predict_package_stages_out_a_land_cover_map(predicted: Path, data_dir: Path) -> None:
    (item,) = check_catalog(predicted)
    assert item.properties["eostream:scene_id"] == "boadella-2020-06-21"
    classification = item.assets["classification"]
    assert classification.media_type == pystac.MediaType.COG
    classes = classification.extra_fields["classification:classes"]
    # the model's classes, then the value for pixels it is unsure of
    assert [c["name"] for c in classes] == [*EUROSAT_CLASSES, "uncertain"]

    with rasterio.open(data_dir / SCENE) as scene:
        scene_crs, scene_bounds, scene_shape = scene.crs, scene.bounds, scene.shape
    with rasterio.open(classification.get_absolute_href() or "") as result:
        assert result.crs == scene_crs
        assert result.shape == scene_shape
        assert np.allclose(tuple(result.bounds), tuple(scene_bounds), atol=1e-9)
        labels = result.read(1)
    values = set(np.unique(labels).tolist())
    assert values <= {*range(10), UNCERTAIN, NODATA}, values
    assert values - {NODATA}, "the map classified no pixel"

    stats = json.loads(Path(item.assets["statistics"].get_absolute_href() or "").read_text())
    counts = {name: int((labels == i).sum()) for i, name in enumerate(EUROSAT_CLASSES)}
    assert {name: v["pixels"] for name, v in stats["classes"].items()} == counts
    assert stats["uncertain"]["pixels"] == int((labels == UNCERTAIN).sum())
    assert Path(item.assets["quicklook"].get_absolute_href() or "").read_bytes()[:4] == b"\x89PNG"
