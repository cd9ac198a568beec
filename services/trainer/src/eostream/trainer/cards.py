"""A training request's model card: what its model takes (bands, their units), what it answers
(classes, patch or per-pixel) and where it came from (data digest, library, starting weights).

The card travels with the version (its ``tags.MODEL_CARD`` tag) and inside the ONNX file;
inference reads every input decision from it.
"""

from __future__ import annotations

import json
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from eostream.shared.modelcard import (
    MAP_BLOCK,
    MAP_OUTPUT_NAME,
    PATCH_SIZE,
    BandScaling,
    ModelCard,
)
from eostream.trainer import chipset
from eostream.trainer.bands import band_set_bands
from eostream.trainer.catalog import cached_copy, keep_copy, list_sources, sources_digest
from eostream.trainer.errors import BadTrainingRequestError
from eostream.trainer.models import MAP_ARCHITECTURES, SEGMENTATION_ARCHITECTURES
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.pretrained import PretrainedSource
from eostream.trainer.scaling import fit_rgb_scaling, identity_scaling
from eostream.trainer.settings import TrainerSettings

#: Each family's library, as the card names it, and the distribution its version is read from.
LIBRARIES = {
    "torch": ("pytorch", "torch"),
    "keras": ("keras", "keras"),
    "sklearn": ("scikit-learn", "scikit-learn"),
}


def map_fields(architecture: str, patch_size: int) -> dict[str, Any]:
    """The card's ``map_output`` and ``map_block`` for a network with a per-pixel map output
    (:data:`MAP_ARCHITECTURES`) whose windows hold the block and its 1 px margin, centred (an
    even margin: chips of 35 px have none); none else."""
    if (
        architecture not in MAP_ARCHITECTURES
        or patch_size < MAP_BLOCK + 2
        or (patch_size - MAP_BLOCK) % 2
    ):
        return {}
    return {"map_output": MAP_OUTPUT_NAME, "map_block": MAP_BLOCK}


def eurosat_card(
    plan: TrainingPlan,
    settings: TrainerSettings,
    digest: str,
    pretrained: PretrainedSource | None = None,
) -> ModelCard:
    """The card of a model trained on EuroSAT patches (``digest``: its selection's). Where it
    started from is its card's ``pretrained_source``: the checked pretrained weights, or the
    registered version it fine-tunes (``base_model``)."""
    library, distribution = LIBRARIES[plan.family]
    return ModelCard(
        name=plan.model_name,
        band_set=plan.band_set,
        bands=band_set_bands(plan.band_set),
        scaling=card_scaling(plan.band_set, settings),
        architecture=plan.architecture,
        training_data_digest=digest,
        description=f"EuroSAT {plan.band_set} {plan.architecture}, request {plan.request_id}",
        library=library,
        library_version=dist_version(distribution),
        pretrained_source=pretrained.description if pretrained else plan.base_model,
        **map_fields(plan.architecture, PATCH_SIZE),
    )


def card_scaling(band_set: str, settings: TrainerSettings) -> tuple[BandScaling, ...]:
    """The card's scaling; the RGB fit is cached under the cache folder, keyed by the MS data
    (and copied from this machine's copy: :func:`eostream.trainer.catalog.cached_copy`)."""
    if band_set != "rgb":
        return identity_scaling(band_set)
    digest = sources_digest("ms13", list_sources(settings.data_dir, "ms13"))[:16]
    path = settings.cache_dir / "scaling" / f"rgb-scaling-{digest}.json"
    if cached_copy(path, lambda p: _read_scaling(p) is not None):
        return _read_scaling(path) or ()
    fit_result = fit_rgb_scaling(settings.data_dir)  # ~6 s of CPU
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([s.model_dump() for s in fit_result.scaling]))
    keep_copy(path)
    return fit_result.scaling


def _read_scaling(path: Path) -> tuple[BandScaling, ...] | None:
    """The scaling saved in ``path``; None when it is not one (a damaged file is fitted again)."""
    try:
        found = tuple(BandScaling.model_validate(s) for s in json.loads(path.read_text()))
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None
    return found or None


def chip_card(plan: TrainingPlan, dataset: chipset.ChipDataset, digest: str) -> ModelCard:
    """The card of a model trained on a chip dataset: its classes, band set, chip size and
    processing level; input in reflectance (scale 1, offset 0: what the chips hold). A
    segmentation architecture's card says so (``task``): one class per pixel of the chip."""
    segmentation = plan.architecture in SEGMENTATION_ARCHITECTURES
    library, distribution = LIBRARIES[plan.family]
    if segmentation and dataset.size % 4:
        raise BadTrainingRequestError(
            f"{plan.architecture} halves its chips twice: their side must be a multiple of 4, "
            f"not {dataset.size} (eostream labels chips --size 32)"
        )
    return ModelCard(
        task="segmentation" if segmentation else "patch",
        name=plan.model_name,
        band_set=dataset.band_set,
        bands=band_set_bands(dataset.band_set),
        scaling=identity_scaling(dataset.band_set),
        classes=dataset.classes,
        patch_size=dataset.size,
        processing_level=dataset.processing_level,
        architecture=plan.architecture,
        training_data_digest=digest,
        description=f"{', '.join(dataset.classes)} {plan.architecture} "
        f"{'(per-pixel masks) ' if segmentation else ''}on chips "
        f"{dataset.path.parent.name}, request {plan.request_id}",
        library=library,
        library_version=dist_version(distribution),
        dataset=str(dataset.path.resolve()),
        dataset_test_split="test",
        pretrained_source=plan.base_model,
        **({} if segmentation else map_fields(plan.architecture, dataset.size)),
    )
