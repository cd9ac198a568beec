"""Water from the user's own labels: leave one date out on the Boadella time series.

For each of the three fully labelled Boadella L2A dates, a per-pixel scikit-learn model (the
trainer's ``pixel_hgb``: bands plus spectral indices, exported to ONNX by ``export_pixel_onnx``)
is fitted on pixels sampled under the water labels of the OTHER labelled dates (the partial
2020-02-02 gives water pixels only), through the scene cube and sampler inference reads scenes
with (``eostream.inference.scenecube``, ``sampling``). The held-out date is then mapped per pixel by
the exported ONNX graph (onnxruntime) and scored against its labels with the map evaluation's
scoring, beside NDWI > 0 on the same pixels in the same run. The held-out date is never sampled.

    EOSTREAM_DATA_DIR=/work/shared/data uv run python benchmarks/maps/bench_own_labels.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from eostream.inference import accuracy, reference, sampling, scenecube
from eostream.inference.engine import NODATA
from eostream.shared.modelcard import INPUT_NAME
from eostream.trainer.pixel import export_pixel_onnx, fit_pixel_model

DATES = ("2020-06-21", "2020-09-14", "2021-07-16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="at most this many pixels per class and date (default: all, the scene's own class "
        "balance; a balanced 4,000 per class over-predicts water: IoU 0.86-0.91)",
    )
    parser.add_argument("--iterations", type=int, default=100, help="boosting iterations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data_dir = Path(os.environ.get("EOSTREAM_DATA_DIR", "../shared/data"))

    with tempfile.TemporaryDirectory(prefix="eostream-own-labels-") as tmp:
        labels_href = reference.build_boadella(data_dir, Path(tmp) / "ref")
        cube = scenecube.build(
            scenecube.scenes_in(str(Path(tmp) / "ref")), reference.BOADELLA_BANDS
        )
        labels = sampling.load_labels(str(labels_href))
        times = [str(t)[:10] for t in cube["time"].values]
        water = labels.classes.index("water")
        print(f"classes {labels.classes}; {len(times)} dates; bands {reference.BOADELLA_BANDS}")
        print(
            "| held-out date | trained on | own labels, pixel model P / R / IoU "
            "| NDWI > 0 P / R / IoU |"
        )
        print("|---|---|---|---|")
        for held in DATES:
            labelled = {i.item_id[-10:] for i in labels.items}
            train_dates = sorted(labelled - {held})
            exclude = [t for t in cube["time"].values if str(t)[:10] not in train_dates]
            started = time.perf_counter()
            table = sampling.sample(
                cube, labels, exclude=exclude, max_per_class=args.per_class, seed=args.seed
            )
            card = sampling.card_for(table, f"boadella-water-not-{held}").model_copy(
                update={"library": "scikit-learn", "architecture": "pixel_hgb"}
            )
            model = fit_pixel_model(
                table.x,
                table.y,
                table.classes,
                table.bands,
                seed=args.seed,
                max_iter=args.iterations,
            )
            path = Path(tmp) / f"{held}.onnx"
            export_pixel_onnx(model, card, path)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

            def predict(x: np.ndarray, session: ort.InferenceSession = session) -> np.ndarray:
                logits = session.run(None, {INPUT_NAME: x.astype(np.float32)})[0]
                return np.asarray(np.asarray(logits).argmax(axis=1))

            t = times.index(held)
            mapped = sampling.classify(cube, t, predict)
            item = next(i for i in labels.items if i.item_id.endswith(held))
            mine = accuracy.class_scores(sampling.confusion(cube, labels, item, mapped), water)
            plane = cube[scenecube.VARIABLE].isel(time=t)
            is_water, _ = accuracy.ndwi_water(
                plane.sel(band="B03").values, plane.sel(band="B08").values
            )
            ndwi_map = np.where(is_water, water, labels.background).astype(np.uint8)
            ndwi_map[mapped == NODATA] = NODATA
            base = accuracy.class_scores(sampling.confusion(cube, labels, item, ndwi_map), water)
            print(
                f"| {held} | {', '.join(train_dates)} ({len(table)} px, "
                f"{time.perf_counter() - started:.0f} s) | {mine.precision:.3f} / "
                f"{mine.recall:.3f} / {mine.iou:.3f} | {base.precision:.3f} / {base.recall:.3f} / "
                f"{base.iou:.3f} |"
            )


if __name__ == "__main__":
    main()
