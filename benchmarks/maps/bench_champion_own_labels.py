"""eostream's champion from the user's own labels, per held-out Boadella date, beside NDWI > 0.

The whole system, not a script around a model: for each of the three fully labelled Boadella L2A
dates, the hand-made water polygons of the OTHER two full dates are imported with
``eostream labels import --home`` into a fresh embedded home; ingest announces the label
collection, the trainer cuts chips and fits its model for labels (by default
``seg_unet_indices``, a small U-Net learning every pixel's class from the chips' masks on the
bands' spectral indices; ``--architecture pixel_hgb`` for the per-pixel scikit-learn model, its
water threshold chosen by leave-one-date-out over the two training dates), the
registry-bridge gates it (the dataset's test chips, and its map check on the two training dates:
the held-out date chooses nothing, not the champion, not whether the int8 file is served) and
promotes it. That champion is then scored with ``eostream maps evaluate``'s scoring on the
held-out date against its labels, beside two baselines on the same pixels, in the same run:
NDWI = (B03 - B08) / (B03 + B08) > 0, and NDWI > t with ``t`` tuned on the two training dates'
labels (the highest pooled water IoU of -0.5 .. 0.5 in steps of 0.02), a baseline that learnt
from the same labels as the champion. The held-out date is never imported, cut, trained or gated
on. Twice: the version's
fp32 file, and the version as inference serves it (its shipped MLM item: the int8 file on a CPU
where it passed the bridge's check); the table gives the served figure and its precision.

    EOSTREAM_DATA_DIR=/work/shared/data uv run python benchmarks/maps/bench_champion_own_labels.py \
        [--architecture pixel_hgb] [--dates 2021-07-16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from typer.testing import CliRunner

from eostream.inference import evaluation, reference
from eostream.runner.session import EmbeddedSession
from eostream.shared.storage.local import LocalObjectStore
from eostream.trainer.labels_cli import app as labels_app

DATES = ("2020-06-21", "2020-09-14", "2021-07-16")
MODEL = "boadella-water"

#: every pixel gets its top class, as the bridge's map check scores maps (`eostream maps evaluate`
#: with INFERENCE_UNCERTAIN_BELOW=0)
SCORING = {"uncertain_below": 0.0, "intra_op_threads": 2}


def champion_for(
    held: str, data_dir: Path, work: Path, architecture: str | None = None
) -> dict[str, object]:
    """Import the other dates' labels, let the system make a champion, score it on ``held``."""
    built = reference.build_boadella(data_dir, work / "reference", DATES)
    scenes = built.parent.parent / "boadella-scenes"
    folder = data_dir / reference.BOADELLA_FOLDER / "sentinel_2"
    home = work / "home"
    for date in (d for d in DATES if d != held):  # the training dates
        scene = scenes / f"boadella-{date}" / f"boadella-{date}.json"
        words = ["import", "--scene", str(scene), "--home", str(home), "--collection", MODEL]
        geojson = folder / f"Boadella_{date}_labels.geojson"
        result = CliRunner().invoke(labels_app, [*words, "--geojson", str(geojson)])
        if result.exit_code != 0:
            raise SystemExit(result.output)
    training = tuple(d for d in DATES if d != held)
    # the gate's map check on the training dates: the held-out date must choose nothing
    gate_reference = reference.build_boadella(data_dir, work / "gate-reference", training)
    started = time.perf_counter()
    session = EmbeddedSession.start(
        home,
        data_dir,
        components=("ingest", "trainer", "registry-bridge"),
        options={
            "ingest": {
                "sources": [],
                "labels": {"poll_interval_seconds": 1.0, "settle_seconds": 2.0},
            },
            # the trainer's model for labels: its default, or the one asked for
            "trainer": {"label_architecture": architecture} if architecture else {},
            "registry-bridge": {
                "model_names": [MODEL],
                "reconcile_interval_seconds": 2.0,
                "gate": {"reference": str(gate_reference)},
            },
        },
    )
    try:
        champion = session.champion(MODEL, timeout=900)
        seconds = time.perf_counter() - started
        client = MlflowClient(session.mlflow_url)
        run_id = str(client.get_model_version(MODEL, champion.version).run_id)
        onnx = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path="onnx/model.onnx",
            dst_path=str(work / "champion"),
            tracking_uri=session.mlflow_url,
        )
        params = client.get_run(run_id).data.params
    finally:
        session.stop()
    report = evaluation.evaluate(str(built), onnx, overrides=SCORING)
    [item] = [i for i in report.items if i.item_id.endswith(held)]
    assert item.ndwi_cm is not None
    tuned = report.tuned_ndwi(item)  # its threshold chosen on the two training dates
    assert tuned is not None and sorted(tuned[2]) == sorted(training), tuned
    # the shipped MLM item, where the bridge put it in the embedded store (models/NAME/VERSION)
    shipped = LocalObjectStore(home / "objects", "eostream").uri(
        f"models/{MODEL}/{champion.version}/item.json"
    )
    served = evaluation.evaluate(str(built), shipped, overrides=SCORING)
    [as_served] = [i for i in served.items if i.item_id.endswith(held)]
    return {
        "model": evaluation.scores_for(item.model_cm, report.classes, partial=False)["water"],
        "served": evaluation.scores_for(as_served.model_cm, report.classes, partial=False)["water"],
        "precision": served.precision,
        "ndwi": evaluation.scores_for(item.ndwi_cm, report.classes, partial=False)["water"],
        "tuned": evaluation.scores_for(tuned[1], report.classes, partial=False)["water"],
        "tuned_threshold": tuned[0],
        "version": champion.version,
        "gate": champion.gate,
        "threshold": f"{params.get('threshold', '0.5')} ({params.get('threshold_chosen_on', '-')})",
        "architecture": params.get("architecture", params.get("request.architecture", "?")),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--architecture",
        help="the trainer's model for labels (TRAINER_LABEL_ARCHITECTURE; default: its own, "
        "seg_unet_indices), e.g. pixel_hgb for the per-pixel scikit-learn model",
    )
    parser.add_argument("--dates", nargs="*", default=DATES, help="held-out dates to run")
    args = parser.parse_args()
    if not os.environ.get("EOSTREAM_DATA_DIR"):
        parser.error("EOSTREAM_DATA_DIR is not set: point it at the data folder")
    data_dir = Path(os.environ["EOSTREAM_DATA_DIR"])
    rows = []
    for held in args.dates:
        with tempfile.TemporaryDirectory(prefix="eostream-champion-") as tmp:
            rows.append((held, champion_for(held, data_dir, Path(tmp), args.architecture)))
        print(f"{held}: done in {rows[-1][1]['seconds']:.0f} s", flush=True)
    print()
    print(
        "| held-out date | model | champion of the other dates' labels, as served, P / R / IoU "
        "| its fp32 file's IoU | NDWI > 0 P / R / IoU | NDWI > t, t tuned on the training dates "
        "| IoU ratio to tuned NDWI | threshold | labels -> champion |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for held, r in rows:
        m, f, b, t = r["served"], r["model"], r["ndwi"], r["tuned"]
        assert isinstance(m, dict) and isinstance(f, dict) and isinstance(b, dict)
        assert isinstance(t, dict)
        print(
            f"| {held} | {r['architecture']} "
            f"| {m['precision']:.3f} / {m['recall']:.3f} / **{m['iou']:.3f}** ({r['precision']}) "
            f"| {f['iou']:.3f} | {b['precision']:.3f} / {b['recall']:.3f} / {b['iou']:.3f} "
            f"| {t['precision']:.3f} / {t['recall']:.3f} / {t['iou']:.3f} "
            f"(t {r['tuned_threshold']:+.2f}) "
            f"| {m['iou'] / t['iou']:.3f} | {r['threshold']} | {r['seconds']:.0f} s |"
        )


if __name__ == "__main__":
    main()
