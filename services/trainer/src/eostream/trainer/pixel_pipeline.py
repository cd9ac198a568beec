"""One training request for a per-pixel scikit-learn model: the sklearn family beside torch's.

Same request, selection (the gate's hold-out left out), MLflow run, tags and registration as
:func:`eostream.trainer.pipeline.train_and_register`; what differs is the fit. Pixels are
sampled from the selected EuroSAT MS patches (``batch_size`` pixels per patch; with the
``radiometry`` input augmentation each training patch is drawn three times, twice under a fresh
L1C->L2A haze and gain jitter), the estimator is fitted under ``mlflow.sklearn.autolog``
(``epochs`` x 10 boosting iterations or trees) and scored on the val/test patches by the mean of
its per-pixel probabilities over each patch (on a 1-in-4 grid; the registry-bridge's gate
scores its hold-out the same way on every pixel).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sklearn

from eostream.shared import tags
from eostream.shared.modelcard import ModelCard
from eostream.shared.spectral import index_features
from eostream.trainer import chipset, label_pixels
from eostream.trainer.augment import training_augmentation
from eostream.trainer.bands import band_set_bands
from eostream.trainer.cards import card_scaling, chip_card
from eostream.trainer.datasets import UNKNOWN, PatchTensors
from eostream.trainer.pipeline import (
    Outcome,
    StartedCallback,
    dataset_name,
    run_params,
    select_and_load,
)
from eostream.trainer.pixel import (
    SKOPS_TRUSTED,
    PixelModel,
    check_pixel_onnx,
    export_pixel_onnx,
    fit_pixel_model,
    patch_probabilities,
    sample_pixels,
)
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.registered import version_description
from eostream.trainer.scoring import confusion_matrix, per_class_scores
from eostream.trainer.selection import Selection
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.tracking import Tracker

log = logging.getLogger(__name__)

AUGMENTED_COPIES = 3
CHECK_PIXELS = 20_000
#: val/test patches are scored on every 4th row and column (256 of 4,096 pixels): the run's
#: figures; the gate scores every pixel of its own hold-out
SCORE_STEP = 4


def patch_scores(model: PixelModel, data: PatchTensors) -> dict[str, Any]:
    """Accuracy, loss, confusion, precision and recall of whole patches, each scored by the mean
    of the model's per-pixel probabilities over the patch."""
    p = patch_probabilities(model.logits, data.x, step=SCORE_STEP)
    truth = data.y.numpy()
    pred = p.argmax(axis=1)
    matrix = confusion_matrix(truth, pred, len(model.classes))
    precision, recall = per_class_scores(matrix)
    picked = np.maximum(p[np.arange(len(truth)), truth], 1e-12)
    return {
        "loss": float(-np.log(picked).mean()) if len(truth) else 0.0,
        "accuracy": float((pred == truth).mean()) if len(truth) else 0.0,
        "confusion": matrix,
        "precision": precision,
        "recall": recall,
    }


def train_pixel_model(
    plan: TrainingPlan,
    settings: TrainerSettings,
    *,
    tracker: Tracker,
    on_started: StartedCallback | None = None,
) -> Outcome:
    """Fit, score, export and register the pixel model ``plan`` asks for (already checked for
    an earlier registration by the caller)."""
    started = time.perf_counter()
    selection, data = select_and_load(plan, settings)
    if plan.dataset is not None:
        return _train_on_label_chips(plan, settings, selection, data, tracker, on_started)
    bands = band_set_bands(plan.band_set)
    scaling = card_scaling(plan.band_set, settings)
    augmentation = None
    if "radiometry" in settings.input_augmentation:
        units = {s.band: (s.scale, s.offset) for s in scaling}
        augmentation = training_augmentation(("radiometry",), bands, units)
    x, y = sample_pixels(
        data["train"],
        plan.batch_size,
        seed=plan.seed,
        augmentation=augmentation,
        copies=AUGMENTED_COPIES,
    )
    card = ModelCard(
        name=plan.model_name,
        band_set=plan.band_set,
        bands=bands,
        scaling=scaling,
        classes=plan.classes,
        patch_size=1,
        task="pixel",
        library="scikit-learn",
        library_version=sklearn.__version__,
        architecture=plan.architecture,
        training_data_digest=selection.digest,
        description=(
            f"EuroSAT {plan.band_set} per-pixel {plan.architecture} (bands + NDWI, MNDWI, NDVI, "
            f"NDBI in the graph), request {plan.request_id}"
        ),
    )
    return _fit_and_register(
        plan, settings, selection, data, card, x, y, tracker=tracker, on_started=on_started,
        started=started,
    )  # fmt: skip


def _train_on_label_chips(
    plan: TrainingPlan,
    settings: TrainerSettings,
    selection: Selection,
    data: dict[str, PatchTensors],
    tracker: Tracker,
    on_started: StartedCallback | None,
) -> Outcome:
    """A pixel model of the user's own labels: the labelled pixels of the train chips' masks
    (:mod:`eostream.trainer.label_pixels`), on the indices alone by default, with the rarer
    class's threshold chosen by leave-one-date-out over the training dates (else on the val
    chips' pixels)."""
    started = time.perf_counter()
    dataset = chipset.open_dataset(plan.dataset or "")
    masks = {s: chipset.load_masks(dataset, list(selection.of(s))) for s in data}
    chips = {s: data[s].x.numpy() for s in data}
    pixels = {
        s: label_pixels.mask_pixels(
            chips[s], masks[s], max_pixels=settings.label_pixel_max, seed=plan.seed
        )
        for s in data
    }
    bands = band_set_bands(dataset.band_set)
    with_bands = label_pixels.uses_bands(bands, settings.label_pixel_indices_only)
    card = chip_card(plan, dataset, selection.digest).model_copy(
        update={
            "task": "pixel",
            "patch_size": 1,
            "library": "scikit-learn",
            "library_version": sklearn.__version__,
            "pixel_features": "bands+indices" if with_bands else "indices",
            "description": (
                f"{', '.join(dataset.classes)} per-pixel {plan.architecture} on the labelled "
                f"pixels of chips {dataset.path.parent.name} "
                f"({'bands + indices' if with_bands else 'spectral indices alone'}), "
                f"request {plan.request_id}"
            ),
        }
    )
    # the train chips' pixels date by date (a chip's arrays file is its scene's)
    scene_of = np.array([p.href.partition("#")[0] for p in selection.of("train")])
    scenes = sorted(set(scene_of.tolist()))
    by_date = {}
    for scene in scenes:
        index = np.flatnonzero(scene_of == scene)
        if not (masks["train"][index] != UNKNOWN).any():
            continue  # no labelled pixel on that date's training chips
        by_date[scene] = label_pixels.mask_pixels(
            chips["train"][index],
            masks["train"][index],
            max_pixels=max(1000, settings.label_pixel_max // len(scenes)),
            seed=plan.seed,
        )
    x, y = pixels["train"]
    return _fit_and_register(
        plan, settings, selection, data, card, x, y, tracker=tracker, on_started=on_started,
        started=started, held_out=pixels, by_date=by_date,
    )  # fmt: skip


def _fit_and_register(
    plan: TrainingPlan,
    settings: TrainerSettings,
    selection: Selection,
    data: dict[str, PatchTensors],
    card: ModelCard,
    x: np.ndarray,
    y: np.ndarray,
    *,
    tracker: Tracker,
    on_started: StartedCallback | None,
    started: float,
    held_out: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    by_date: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Outcome:
    """Fit ``card``'s estimator on pixels ``x``, ``y`` in an MLflow run, score, export, check
    and register it. With ``held_out`` (labelled pixels per split: the user's own labels) a
    two-class model gets the threshold that the val pixels choose, and per-pixel IoUs are
    logged."""
    bands = card.bands
    with_bands = card.pixel_features == "bands+indices"
    run_tags = {
        tags.REQUEST_ID: plan.request_id,
        "eostream.requested_by": plan.requested_by,
        "eostream.family": plan.family,
        "eostream.input_augmentation": ",".join(settings.input_augmentation) or "none",
        "eostream.model_library": "scikit-learn",
    }
    with tracker.run(None, f"{plan.model_name}-{plan.band_set}-{plan.architecture}", run_tags) as (
        run_id
    ):
        url = tracker.run_url(run_id)
        if on_started is not None:
            on_started(run_id, url, tracker.experiment_id, False)
        tracker.log_params(
            {  # request.*: the estimator's own parameters come from autolog under their names
                **{f"request.{k}": v for k, v in run_params(plan, selection).items()},
                "training_pixels": len(x),
                "pixels_per_patch": plan.batch_size,
            }
        )
        tracker.set_tags(
            {"compute.sklearn": sklearn.__version__, "compute.threads": str(settings.num_threads)}
        )
        tracker.log_dataset(selection, dataset_name(plan))
        if plan.dataset is not None:
            tracker.log_chips(chipset.open_dataset(plan.dataset).path)
        fit_started = time.perf_counter()
        with tracker.sklearn_autolog():
            model = fit_pixel_model(
                x,
                y,
                card.classes,
                bands,
                seed=plan.seed,
                architecture=plan.architecture,
                max_iter=10 * plan.epochs,
                threads=settings.num_threads,
                with_bands=with_bands,
            )
        fit_seconds = time.perf_counter() - fit_started
        pixel_metrics: dict[str, float] = {}
        if held_out is not None:

            def refit(xs: np.ndarray, ys: np.ndarray) -> PixelModel:
                return fit_pixel_model(
                    xs, ys, card.classes, bands, seed=plan.seed, architecture=plan.architecture,
                    max_iter=10 * plan.epochs, threads=settings.num_threads, with_bands=with_bands,
                )  # fmt: skip

            model, card, pixel_metrics = _tune_on_pixels(
                model, card, held_out, tracker, by_date or {}, refit
            )
        results = {s: patch_scores(model, data[s]) for s in ("val", "test")}
        for split, result in results.items():
            tracker.log_evaluation("best_val" if split == "val" else split, result, card.classes)
        check_x, _ = sample_pixels(data["test"], max(1, CHECK_PIXELS // len(data["test"])), seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            sha256 = export_pixel_onnx(model, card, onnx_path)
            check = check_pixel_onnx(onnx_path, model, check_x, settings.onnx_tolerance)
            tracker.log_artifact(onnx_path, "onnx")
            tracker.log_onnx_model(onnx_path, check_x[:2])
        metrics = {
            "test_accuracy": float(results["test"]["accuracy"]),
            "best_val_accuracy": float(results["val"]["accuracy"]),
            "train_pixels_per_second": len(x) / max(fit_seconds, 1e-9),
            "onnx_max_abs_diff": check.max_abs_diff,
            "onnx_argmax_agreement": check.argmax_agreement,
            "run_time_seconds": time.perf_counter() - started,
            **pixel_metrics,
        }
        tracker.log_metrics(metrics)
        model_uri = tracker.log_sklearn_model(
            model.estimator,
            index_features(check_x[:2], bands, with_bands=with_bands),
            SKOPS_TRUSTED.get(plan.architecture, ()),
        )
        version = tracker.register(
            model_uri,
            plan.model_name,
            {
                tags.BAND_SET: plan.band_set,
                tags.INPUT_SCALING: json.dumps([s.model_dump() for s in card.scaling]),
                tags.TRAINING_DATA_DIGEST: selection.digest,
                tags.MODEL_CARD: card.to_json(),
                tags.ONNX_SHA256: sha256,
                tags.ONNX_ARTIFACT: tags.ONNX_ARTIFACT_PATH,
                tags.ARCHITECTURE: plan.architecture,
                tags.REQUEST_ID: plan.request_id,
                tags.TEST_ACCURACY: f"{metrics['test_accuracy']:.4f}",
                tags.GATE_HOLDOUT_EXCLUDED: str(bool(selection.spec.exclude)).lower(),
            },
            description=version_description(card, selection, metrics["test_accuracy"]),
        )
    log.info(
        "registered pixel model %s v%s (patch test accuracy %.3f) in %.0fs",
        version.name,
        version.version,
        metrics["test_accuracy"],
        metrics["run_time_seconds"],
    )
    return Outcome(version, metrics, url)


def _tune_on_pixels(
    model: PixelModel,
    card: ModelCard,
    pixels: dict[str, tuple[np.ndarray, np.ndarray]],
    tracker: Tracker,
    by_date: dict[str, tuple[np.ndarray, np.ndarray]],
    refit: Any,
) -> tuple[PixelModel, ModelCard, dict[str, float]]:
    """A two-class model's threshold (the rarer class's): by leave-one-date-out over the
    training dates when there are two or more, else on the val pixels. Both splits' per-pixel
    IoUs are returned as metrics."""
    metrics: dict[str, float] = {}
    if len(model.classes) == 2:
        cls = label_pixels.rarer_class(pixels["train"][1], 2)
        chosen = label_pixels.threshold_across_dates(
            by_date, refit, cls
        ) or label_pixels.choose_threshold(model, *pixels["val"], cls)
        name = model.classes[chosen.cls]
        tracker.log_params(
            {
                "threshold_class": name,
                "threshold": chosen.threshold,
                "threshold_chosen_on": chosen.chosen_on,
            }
        )
        log.info(
            "threshold of %s: %.2f (%s IoU %.3f; %.3f at 0.5)",
            name, chosen.threshold, chosen.chosen_on, chosen.iou, chosen.iou_at_half,
        )  # fmt: skip
        if chosen.threshold != 0.5:
            model = model.with_threshold(chosen.cls, chosen.threshold)
            card = card.model_copy(update=model.card_fields())
    for split in ("val", "test"):
        x, y = pixels[split]
        for cls_name, value in label_pixels.pixel_ious(model, x, y).items():
            metrics[f"{split}_pixel_iou_{cls_name}"] = value
    return model, card, metrics
