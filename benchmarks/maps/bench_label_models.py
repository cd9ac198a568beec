"""The trainer's models for labels, side by side and over seeds, per held-out Boadella date.

For each of the three fully labelled Boadella L2A dates, chips are cut (``eostream labels
chips``: 32 px, water/other, the 12 L2A bands) from the hand-made water polygons of the OTHER
two dates, each architecture is trained on them with ``eostream trainer fit --dataset`` once per
seed (epochs 10, raised to 300 optimiser steps as on every chip dataset), and its map of the
held-out date (``eostream maps evaluate``'s scoring: inference's own pipeline, uncertain label
off) is scored against that date's labels beside NDWI = (B03 - B08) / (B03 + B08) > 0 on the
same pixels, in the same run. The held-out date is never cut or trained on. What the seeds move
is the initial weights and the order of the batches; the chips stay the same.

    EOSTREAM_DATA_DIR=/work/shared/data uv run python benchmarks/maps/bench_label_models.py \\
        [--architectures seg_unet_indices seg_unet pixel_hgb] [--seeds 42 1 2]

Fine-tuning from what exists: an architecture written ``NAME+eurosat`` starts from a EuroSAT
``small_cnn`` that the run trains first (``--base-bands rgb``: all 27,000 RGB patches, widened
to the 12 bands; ``ms13``: the 375 13-band patches, B10 dropped) and registers, e.g.
``--architectures seg_small_cnn seg_small_cnn+eurosat`` (its encoder in a U-Net, against the
same U-Net from scratch).

Through the whole system (ingest, trainer, gate) rather than the CLI:
``bench_champion_own_labels.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from eostream.inference import evaluation, reference
from eostream.trainer.cli import app as trainer_app
from eostream.trainer.labels_cli import app as labels_app
from eostream.trainer.pixel import PIXEL_ARCHITECTURES

DATES = ("2020-06-21", "2020-09-14", "2021-07-16")

#: every pixel gets its top class, as the bridge's map check scores maps (`eostream maps evaluate`
#: with INFERENCE_UNCERTAIN_BELOW=0)
SCORING = {"uncertain_below": 0.0, "intra_op_threads": 2}


def cut_chips(data_dir: Path, held: str, work: Path) -> tuple[Path, Path]:
    """The chips of the other two dates, and the held-out date's reference set."""
    train = tuple(d for d in DATES if d != held)
    labels = reference.build_boadella(data_dir, work / "train", train)
    held_out = reference.build_boadella(data_dir, work / "held-out", (held,))
    chips = work / "chips"
    words = ["chips", "--labels", str(labels), "--out", str(chips), "--size", "32",
             "--classes", "water,other", "--bands", "l2a"]  # fmt: skip
    result = CliRunner().invoke(labels_app, words)
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return chips, held_out


BASE = "models:/eurosat-base/1"


def train_base(bands: str, epochs: int, root: Path) -> Path:
    """A EuroSAT small_cnn on ``bands``, registered as :data:`BASE` in ``root/base.db``."""
    db = root / "base.db"
    _environment(db, root)
    words = ["fit", "--bands", bands, "--architecture", "small_cnn", "--epochs", str(epochs),
             "--model-name", "eurosat-base"]  # fmt: skip
    started = time.perf_counter()
    result = CliRunner().invoke(trainer_app, words)
    if result.exit_code != 0:
        raise SystemExit(result.output)
    print(f"base: EuroSAT {bands} small_cnn, {epochs} epochs, "
          f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    return db


def _environment(db: Path, cache: Path) -> None:
    os.environ.update(
        TRAINER_MLFLOW_TRACKING_URI=f"sqlite:///{db}",
        TRAINER_CACHE_DIR=str(cache / "cache"),
        TRAINER_EXPERIMENT_NAME="label-models",
        TRAINER_DEVICE="cpu",
    )


def score(
    chips: Path,
    held_out: Path,
    architecture: str,
    seed: int,
    work: Path,
    base_db: Path | None = None,
) -> dict[str, Any]:
    """Train ``architecture`` on ``chips`` with ``seed``; its water and NDWI's on the date.
    ``NAME+eurosat`` starts NAME from :data:`BASE` (in ``base_db``)."""
    name, _, start = architecture.partition("+")
    run = work / f"{name}-{start or 'scratch'}-{seed}"
    _environment(base_db if start and base_db else Path(f"{run}.db"), work)
    words = ["fit", "--dataset", str(chips), "--architecture", name, "--epochs", "10",
             "--seed", str(seed), "--model-name", "water", "--stac-out", str(run)]  # fmt: skip
    if start:
        words += ["--base-model", BASE]
    if name in PIXEL_ARCHITECTURES:
        words += ["--family", "sklearn"]
    started = time.perf_counter()
    result = CliRunner().invoke(trainer_app, words)
    if result.exit_code != 0:
        raise SystemExit(result.output)
    seconds = time.perf_counter() - started
    onnx = next(run.rglob("*.onnx"))
    report = evaluation.evaluate(str(held_out), str(onnx), overrides=SCORING)
    [item] = report.items
    assert item.ndwi_cm is not None
    return {
        "model": evaluation.scores_for(item.model_cm, report.classes, partial=False)["water"],
        "ndwi": evaluation.scores_for(item.ndwi_cm, report.classes, partial=False)["water"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--architectures", nargs="+", default=["seg_unet_indices", "seg_unet", "pixel_hgb"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--dates", nargs="+", default=list(DATES))
    parser.add_argument("--base-bands", choices=["rgb", "ms13"], default="rgb")
    parser.add_argument("--base-epochs", type=int, default=5)
    args = parser.parse_args()
    if not os.environ.get("EOSTREAM_DATA_DIR"):
        parser.error("EOSTREAM_DATA_DIR is not set: point it at the data folder")
    data_dir = Path(os.environ["EOSTREAM_DATA_DIR"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="eostream-label-base-") as base_tmp:
        base_db = None
        if any("+" in a for a in args.architectures):
            base_db = train_base(args.base_bands, args.base_epochs, Path(base_tmp))
        for held in args.dates:
            rows.extend(_held_out_date(data_dir, held, args.architectures, args.seeds, base_db))
    _table(rows, args.seeds)


def _held_out_date(
    data_dir: Path, held: str, architectures: list[str], seeds: list[int], base_db: Path | None
) -> list[tuple[str, str, list[float], float, float]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="eostream-label-models-") as tmp:
        work = Path(tmp)
        chips, held_out = cut_chips(data_dir, held, work)
        for architecture in architectures:
            runs = [score(chips, held_out, architecture, s, work, base_db) for s in seeds]
            ious = [r["model"]["iou"] for r in runs]
            ndwi = runs[0]["ndwi"]["iou"]
            rows.append(
                (held, architecture, ious, ndwi, statistics.mean(r["seconds"] for r in runs))
            )
            print(f"{held} {architecture}: IoU {' / '.join(f'{v:.3f}' for v in ious)} "
                  f"(NDWI {ndwi:.3f})", flush=True)  # fmt: skip
    return rows


def _table(rows: list[tuple[str, str, list[float], float, float]], seed_list: list[int]) -> None:
    print()
    seeds = " / ".join(map(str, seed_list))
    print(f"| held-out date | model | water IoU, seeds {seeds} | mean | NDWI > 0 | mean - NDWI "
          "| fit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for held, architecture, ious, ndwi, seconds in rows:
        mean = statistics.mean(ious)
        spread = " / ".join(f"{v:.3f}" for v in ious)
        print(f"| {held} | {architecture} | {spread} | **{mean:.3f}** | {ndwi:.3f} "
              f"| {mean - ndwi:+.3f} | {seconds:.0f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
