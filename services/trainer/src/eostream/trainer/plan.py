"""From an event to a training plan: every check of a request that needs no data or server.

Pure functions; a bad request raises :class:`BadTrainingRequestError` whose message says what to
change, and the bus dead-letters the event with that reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from eostream.shared.events import DatasetUpdated, MixMode, TrainingRequested
from eostream.shared.modelcard import BAND_SETS, EUROSAT_CLASSES
from eostream.trainer.errors import BadTrainingRequestError
from eostream.trainer.models import ARCHITECTURES, SEGMENTATION_ARCHITECTURES
from eostream.trainer.pixel import PIXEL_ARCHITECTURES
from eostream.trainer.pretrained import PRETRAINED_ARCHITECTURES
from eostream.trainer.selection import SplitMode

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_MODEL_URI = re.compile(r"^models:/[^/@]+(/\d+|@[\w-]+)$")
MIN_SAMPLES_PER_CLASS = 10
#: The libraries a model can be trained with (``TrainingRequested.family``); torch is the default
#: and the only one with every architecture, fine-tuning and the input augmentations.
FAMILIES = ("torch", "keras", "sklearn")
#: What the keras family builds (:mod:`eostream.trainer.keras_family`).
KERAS_ARCHITECTURES = ("small_cnn",)


@dataclass(frozen=True)
class TrainingPlan:
    request_id: str
    model_name: str
    band_set: str
    architecture: str = "small_cnn"
    family: str = "torch"
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    samples_per_class: int | None = None
    split: SplitMode = "random"
    seed: int = 42
    base_model: str | None = None
    classes: tuple[str, ...] = EUROSAT_CLASSES
    patience: int = 5
    pretrained: str | None = None
    freeze_backbone: bool = False
    backbone_lr_scale: float = 1.0
    #: the recipe's extras (:class:`eostream.trainer.task.TrainConfig`): free at inference
    label_smoothing: float = 0.0
    mix: MixMode = "none"
    ema_decay: float = 0.0
    requested_by: str = "unknown"
    reason: str = ""
    #: a chip dataset (``eostream labels chips``; folder or its chips.parquet): its classes,
    #: band set, chip size and recorded split replace EuroSAT's
    dataset: str | None = None


def plan_training(event: TrainingRequested) -> TrainingPlan:
    problems: list[str] = []
    if event.band_set not in BAND_SETS:
        problems.append(f"band_set {event.band_set!r} is unknown; use one of {sorted(BAND_SETS)}")
    # a pixel architecture is the scikit-learn family's (a request may name only the architecture)
    family = "sklearn" if event.architecture in PIXEL_ARCHITECTURES else event.family
    known = [*ARCHITECTURES, *PIXEL_ARCHITECTURES]
    if event.architecture not in known:
        problems.append(f"architecture {event.architecture!r} is unknown; use one of {known}")
    if family not in FAMILIES:
        problems.append(f"family {family!r} is unknown; use one of {list(FAMILIES)}")
    elif family == "keras":
        if event.architecture not in KERAS_ARCHITECTURES:
            problems.append(
                f"the keras family builds {list(KERAS_ARCHITECTURES)}, not {event.architecture!r}"
            )
        if event.base_model is not None:
            problems.append("the keras family trains from scratch: base_model must be empty")
    elif family == "sklearn":
        if event.architecture not in PIXEL_ARCHITECTURES:
            problems.append(
                f"the sklearn family builds {list(PIXEL_ARCHITECTURES)}, not {event.architecture!r}"
            )
        if event.band_set == "rgb":
            problems.append("a pixel model (scikit-learn) takes band_set ms13 (or l2a chips)")
        if event.base_model is not None:
            problems.append("a pixel model (scikit-learn) cannot be fine-tuned from base_model")
    if event.architecture in SEGMENTATION_ARCHITECTURES and event.dataset is None:
        problems.append(
            f"{event.architecture} is a segmentation model: it learns from per-pixel masks, so "
            "name a chip dataset (eostream labels chips)"
        )
    if event.band_set == "l2a" and event.dataset is None:
        problems.append("band_set l2a is for chips cut from L2A scenes (a dataset); EuroSAT is "
                        "rgb or ms13")  # fmt: skip
    if not _NAME.match(event.model_name):
        problems.append(f"model_name {event.model_name!r} must be letters, digits, '.', '_', '-'")
    if event.batch_size < 2:
        problems.append("batch_size must be at least 2 (batch normalisation needs two samples)")
    if event.learning_rate > 1.0:
        problems.append(f"learning_rate {event.learning_rate} is too high (at most 1.0)")
    if event.samples_per_class is not None and event.samples_per_class < MIN_SAMPLES_PER_CLASS:
        problems.append(
            f"samples_per_class {event.samples_per_class} is too few to split into "
            f"train/val/test; use at least {MIN_SAMPLES_PER_CLASS}"
        )
    if event.base_model is not None and not _MODEL_URI.match(event.base_model):
        problems.append(
            f"base_model {event.base_model!r} must be models:/NAME/VERSION or models:/NAME@alias"
        )
    problems.extend(_pretrained_problems(event, family))
    problems.extend(_recipe_problems(event, family))
    if problems:
        raise BadTrainingRequestError("bad training request: " + "; ".join(problems))
    return TrainingPlan(
        request_id=event.request_id,
        model_name=event.model_name,
        band_set=event.band_set,
        architecture=event.architecture,
        family=family,
        epochs=event.epochs,
        batch_size=event.batch_size,
        learning_rate=event.learning_rate,
        samples_per_class=event.samples_per_class,
        split=event.split,
        seed=event.seed,
        base_model=event.base_model,
        pretrained=event.pretrained,
        freeze_backbone=event.freeze_backbone,
        backbone_lr_scale=event.backbone_lr_scale,
        label_smoothing=event.label_smoothing,
        mix=event.mix,
        ema_decay=event.ema_decay,
        requested_by=event.requested_by,
        reason=event.reason,
    )


def _recipe_problems(event: TrainingRequested, family: str) -> list[str]:
    """Label smoothing, mixing and the EMA are the torch loop's; mixing needs patch labels."""
    extras = event.label_smoothing > 0 or event.mix != "none" or event.ema_decay > 0
    if extras and family != "torch":
        return ["label_smoothing, mix and ema_decay are for the torch family"]
    if event.mix != "none" and event.architecture in SEGMENTATION_ARCHITECTURES:
        return [f"mix {event.mix!r} mixes patch labels: {event.architecture} trains on masks"]
    return []


def _pretrained_problems(event: TrainingRequested, family: str) -> list[str]:
    """A pretrained start: a torch resnet18_imagenet, not also fine-tuned from a base model;
    freezing and the backbone's learning rate only with one (the file is checked when loaded)."""
    if event.pretrained is None:
        if event.freeze_backbone or event.backbone_lr_scale != 1.0:
            return ["freeze_backbone and backbone_lr_scale need a pretrained checkpoint"]
        return []
    problems = []
    if family != "torch" or event.architecture not in PRETRAINED_ARCHITECTURES:
        problems.append(
            f"a pretrained start needs the torch family and {list(PRETRAINED_ARCHITECTURES)}"
        )
    if event.base_model is not None:
        problems.append("pretrained and base_model exclude each other")
    if event.freeze_backbone and event.backbone_lr_scale != 1.0:
        problems.append("a frozen backbone has no learning rate: drop backbone_lr_scale")
    return problems


def plan_for_dataset(
    event: DatasetUpdated,
    model_name: str,
    epochs: int,
    architecture: str = "small_cnn",
    dataset: str | None = None,
    base_model: str | None = None,
) -> TrainingPlan:
    """A data change retrains with defaults; the request id is derived from the data's digest,
    so a redelivered DatasetUpdated does not train twice."""
    request = TrainingRequested(
        request_id=f"dataset-{event.dataset}-{event.digest[:16]}",
        model_name=model_name,
        band_set=event.band_set,
        architecture=architecture,
        dataset=dataset,
        base_model=base_model,
        epochs=epochs,
        requested_by="dataset.updated",
        reason=f"dataset {event.dataset} changed (digest {event.digest[:16]})",
    )
    return plan_training(request)
