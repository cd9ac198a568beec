"""The own-labels loop in the embedded system, with no step after the import: water polygons of
two real Boadella dates imported with `eostream labels import --home` are announced by ingest,
trained on by the trainer (chips of the labels' own classes), gated and promoted by the
registry-bridge on the dataset's held-out chips, and inference maps a third date with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from eostream.inference import reference
from eostream.runner.session import EmbeddedSession
from eostream.trainer.labels_cli import app as labels_app

DATES = ("2020-06-21", "2020-09-14")
MAP_DATE = "2021-07-16"
MODEL = "boadella-water"


@pytest.mark.usefixtures("root_logging")
def test_imported_labels_become_a_gated_champion(data_dir: Path, tmp_path: Path) -> None:
    built = reference.build_boadella(data_dir, tmp_path / "reference", (*DATES, MAP_DATE))
    scenes = built.parent.parent / "boadella-scenes"
    folder = data_dir / reference.BOADELLA_FOLDER / "sentinel_2"
    home = tmp_path / "home"
    session = EmbeddedSession.start(
        home,
        data_dir,
        components=("ingest", "trainer", "registry-bridge", "inference"),
        options={
            "ingest": {"sources": [], "labels": {"poll_interval_seconds": 1.0}},
            "trainer": {"dataset_updated_epochs": 4},
            "registry-bridge": {"model_names": [MODEL], "reconcile_interval_seconds": 2.0},
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
    finally:
        session.stop()
    # the bridge's default gate (held-out accuracy >= 0.5, no class dropped) on the dataset's
    # held-out chips
    assert champion.gate == "passed", champion
    assert champion.accuracy is not None and float(champion.accuracy) > 0.5
    assert all(v.gate in ("passed", "failed", "refused") for v in versions)
    assert (mapped.model_name, mapped.model_version) == (MODEL, champion.version)
    assert mapped.run_id and mapped.scene_id == f"boadella-{MAP_DATE}"
    # the reservoir is water, most of the valley is not
    assert 0.02 < mapped.class_shares["water"] < 0.5, mapped.class_shares
    assert set(mapped.class_shares) <= {"water", "other", "uncertain"}
