"""Transfer learning RGB -> 13 bands against training from scratch, on the small real MS set.

1. trains (and registers) an RGB model on ``--rgb-samples-per-class`` JPEG patches per class;
2. fine-tunes a 13-band model from it (``base_model=models:/NAME/VERSION``: the first conv is
   widened, RGB filters copied to B04/B03/B02, the rest start small);
3. trains the same network from scratch on the same MS split (same seed, same held-out patches).

Prints both held-out accuracies and their difference. EuroSAT MS here has only 375 real patches
(about 51 held out), so one run's difference is noisy: use ``--seeds`` for several.

The two EuroSAT releases share file stems (``Forest_12.jpg`` and ``Forest_12.tif`` are one
place), so the RGB base leaves out every patch whose class and stem is in the MS test split of
one of ``--seeds``, and the run prints that overlap (0 by construction).

    EOSTREAM_DATA_DIR=/path/to/data uv run python benchmarks/train/transfer_ms.py
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from unittest import mock

import torch

from eostream.shared.holdout import HoldoutSettings
from eostream.shared.settings import load_settings
from eostream.trainer import pipeline
from eostream.trainer.catalog import CatalogTable, build_catalog
from eostream.trainer.pipeline import tracker_for, train_and_register
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.selection import (
    Patch,
    Selection,
    SelectionSpec,
    exclusion_key,
    select,
    select_for_training,
)
from eostream.trainer.settings import TrainerSettings


def place(patch: Patch) -> str:
    """Its class and file stem (``Forest/Forest_12``): one place in both releases, ``.jpg`` in
    RGB and ``.tif`` in MS."""
    return f"{patch.class_name}/{PurePosixPath(patch.href).stem}"


def ms_test_places(settings: TrainerSettings, seeds: list[int]) -> dict[int, set[str]]:
    """Per seed, the places of the MS test patches (the split the MS runs below select)."""
    table = build_catalog(settings.data_dir, settings.cache_dir, "ms13")
    return {
        seed: {
            place(p)
            for p in select_for_training(
                table,
                SelectionSpec(band_set="ms13", seed=seed),
                settings.data_dir,
                settings.gate_holdout,
            ).of("test")
        }
        for seed in seeds
    }


@contextlib.contextmanager
def leaving_out(places: set[str], chosen: list[Selection]) -> Iterator[None]:
    """The trainer's selection (gate hold-out left out) with ``places`` left out too; each
    selection made is appended to ``chosen``."""

    def select_leaving_out(
        table: CatalogTable, spec: SelectionSpec, data_dir: Path, gate: HoldoutSettings
    ) -> Selection:
        gated = select_for_training(table, spec, data_dir, gate)
        every = select(table, replace(gated.spec, samples_per_class=None))
        extra = {exclusion_key(p.class_name, p.href) for p in every.patches if place(p) in places}
        selection = select(
            table, replace(spec, exclude=tuple(sorted({*gated.spec.exclude, *extra})))
        )
        chosen.append(selection)
        return selection

    with mock.patch.object(pipeline, "select_for_training", select_leaving_out):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="small_cnn")
    parser.add_argument("--rgb-samples-per-class", type=int, default=300)
    parser.add_argument("--rgb-epochs", type=int, default=10)
    parser.add_argument("--ms-epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("stac_geoparquet", "onnxscript", "onnx_ir", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    overrides: dict[str, object] = {"bus": "memory"}
    tmp = tempfile.mkdtemp(prefix="transfer-")
    settings = load_settings(TrainerSettings, **overrides)
    if settings.mlflow_tracking_uri.startswith("sqlite:///.eostream"):
        settings = settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{tmp}/mlflow.db"})
    torch.set_num_threads(settings.num_threads)
    tracker = tracker_for(settings)
    tag = uuid.uuid4().hex[:6]
    ms_test = ms_test_places(settings, args.seeds)
    base_selections: list[Selection] = []
    with leaving_out(set[str]().union(*ms_test.values()), base_selections):
        rgb = train_and_register(
            TrainingPlan(
                request_id=f"transfer-rgb-{tag}",
                model_name=f"transfer-rgb-{tag}",
                band_set="rgb",
                architecture=args.architecture,
                epochs=args.rgb_epochs,
                learning_rate=3e-3,
                samples_per_class=args.rgb_samples_per_class,
            ),
            settings,
            tracker=tracker,
        )
    base = f"models:/{rgb.version.name}/{rgb.version.version}"
    print(f"RGB base model {base}: test accuracy {rgb.metrics['test_accuracy']:.3f}")
    base_places = {place(p) for chosen in base_selections for p in chosen.patches}
    for seed, places in ms_test.items():
        print(
            f"seed {seed}: MS test patches in the RGB base's data (any split): "
            f"{len(places & base_places)} of {len(places)}"
        )
    gains = []
    for seed in args.seeds:
        scores = {}
        for label, base_model, lr in (("fine-tuned", base, 1e-3), ("scratch", None, 3e-3)):
            outcome = train_and_register(
                TrainingPlan(
                    request_id=f"transfer-ms-{label}-{seed}-{tag}",
                    model_name=f"transfer-ms-{tag}",
                    band_set="ms13",
                    architecture=args.architecture,
                    epochs=args.ms_epochs,
                    learning_rate=lr,
                    seed=seed,
                    base_model=base_model,
                    batch_size=32,
                    patience=args.ms_epochs,
                ),
                settings,
                tracker=tracker,
            )
            scores[label] = outcome.metrics["test_accuracy"]
        gains.append(scores["fine-tuned"] - scores["scratch"])
        print(
            f"seed {seed}: 13-band fine-tuned from RGB {scores['fine-tuned']:.3f}, "
            f"from scratch {scores['scratch']:.3f}, gain {gains[-1]:+.3f}"
        )
    print(
        f"mean gain of transfer over scratch: {statistics.mean(gains):+.3f} over "
        f"{len(gains)} seed(s)"
    )


if __name__ == "__main__":
    main()
