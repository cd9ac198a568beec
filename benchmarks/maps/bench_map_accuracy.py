"""Map accuracy on real L2A scenes: candidate models against NDWI > 0, in one run.

Trains each candidate on the data folder (EuroSAT, never on the reference labels), exports it to
ONNX, classifies the labelled Boadella L2A dates through inference's pipeline (embedded, scratch
store) and prints per date water precision / recall / IoU of the model beside NDWI > 0 measured
on the same pixels, and the ratio model IoU / NDWI IoU. Then it classifies one unlabelled
Boadella date and the 29RKH Saharan tile and prints their class shares.

Candidates (``--candidates``, any of):

* ``rgb``: small CNN on EuroSAT RGB JPEGs, L2A reflectance mapped through the JPEG fit (before);
* ``ms13``: small CNN on the 375 real 13-band L1C GeoTIFFs, no radiometric augmentation;
* ``ms13-fixed``: ``centre_cnn`` (context CNN + per-pixel logits of the central 8x8) with
  ``TRAINER_INPUT_AUGMENTATION='["radiometry","centre"]'`` (haze and gain jitter for
  L1C -> L2A, centre-context swaps so a window answers for its centre pixels);
* ``ms13-fixed-stride2``: the same with ``centre_cnn_stride2`` (its context's first layer
  strided instead of max-pooled: a quarter of the fp32 work int8 leaves);
* ``pixel-hgb``: a per-pixel scikit-learn HistGradientBoosting on the 13 bands and NDWI, MNDWI,
  NDVI, NDBI (computed in the ONNX graph), fitted on EuroSAT MS pixels with the radiometry
  jitter (:mod:`eostream.trainer.pixel`): every pixel classified on its own, a 10 m map.

    EOSTREAM_DATA_DIR=/path/to/data uv run python benchmarks/maps/bench_map_accuracy.py
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import rasterio
import torch

from eostream.inference import evaluation, reference
from eostream.inference.fetch import local_path
from eostream.inference.model import ModelInfo
from eostream.inference.settings import InferenceSettings, scratch_settings
from eostream.inference.wiring import build_service
from eostream.shared.modelcard import EUROSAT_CLASSES, ModelCard
from eostream.trainer.augment import training_augmentation
from eostream.trainer.cards import map_fields
from eostream.trainer.export import export_onnx
from eostream.trainer.pixel import (
    export_pixel_onnx,
    fit_pixel_model,
    patch_probabilities,
    sample_pixels,
)
from eostream.trainer.recipe import fit_recipe, load_training_data
from eostream.trainer.scoring import evaluate

RKH = "sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled"
RKH_BUCKET = (
    "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/29/R/KH/2020/2/"
    "S2A_29RKH_20200219_0_L2A/"
)
CANDIDATES: dict[str, tuple[str, str, tuple[str, ...], int | None, int]] = {
    # name: (band set, architecture, augmentations, samples per class, epochs)
    "rgb": ("rgb", "small_cnn", (), 1000, 5),
    "ms13": ("ms13", "small_cnn", (), None, 30),
    "ms13-fixed": ("ms13", "centre_cnn", ("radiometry", "centre"), None, 30),
    "ms13-fixed-stride2": ("ms13", "centre_cnn_stride2", ("radiometry", "centre"), None, 30),
    # per-pixel scikit-learn model: "epochs" x 10 boosting iterations (see train_pixel)
    "pixel-hgb": ("ms13", "pixel_hgb", ("radiometry",), None, 10),
}
PIXELS_PER_PATCH = 100
AUGMENTED_COPIES = 3


def train_pixel(
    name: str, data_dir: Path, work: Path, seed: int, epochs: int
) -> tuple[Path, float]:
    """The per-pixel candidate: ``PIXELS_PER_PATCH`` pixels of every training patch, drawn
    ``AUGMENTED_COPIES`` times (all but the first under the L1C->L2A radiometry jitter), a
    HistGradientBoosting on bands + indices; EuroSAT accuracy of whole test patches by the mean
    of the per-pixel probabilities."""
    band_set, architecture, augmentation, per_class, _ = CANDIDATES[name]
    data = load_training_data(
        data_dir,
        work / "cache",
        band_set,
        samples_per_class=per_class,
        seed=seed,
        splits=("train", "test"),
    )
    units = {s.band: (s.scale, s.offset) for s in data.scaling}
    jitter = training_augmentation(augmentation, data.bands, units)
    x, y = sample_pixels(
        data.train, PIXELS_PER_PATCH, seed=seed, augmentation=jitter, copies=AUGMENTED_COPIES
    )
    model = fit_pixel_model(
        x,
        y,
        EUROSAT_CLASSES,
        data.bands,
        seed=seed,
        architecture=architecture,
        max_iter=10 * epochs,
    )
    test = data.splits["test"]
    p = patch_probabilities(model.logits, test.x)
    accuracy = float((p.argmax(axis=1) == test.y.numpy()).mean())
    card = ModelCard(
        name=name,
        band_set=band_set,
        bands=data.bands,
        scaling=data.scaling,
        architecture=architecture,
        task="pixel",
        patch_size=1,
        library="scikit-learn",
        description=f"bench_map_accuracy {name}: {len(x)} pixels, {10 * epochs} iterations",
    )
    path = work / f"{name}.onnx"
    export_pixel_onnx(model, card, path)
    return path, accuracy


def train(
    name: str, data_dir: Path, work: Path, seed: int, epochs: int | None
) -> tuple[Path, float]:
    band_set, architecture, augmentation, per_class, default_epochs = CANDIDATES[name]
    if architecture.startswith("pixel_"):
        return train_pixel(name, data_dir, work, seed, epochs or default_epochs)
    data = load_training_data(
        data_dir,
        work / "cache",
        band_set,
        samples_per_class=per_class,
        seed=seed,
        splits=("train", "val", "test"),
    )
    n = epochs or default_epochs
    model = fit_recipe(
        data,
        architecture,
        augmentations=augmentation,
        epochs=n,
        batch_size=32 if band_set != "rgb" else 64,
        seed=seed,
    )
    accuracy = float(evaluate(model, data.splits["test"], torch.device("cpu"))["accuracy"])
    bands, scaling = data.bands, data.scaling
    card = ModelCard(
        name=name,
        band_set=band_set,
        bands=bands,
        scaling=scaling,
        architecture=architecture,
        description=f"bench_map_accuracy {name}, augmentation {','.join(augmentation) or 'none'}",
        **map_fields(architecture, data.train.x.shape[-1]),  # as the trainer's card has it
    )
    path = work / f"{name}.onnx"
    export_onnx(model, card, path)
    return path, accuracy


def inference_settings(
    work: Path, data_dir: Path, stride: int, uncertain: bool
) -> InferenceSettings:
    extra: dict[str, object] = {}
    if not uncertain:
        extra = {"uncertain_below": 0.0, "out_of_domain_limit": 1000.0}
    return scratch_settings(
        work,
        stride=stride,
        allow_coarse_scenes=True,
        asset_href_rewrites={RKH_BUCKET: f"{data_dir / RKH}/"},
        **extra,
    )


def class_shares(
    model: Path, hrefs: list[str], settings: InferenceSettings
) -> dict[str, dict[str, float]]:
    async def run() -> dict[str, dict[str, float]]:
        service = await asyncio.to_thread(build_service, settings, consume=False)
        await service.start()
        try:
            info = ModelInfo(name=model.stem, version="0", artifact_uri=str(model))
            loaded = await asyncio.to_thread(service.deployment.deploy_uri, info, str(model), None)
            out = {}
            for href in hrefs:
                try:
                    outcome = await asyncio.to_thread(
                        service.pipeline.classify_href, href, replace=True
                    )
                except Exception as exc:  # one scene must not end the benchmark
                    out[href] = {f"error: {type(exc).__name__}: {exc}": 1.0}
                    continue
                cog = local_path(str(outcome.record.item["assets"]["classification"]["href"]))
                with rasterio.open(str(cog)) as ds:
                    labels = ds.read(1)
                    valid = labels != (ds.nodata if ds.nodata is not None else 255)
                counts = collections.Counter(labels[valid].tolist())
                total = max(1, sum(counts.values()))
                names = {i: c for i, c in enumerate(loaded.card.classes)} | {254: "uncertain"}
                out[Path(href).parent.name if href.endswith(".json") else href] = {
                    names.get(k, str(k)): v / total for k, v in counts.most_common()
                }
            return out
        finally:
            await service.stop()

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=["ms13-fixed", "ms13", "rgb"],
        choices=list(CANDIDATES),
    )
    parser.add_argument("--epochs", type=int, default=None, help="override every candidate's")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--stride",
        type=int,
        default=32,
        help="inference window step (px); 32, inference's default, since the centre_cnn "
        "candidates map from their per-pixel output (the README's table was made at 2)",
    )
    parser.add_argument(
        "--uncertain", action="store_true", help="keep the uncertain label (default: top class)"
    )
    parser.add_argument("--unlabelled-date", default="2022-06-01")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("TRAINER_NUM_THREADS", "2")))
    if not os.environ.get("EOSTREAM_DATA_DIR"):
        parser.error("EOSTREAM_DATA_DIR is not set: point it at the data folder")
    data_dir = Path(os.environ["EOSTREAM_DATA_DIR"]).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-maps-"))
    ref_root = work / "ref"
    labels_path = reference.build_boadella(data_dir, ref_root)
    labels = str(labels_path)
    scenes = labels_path.parent.parent / "boadella-scenes"
    settings = inference_settings(work, data_dir, args.stride, args.uncertain)
    figures: dict[str, object] = {}
    print(
        f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
        f"stride {args.stride}"
    )
    for name in args.candidates:
        started = time.perf_counter()
        model, accuracy = train(name, data_dir, work, args.seed, args.epochs)
        trained = time.perf_counter() - started
        report = evaluation.evaluate(labels, str(model), settings=settings)
        print(f"\n== {name}: EuroSAT test accuracy {accuracy:.3f}, trained in {trained:.0f} s")
        print("date        labels    model water P / R / IoU   NDWI water P / R / IoU   IoU ratio")
        rows = []
        for item in report.items:
            m = evaluation.scores_for(item.model_cm, report.classes, item.partial)["water"]
            assert item.ndwi_cm is not None
            b = evaluation.scores_for(item.ndwi_cm, report.classes, item.partial)["water"]
            ratio = m["iou"] / b["iou"] if m["iou"] is not None and b["iou"] else None
            print(
                f"{item.date}  {item.coverage:8}  {_f(m['precision'])} / {_f(m['recall'])} / "
                f"{_f(m['iou'])}    {_f(b['precision'])} / {_f(b['recall'])} / {_f(b['iou'])}    "
                f"{_f(ratio)}"
            )
            rows.append({"date": item.date, "coverage": item.coverage, "model": m, "ndwi": b})
        for line in report.errors:
            print(f"error: {line}")
        shares = class_shares(
            model,
            [
                str(
                    scenes
                    / f"boadella-{args.unlabelled_date}"
                    / f"boadella-{args.unlabelled_date}.json"
                ),
                str(data_dir / RKH / "S2A_29RKH_20200219_0_L2A.json"),
            ],
            # class shares need no fine grid (the 29RKH tile is 1098 px wide at 100 m)
            settings.model_copy(update={"stride": max(args.stride, 8)}),
        )
        for scene, share in shares.items():
            top = ", ".join(f"{k} {v:.0%}" for k, v in list(share.items())[:4])
            print(f"  {scene}: {top}", flush=True)
        figures[name] = {"test_accuracy": accuracy, "dates": rows, "shares": shares}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=float))


def _f(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
