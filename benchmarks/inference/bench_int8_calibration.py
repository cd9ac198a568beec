"""How the int8 calibration of 13-band models moves their maps: the bridge's choice against the one
it made before, each factor alone, on real labelled scenes, against the fp32 map of the same model.

The registry-bridge calibrates a model's int8 file on EuroSAT training patches outside the gate's
hold-out (``calibration.calibration_files``) and, since its input convolutions are int8 too
(``input_stem.fuse``), sets one uint8 grid for all bands from those patches. Two choices are
compared, each on its own and together, for every model:

* **patches**: drawn from the tifs under ``eurosat_ms`` only (before: the hold-out is drawn from
  them and takes 270 of the 276, which left 6 patches of 2 classes), or from every patch the
  trainer trains on (now: ``eurosat_ms/MANIFEST.csv``, which adds the EuroSAT100 catalogue's
  99; 105 patches, every class). For reference, a set filled up to 250 from the hold-out
  itself (not shipped: the int8 check is scored on the hold-out);
* **input grid**: the calibration's per-band min and max (before) or its 0.01 and 99.99
  percentiles (now, ``input_stem.INPUT_PERCENTILE``).

Each int8 file is the bridge's own ``quantise`` (direct kernels); each map is made through
inference's pipeline (``eostream.inference.evaluation``, as ``eostream maps evaluate``) on the
labelled Boadella L2A dates whose labels are complete; printed per model and variant: calibration
patches, the input grid's step, water IoU on each date (fp32 first, NDWI > 0 on the same
pixels last) and the share of pixels where the int8 map's class equals the fp32 map's (all ten
classes), the baseline being the fp32 map of the same run.

Models: ``--onnx`` fp32 exports (13-band), or trained here (``--seeds``, the ``ms13`` and
``ms13-stride2`` recipes of bench_int8.py, 10 epochs each, ~10 s). About 25 s a model after
its training, on 2 cores.

    EOSTREAM_DATA_DIR=/work/shared/data uv run python \\
        benchmarks/inference/bench_int8_calibration.py [--seeds 0 1] [--onnx a.onnx ...] \\
        [--stride 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.*
from benchmarks.inference import bench_int8

DATES = ("2020-06-21", "2020-09-14", "2021-07-16")  # the complete labels (2020-02-02: partial)
#: name: (calibration set, input grid percentile)
VARIANTS = {
    "before (6 patches, min/max)": ("before", 100.0),
    "105 patches, min/max": ("now", 100.0),
    "6 patches, 99.99 %": ("before", 99.99),
    "now (105 patches, 99.99 %)": ("now", 99.99),
    "250 with hold-out, 99.99 %": ("holdout", 99.99),
}
SIZE = 256  # the bridge's BRIDGE_INT8__CALIBRATION_SIZE default


def calibration_sets(data_dir: Path) -> dict[str, list[str]]:
    """The bridge's calibration files now, before (the tifs under eurosat_ms outside the
    hold-out), and those filled up per class from the hold-out to ~SIZE (for reference)."""
    import math

    from eostream.registry_bridge.calibration import CALIBRATION_SALT, calibration_files
    from eostream.shared.holdout import HoldoutSettings, choose, held_out_files, ms_candidates

    holdout = HoldoutSettings()
    held = set(held_out_files(data_dir, "ms13", holdout.per_class, holdout.salt))
    per_class = math.ceil(SIZE / 10)
    by_class = ms_candidates(data_dir)
    outside = {cls: [f for f in names if f not in held] for cls, names in by_class.items()}
    before = choose(outside, per_class, CALIBRATION_SALT)
    filled = list(before)
    for cls, names in by_class.items():
        inside = [f for f in names if f in held]
        short = max(0, per_class - len(outside[cls]))
        filled += choose({cls: inside}, short, CALIBRATION_SALT)
    now = calibration_files(data_dir, "ms13", SIZE, holdout)
    return {"now": now, "before": before, "holdout": filled}


def input_step(model: bytes) -> float | None:
    import onnx
    from onnx import numpy_helper

    for init in onnx.load_model_from_string(model).graph.initializer:
        if init.name == "input_normalised_scale":
            return float(numpy_helper.to_array(init))
    return None  # the stem stayed fp32


def map_model(labels: Path, model: Path, root: Path, stride: int) -> dict[str, Any]:
    """Water IoU per date (and NDWI's) and the class rasters of ``model``'s maps."""
    import rasterio

    from eostream.inference import evaluation

    threads = int(os.environ.get("BENCH_THREADS", "2"))
    settings = bench_int8.map_settings(root, stride, intra_op_threads=threads)
    report = evaluation.evaluate(str(labels), str(model), settings=settings)
    for line in report.errors:
        print(f"  error: {line}", flush=True)
    water, ndwi = [], []
    for item in report.items:
        water.append(evaluation.scores_for(item.model_cm, report.classes, item.partial)["water"])
        if item.ndwi_cm is not None:
            ndwi.append(evaluation.scores_for(item.ndwi_cm, report.classes, item.partial)["water"])
    rasters = {}  # by scene id: results/<scene>/<model>/v0/classification.tif
    for cog in sorted((root / "objects").rglob("classification.tif")):
        with rasterio.open(cog) as ds:
            rasters[cog.parents[2].name] = ds.read(1)
    return {
        "water_iou": [w["iou"] for w in water],
        "ndwi_iou": [w["iou"] for w in ndwi],
        "rasters": rasters,
    }


def compare(fp32: Path, data_dir: Path, labels: Path, work: Path, stride: int) -> dict[str, Any]:
    from eostream.registry_bridge.holdout import read_images
    from eostream.registry_bridge.quantize import quantise

    files = calibration_sets(data_dir)
    images = {key: read_images(data_dir, "ms13", names) for key, names in files.items()}
    started = time.perf_counter()
    base = map_model(labels, fp32, work / "fp32", stride)
    rows: dict[str, Any] = {"fp32": {"water_iou": base["water_iou"], "ndwi": base["ndwi_iou"]}}
    for name, (chosen, percentile) in VARIANTS.items():
        data = quantise(fp32.read_bytes(), images[chosen], input_percentile=percentile)
        path = work / f"{len(rows)}.onnx"
        path.write_bytes(data)
        got = map_model(labels, path, work / path.stem, stride)
        agreement = [
            float((raster == got["rasters"][key]).mean()) for key, raster in base["rasters"].items()
        ]
        rows[name] = {
            "patches": len(files[chosen]),
            "step": input_step(data),
            "water_iou": got["water_iou"],
            "agreement": agreement,
        }
    rows["seconds"] = time.perf_counter() - started
    return rows


def _f(values: list[float | None]) -> str:
    return " / ".join("-" if v is None else f"{v:.3f}" for v in values)


def report(name: str, rows: dict[str, Any]) -> None:
    fp32 = rows["fp32"]
    print(f"\n== {name} ({rows['seconds']:.0f} s)")
    print(f"{'':30} {'patches':>7} {'step':>7}  water IoU by date      agreement with fp32 (min)")
    print(f"{'fp32':30} {'':>7} {'':>7}  {_f(fp32['water_iou'])}")
    for variant in VARIANTS:
        r = rows[variant]
        step = "fp32" if r["step"] is None else f"{r['step']:.4f}"
        print(
            f"{variant:30} {r['patches']:>7} {step:>7}  {_f(r['water_iou'])}   "
            f"{_f(r['agreement'])} ({min(r['agreement']):.3f})"
        )
    print(f"{'NDWI > 0, same pixels':30} {'':>7} {'':>7}  {_f(fp32['ndwi'])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, nargs="*", default=[], help="13-band fp32 exports")
    parser.add_argument(
        "--seeds", type=int, nargs="*", help="train ms13 models (default: seed 0 without --onnx)"
    )
    parser.add_argument("--stride", type=int, default=8, help="window step (px) of the maps")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not os.environ.get("EOSTREAM_DATA_DIR"):
        parser.error("EOSTREAM_DATA_DIR is not set: point it at the data folder")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rasterio").setLevel(logging.ERROR)  # the Boadella crops' ExtraSamples
    data_dir = Path(os.environ["EOSTREAM_DATA_DIR"]).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-int8-calibration-"))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"cpu: {bench_int8.cpu_line()}; maps at stride {args.stride}, dates {', '.join(DATES)}")
    from eostream.inference import reference

    labels = reference.build_boadella(data_dir, work / "reference", dates=list(DATES))
    models = {path.stem: path.resolve() for path in args.onnx}
    seeds = args.seeds if args.seeds is not None else ([] if args.onnx else [0])
    if seeds:
        import torch

        torch.set_num_threads(int(os.environ.get("TRAINER_NUM_THREADS", "2")))
        for seed in seeds:
            for recipe in ("ms13", "ms13-stride2"):
                folder = work / f"{recipe}-seed{seed}"
                folder.mkdir()
                path = bench_int8.train_and_export(recipe, data_dir, folder, seed, None)
                models[f"{recipe} seed {seed}"] = path
    if not models:
        parser.error("no models: give --onnx files or --seeds")
    figures = {}
    for name, path in models.items():
        figures[name] = compare(path, data_dir, labels, work / name.replace(" ", "-"), args.stride)
        report(name, figures[name])
    print(
        "\nover every model: map agreement with fp32 (each model's lowest date: lowest, mean) "
        "and water IoU change against fp32 (every date: lowest, highest)"
    )
    for variant in VARIANTS:
        lows = [min(f[variant]["agreement"]) for f in figures.values()]
        changes = [
            mine - theirs
            for f in figures.values()
            for mine, theirs in zip(f[variant]["water_iou"], f["fp32"]["water_iou"], strict=True)
            if mine is not None and theirs is not None
        ]
        print(
            f"  {variant:30} {min(lows):.3f} / {sum(lows) / len(lows):.3f}   "
            f"{min(changes):+.3f} to {max(changes):+.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=float))


if __name__ == "__main__":
    main()
