"""The own-labels loop in the embedded system, with no step after the import: water polygons of
two real Boadella dates imported with `eostream labels import --home` are announced by ingest,
trained on by the trainer (its default model for labels: a segmentation network learning every
pixel's class from the masks of chips cut from those dates, on the bands' spectral indices),
gated and promoted by the registry-bridge on the dataset's held-out chips (pixel by pixel) and
on its maps of the two labelled dates (the third date chooses nothing: not the champion, not
whether its int8 file is served), and inference maps a third date with it at 10 m: its water
against that date's hand-made labels, beside NDWI > 0 and NDWI with its threshold tuned on the
two labelled dates, on the same pixels in the same run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eostream.inference import evaluation, reference
from eostream.inference.stacitem import MODEL_LINK_TITLE
from eostream.runner.session import EmbeddedSession
from eostream.trainer.export import read_card
from eostream.trainer.labels_cli import app as labels_app

DATES = ("2020-06-21", "2020-09-14")
MAP_DATE = "2021-07-16"
MODEL = "boadella-water"

#: every pixel gets its top class, as the bridge's map check scores maps (`eostream maps evaluate`
#: with INFERENCE_UNCERTAIN_BELOW=0)
SCORING = {"uncertain_below": 0.0, "intra_op_threads": 2}


@pytest.mark.usefixtures("root_logging")
def test_imported_labels_become_a_gated_champion(data_dir: Path, tmp_path: Path) -> None:
    built = reference.build_boadella(data_dir, tmp_path / "reference", (*DATES, MAP_DATE))
    scenes = built.parent.parent / "boadella-scenes"
    folder = data_dir / reference.BOADELLA_FOLDER / "sentinel_2"
    # the gate's map check: the labelled dates (besides the dataset's own test chips); the date
    # the labels leave out is scored below and must not choose anything
    gate_reference = reference.build_boadella(data_dir, tmp_path / "gate-reference", DATES)
    home = tmp_path / "home"
    session = EmbeddedSession.start(
        home,
        data_dir,
        components=("ingest", "trainer", "registry-bridge", "inference"),
        options={
            "ingest": {
                "sources": [],
                "labels": {"poll_interval_seconds": 1.0, "settle_seconds": 2.0},
            },
            # 100 optimiser steps, not the default 300: the masks' water is learnt before that
            "trainer": {"dataset_updated_epochs": 4, "min_chip_steps": 100},
            "registry-bridge": {
                "model_names": [MODEL],
                "reconcile_interval_seconds": 2.0,
                "gate": {"reference": str(gate_reference)},
            },
            "inference": {"stride": 8, "intra_op_threads": 2},
        },
    )
    try:
        for date in DATES:
            scene = scenes / f"boadella-{date}" / f"boadella-{date}.json"
            words = ["import", "--scene", str(scene), "--home", str(home), "--collection", MODEL]
            geojson = folder / f"Boadella_{date}_labels.geojson"
            result = CliRunner().invoke(labels_app, [*words, "--geojson", str(geojson)])
            assert result.exit_code == 0, result.output
        champion = session.champion(MODEL, timeout=600)
        with session.bridge() as bridge:
            versions = bridge.versions(MODEL)
        # the champion maps a date nobody labelled for it
        scene = scenes / f"boadella-{MAP_DATE}" / f"boadella-{MAP_DATE}.json"
        with session.inference() as api:
            job = api.execute({"scene": str(scene), "model": f"models:/{MODEL}/{champion.version}"})
            job = api.wait(job.job_id, timeout=600)
            assert job.status == "successful", job
            mapped = api.job_result(job.job_id)
            result_item = api.item(
                mapped.scene_id, model_version=champion.version, model_name=MODEL
            )
    finally:
        session.stop()
    # the bridge's default gate (held-out accuracy >= 0.5, no class dropped) on the dataset's
    # held-out chips
    assert champion.gate == "passed", champion
    assert champion.accuracy is not None and float(champion.accuracy) > 0.5
    # ... and its maps of the labelled dates scored by the gate's map check
    assert "map mean_iou" in (champion.reasons or ""), champion.reasons
    assert all(v.gate in ("passed", "failed", "refused") for v in versions)
    assert (mapped.model_name, mapped.model_version) == (MODEL, champion.version)
    assert mapped.run_id and mapped.scene_id == f"boadella-{MAP_DATE}"
    assert set(mapped.class_shares) <= {"water", "other", "uncertain"}

    # the champion's water on the date it never saw, against its labels, beside NDWI > 0
    [onnx] = (home / "mlartifacts").glob(f"*/{mapped.run_id}/artifacts/onnx/model.onnx")
    card = read_card(onnx)
    assert (card.task, card.architecture, card.classes) == (
        "segmentation",
        "seg_unet_indices",
        ("water", "other"),
    )
    # scored with the file that made the map: the model its result item links to (the MLM item),
    # loaded as inference loads it (the int8 file on this CPU when it passed its check)
    model_item = next(
        link["href"]
        for link in result_item["links"]
        if link["rel"] == "derived_from" and link.get("title") == MODEL_LINK_TITLE
    )
    report = evaluation.evaluate(str(built), model_item, overrides=SCORING)
    assert not report.errors, report.errors
    assert report.precision == result_item["properties"]["eostream:model_precision"]
    assert report.model_version == champion.version
    [item] = [i for i in report.items if i.item_id.endswith(MAP_DATE)]
    assert item.ndwi_cm is not None
    # the reservoir is water, most of the valley is not: the service's map has about as much
    # water as the date's labels (0.196 of the scene; NDWI > 0: 0.177). A fixed bound of 0.2
    # failed on an AVX-512 host at 0.200014.
    water = report.classes.index("water")
    labelled = float(item.model_cm[water].sum() / item.model_cm.sum())
    assert 0.1 < labelled < 0.3, labelled  # the labels read as the whole scene's
    assert abs(mapped.class_shares["water"] - labelled) < 0.05, (mapped.class_shares, labelled)
    model = evaluation.scores_for(item.model_cm, report.classes, partial=False)["water"]
    ndwi = evaluation.scores_for(item.ndwi_cm, report.classes, partial=False)["water"]
    tuned = report.tuned_ndwi(item)  # NDWI's threshold chosen on the two training dates
    assert tuned is not None and sorted(tuned[2]) == sorted(DATES), tuned
    tuned_iou = evaluation.scores_for(tuned[1], report.classes, partial=False)["water"]["iou"]
    logging.getLogger(__name__).warning(
        "%s: water IoU %.3f (P %.3f R %.3f, %s), NDWI > 0 %.3f, NDWI > %.2f (tuned) %.3f",
        MAP_DATE, model["iou"], model["precision"], model["recall"], report.precision,
        ndwi["iou"], tuned[0], tuned_iou,
    )  # fmt: skip
    assert model["iou"] >= ndwi["iou"] - 0.03, (model, ndwi)
