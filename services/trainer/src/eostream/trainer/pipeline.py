"""One training request, end to end: data -> model -> fit -> evaluate -> ONNX -> register.

Idempotent and resumable: a request that already registered a version returns it without
training; a request that crashed resumes its MLflow run and its last epoch checkpoint (both kept
under the cache folder by request id). Registration is the last step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eostream.shared import tags
from eostream.shared.modelcard import ModelCard
from eostream.trainer import chipset
from eostream.trainer.augment import training_augmentation
from eostream.trainer.cards import card_scaling, chip_card, eurosat_card
from eostream.trainer.catalog import (
    build_catalog,
)
from eostream.trainer.datasets import PatchTensors, load_patches
from eostream.trainer.errors import BadTrainingRequestError
from eostream.trainer.export import check_onnx, export_onnx
from eostream.trainer.models import (
    SEGMENTATION_ARCHITECTURES,
    EuroSATNet,
)
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.pretrained import (
    resolve_pretrained,
)
from eostream.trainer.registered import RegisteredVersion, version_description
from eostream.trainer.scoring import evaluate
from eostream.trainer.selection import Selection, SelectionSpec, place_key, select_for_training
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.start import prepare_model, pretrained_start
from eostream.trainer.task import (
    BatchCallback,
    TrainConfig,
    balanced_class_weights,
    epochs_for_steps,
    fit,
    resolve_device,
    training_precision,
)
from eostream.trainer.tracking import Tracker

log = logging.getLogger(__name__)

#: ``(run_id, run_url, experiment_id, reused)``: a run began, or (``reused``) the request had
#: already registered a version, whose run this is
StartedCallback = Callable[[str, str, str, bool], None]
ONNX_CHECK_SAMPLES = 256


@dataclass(frozen=True)
class Fitted:
    """What a family's fit hands back to the shared steps: its evaluation on ``val`` and
    ``test`` (:func:`eostream.trainer.scoring.evaluate`'s dicts), its fit and ONNX-check figures,
    the checked ONNX's SHA-256 (logged under ``onnx/``) and the logged model's URI."""

    results: dict[str, dict[str, Any]]
    metrics: dict[str, float]
    sha256: str
    model_uri: str


@dataclass(frozen=True)
class Outcome:
    version: RegisteredVersion
    metrics: dict[str, float]
    run_url: str
    reused: bool = False


def tracker_for(settings: TrainerSettings) -> Tracker:
    """The MLflow adapter the settings name (an MLflow server, or sqlite)."""
    return Tracker(
        settings.mlflow_tracking_uri,
        settings.experiment_name,
        settings.mlflow_registry_uri,
        settings.mlflow_ui_url,
    )


def select_and_load(
    plan: TrainingPlan, settings: TrainerSettings, base_train: tuple[str, ...] = ()
) -> tuple[Selection, dict[str, PatchTensors]]:
    """The request's selection (the gate's hold-out left out; ``base_train``, the patches a
    base model trained on, kept in train) and its train/val/test patches; with
    ``plan.dataset``, the chip dataset's chips in their recorded splits."""
    if plan.dataset is not None:
        dataset = chipset.open_dataset(plan.dataset)
        chosen = chipset.select(dataset, plan.seed)
        data = {s: chipset.load(dataset, chosen.of(s)) for s in ("train", "val", "test")}
        if plan.architecture in SEGMENTATION_ARCHITECTURES:  # targets: every pixel's class
            for s, tensors in data.items():
                masks = chipset.load_masks(dataset, list(chosen.of(s)))
                data[s] = replace(tensors, y=torch.from_numpy(masks.astype(np.int64)))
        return chosen, data
    table = build_catalog(settings.data_dir, settings.cache_dir, plan.band_set)
    selection = select_for_training(
        table,
        SelectionSpec(
            band_set=plan.band_set,
            classes=plan.classes,
            samples_per_class=plan.samples_per_class,
            split=plan.split,
            seed=plan.seed,
            train_only=base_train,
        ),
        settings.data_dir,
        settings.gate_holdout,
    )
    data = {
        s: load_patches(settings.data_dir, plan.band_set, selection.of(s), settings.num_threads)
        for s in ("train", "val", "test")
    }
    return selection, data


def compute_description(device: torch.device) -> dict[str, str]:
    info = {
        "device": device.type,
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cpu": platform.processor() or platform.machine(),
        "host": platform.node(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def train_and_register(
    plan: TrainingPlan,
    settings: TrainerSettings,
    *,
    tracker: Tracker,
    on_started: StartedCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> Outcome:
    """Train, evaluate, export and register ``plan``, tracked by ``tracker`` (the MLflow adapter
    the entrypoint picked: :func:`tracker_for`)."""
    started = time.perf_counter()
    torch.set_num_threads(settings.num_threads)
    tracker.configure()
    existing = tracker.find_registered(plan.model_name, plan.request_id)  # also pixel models
    if existing is not None:
        log.info(
            "request %s already registered %s v%s", plan.request_id, existing.name, existing.version
        )
        url = tracker.run_url(existing.run_id)
        if on_started is not None:
            on_started(existing.run_id, url, tracker.experiment_id, True)
        return Outcome(existing, existing.metrics, url, reused=True)

    if plan.base_model is not None and "@" in plan.base_model:
        # the version the alias names now: what the run starts from, and its lineage for good
        # (the alias moves on)
        plan = replace(plan, base_model=tracker.resolve_version(plan.base_model))
    if plan.family == "sklearn":  # per-pixel models: a pipeline of their own
        from eostream.trainer.pixel_pipeline import train_pixel_model

        return train_pixel_model(plan, settings, tracker=tracker, on_started=on_started)
    # a missing or wrong checkpoint file is refused before the data is read
    checked = resolve_pretrained(plan.pretrained) if plan.pretrained else None
    # what a base model trained on stays in train: its new seed or split must not score the
    # fine-tuned model on patches it has seen (they flattered its test accuracy by 0.08)
    base_train = (
        tracker.training_keys_of(plan.base_model)
        if plan.base_model is not None and plan.dataset is None
        else ()
    )
    selection, data = select_and_load(plan, settings, base_train)
    # the torch family's model; the keras family builds its own (keras_family.fit_and_export)
    model = prepare_model(plan, tracker, data["train"]) if plan.family == "torch" else None
    pretrained = pretrained_start(plan, model, checked) if model is not None else None
    augmentation = settings.input_augmentation if model is not None else ()
    if model is not None and augmentation:  # training-only (identity in eval): not in the ONNX
        units = {s.band: (s.scale, s.offset) for s in card_scaling(plan.band_set, settings)}
        model.with_jitter(training_augmentation(augmentation, model.bands, units))
    card = (
        chip_card(plan, chipset.open_dataset(plan.dataset), selection.digest)
        if plan.dataset is not None
        else eurosat_card(plan, settings, selection.digest, pretrained)
    )
    device = resolve_device(settings.device)
    work = settings.cache_dir / "runs" / _safe(plan.request_id)
    work.mkdir(parents=True, exist_ok=True)
    run_file = work / "mlflow_run_id"
    resume = run_file.read_text().strip() if run_file.is_file() else None
    run_tags = {
        tags.REQUEST_ID: plan.request_id,
        "eostream.requested_by": plan.requested_by,
        "eostream.input_augmentation": ",".join(augmentation) or "none",
        "eostream.family": plan.family,
        "eostream.pretrained": card.pretrained_source
        or (pretrained.description if pretrained else "none"),
    }
    with tracker.run(
        resume, f"{plan.model_name}-{plan.band_set}-{plan.architecture}", run_tags
    ) as run_id:
        run_file.write_text(run_id)
        url = tracker.run_url(run_id)
        if on_started is not None:
            on_started(run_id, url, tracker.experiment_id, False)
        if resume is None:
            tracker.log_params(run_params(plan, selection))
            tracker.set_tags({f"compute.{k}": v for k, v in compute_description(device).items()})
            tracker.log_dataset(selection, dataset_name(plan))
            if plan.dataset is not None:
                tracker.log_chips(chipset.open_dataset(plan.dataset).path)
        config = train_config(plan, settings, data["train"])
        # a tag, set on every start: a run resumed on another machine may compute otherwise
        mode = "fp32" if plan.family == "keras" else training_precision(config, device)
        tracker.set_tags({"compute.precision": mode})
        if resume is None and plan.dataset is not None:
            tracker.log_params(
                {
                    "epochs_for_steps": config.epochs,
                    "patience_for_steps": config.patience,
                    "class_weights": config.class_weights,
                }
            )
        if plan.family == "keras":
            from eostream.trainer import keras_family

            fitted = keras_family.fit_and_export(
                card,
                data,
                config,
                tracker=tracker,
                device=device,
                tolerance=settings.onnx_tolerance,
                on_batch=on_batch,
            )
        elif model is not None:  # the torch family's, prepared above
            fitted = _fit_torch(
                model, card, data, config, settings, tracker, device, work, on_batch
            )
        else:  # plan_training refuses families the pipeline does not know
            raise BadTrainingRequestError(f"no trainer for family {plan.family!r}")
        results = fitted.results
        for split, result in results.items():
            # "val" metrics are the per-epoch curve; the kept (best) model's are "best_val_*"
            tracker.log_evaluation("best_val" if split == "val" else split, result, card.classes)
        metrics = {
            "test_accuracy": float(results["test"]["accuracy"]),
            "best_val_accuracy": float(results["val"]["accuracy"]),
            **fitted.metrics,
            **pixel_iou_metrics(results, card.classes),
            "run_time_seconds": time.perf_counter() - started,
        }
        # test_accuracy and best_val_accuracy are log_evaluation's: logged once, above
        tracker.log_metrics({k: v for k, v in metrics.items() if k not in EVALUATION_METRICS})
        version = tracker.register(
            fitted.model_uri,
            plan.model_name,
            {
                tags.BAND_SET: plan.band_set,
                tags.INPUT_SCALING: json.dumps([s.model_dump() for s in card.scaling]),
                tags.TRAINING_DATA_DIGEST: selection.digest,
                tags.MODEL_CARD: card.to_json(),
                tags.ONNX_SHA256: fitted.sha256,
                tags.ONNX_ARTIFACT: tags.ONNX_ARTIFACT_PATH,
                tags.ARCHITECTURE: plan.architecture,
                tags.REQUEST_ID: plan.request_id,
                tags.TEST_ACCURACY: f"{metrics['test_accuracy']:.4f}",
                # false: the gate's held-out patches were in its training data (see selection)
                tags.GATE_HOLDOUT_EXCLUDED: str(bool(selection.spec.exclude)).lower(),
            },
            description=version_description(card, selection, metrics["test_accuracy"]),
        )
    shutil.rmtree(work, ignore_errors=True)
    log.info(
        "registered %s v%s (test accuracy %.3f) in %.0fs",
        version.name,
        version.version,
        metrics["test_accuracy"],
        metrics["run_time_seconds"],
    )
    return Outcome(version, metrics, url)


def _fit_torch(
    model: EuroSATNet,
    card: ModelCard,
    data: dict[str, PatchTensors],
    config: TrainConfig,
    settings: TrainerSettings,
    tracker: Tracker,
    device: torch.device,
    work: Path,
    on_batch: BatchCallback | None,
) -> Fitted:
    """The torch family's part: fit (resuming from the epoch checkpoint), evaluate, export,
    check and log the model."""
    history = fit(
        model,
        data["train"],
        data["val"],
        config,
        device,
        checkpoint=work / "checkpoint.pt",
        on_epoch=tracker.log_epoch,
        on_batch=on_batch,
    )
    model = model.cpu().eval()
    cpu = torch.device("cpu")
    results = {s: evaluate(model, data[s], cpu) for s in ("val", "test")}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        sha256 = export_onnx(model, card, onnx_path, settings.onnx_opset)
        check = check_onnx(
            onnx_path, model, data["test"].x[:ONNX_CHECK_SAMPLES], settings.onnx_tolerance
        )
        tracker.log_artifact(onnx_path, "onnx")
        tracker.log_onnx_model(onnx_path, data["test"].x[:2].numpy())
    metrics = {
        # epochs count from 1; the per-epoch metrics' steps from 0 (MLflow's and keras' habit):
        # best_step is the step of the kept epoch's val_* figures
        "best_epoch": float(history.best_epoch + 1),
        "best_step": float(history.best_epoch),
        "epochs_run": float(len(history.epochs)),
        "train_images_per_second": history.images_per_second,
        "onnx_max_abs_diff": check.max_abs_diff,
        "onnx_argmax_agreement": check.argmax_agreement,
    }
    model_uri = tracker.log_model(model, data["test"].x[:2].numpy())
    return Fitted(results=results, metrics=metrics, sha256=sha256, model_uri=model_uri)


def pixel_iou_metrics(
    results: dict[str, dict[str, Any]], classes: tuple[str, ...]
) -> dict[str, float]:
    """A segmentation model's per-pixel IoUs (``{split}_pixel_iou_<class>``, as a pixel model
    logs them) and their mean; nothing for a patch model."""
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        result = results.get(split, {})
        if "iou" not in result:
            continue
        metrics[f"{split}_mean_iou"] = float(result["mean_iou"])
        for name, value in zip(classes, result["iou"], strict=True):
            metrics[f"{split}_pixel_iou_{name}"] = float(value)
    return metrics


def train_config(plan: TrainingPlan, settings: TrainerSettings, train: PatchTensors) -> TrainConfig:
    """The fit's settings. On a chip dataset (the user's own labels: few chips, rare classes)
    at least ``settings.min_chip_steps`` optimiser steps, patience stretched alike, and the
    loss weighted by class (:func:`balanced_class_weights`)."""
    config = TrainConfig(
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        learning_rate=plan.learning_rate,
        patience=plan.patience,
        seed=plan.seed,
        backbone_lr_scale=plan.backbone_lr_scale,
        label_smoothing=plan.label_smoothing,
        mix=plan.mix,
        ema_decay=plan.ema_decay,
        cpu_bf16=settings.cpu_bf16,
    )
    if plan.dataset is None:
        return config
    epochs = epochs_for_steps(plan.epochs, len(train), plan.batch_size, settings.min_chip_steps)
    if epochs > plan.epochs:
        log.info(
            "%d training chips: %d epochs instead of %d for %d optimiser steps",
            len(train), epochs, plan.epochs, settings.min_chip_steps,
        )  # fmt: skip
    return replace(
        config,
        epochs=epochs,
        patience=plan.patience * epochs // plan.epochs,
        class_weights=balanced_class_weights(train.y, len(plan.classes)),
    )


#: figures log_evaluation logs itself (``<prefix>_accuracy``)
EVALUATION_METRICS = ("test_accuracy", "best_val_accuracy")


def dataset_name(plan: TrainingPlan) -> str:
    """The run's dataset input: the EuroSAT band set, or the chip dataset's folder."""
    if plan.dataset is None:
        return f"eurosat-{plan.band_set}"
    return f"chips-{chipset.open_dataset(plan.dataset).path.parent.name}"


def run_params(plan: TrainingPlan, selection: Selection) -> dict[str, object]:
    params: dict[str, object] = {k: v for k, v in asdict(plan).items() if k != "classes"}
    params["classes"] = ",".join(plan.classes)
    params["dataset_digest"] = selection.table.digest
    params["selection_digest"] = selection.digest
    params["gate_holdout_excluded"] = len(selection.spec.exclude)
    if selection.spec.train_only:  # a fine-tune: where the base's training patches went
        base = set(selection.spec.train_only)
        params["base_model_train_patches"] = len(base)
        held = {s: sum(place_key(p.class_name, p.href) in base for p in selection.of(s))
                for s in ("train", "val", "test")}  # fmt: skip
        params["base_model_patches_in_train"] = held["train"]
        params["base_model_patches_held_out"] = held["val"] + held["test"]  # 0: never scored on
    if plan.dataset is not None:  # chips keep the splits they were cut with
        params["split"] = "recorded"
        params["dataset"] = str(Path(plan.dataset).resolve())
    for split, count in selection.counts().items():
        params[f"n_{split}"] = count
    return params


#: a request id that is its own run folder's name
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
#: how the folder name of any other id ends (a plain id ending so gets one too)
DIGESTED = re.compile(r"-[0-9a-f]{16}$")


def _safe(text: str) -> str:
    """A folder name for ``text`` (a request id, as a sender wrote it): the id itself when it is
    a plain name (letters, digits, ``-_.``, not starting with a dot, at most 64 characters),
    else its letters, digits and ``-_.`` and a digest of the whole, so two ids never share a
    folder: not even an id written as another one's folder name, since a plain id that ends
    like a digest gets one of its own too; never ``.`` or ``..`` (the id ``..`` made the run
    folder the cache itself, which its clean-up then emptied)."""
    if PLAIN_NAME.fullmatch(text) and not DIGESTED.search(text):
        return text
    shown = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".")[:64]
    return f"{shown or 'request'}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
