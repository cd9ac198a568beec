"""Where a torch model's weights start: from scratch (the request's seed), from a registered
version (``base_model``: the same network, its input widened to more bands, or moved to a chip
dataset's bands with a new head or as a segmenter's encoder) or from a pretrained checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from eostream.shared.modelcard import ModelCard
from eostream.trainer.bands import band_set_bands
from eostream.trainer.datasets import PatchTensors, band_statistics
from eostream.trainer.errors import BadTrainingRequestError
from eostream.trainer.models import (
    ENCODER_SOURCES,
    INDEX_ARCHITECTURES,
    EuroSATNet,
    SpectralIndices,
    build_model,
    new_head,
    transfer_encoder,
    widen_input,
)
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.pretrained import (
    PretrainedSource,
    freeze_loaded,
    load_pretrained,
    resolve_pretrained,
)
from eostream.trainer.tracking import Tracker

log = logging.getLogger(__name__)


def prepare_model(plan: TrainingPlan, tracker: Tracker, train: PatchTensors) -> EuroSATNet:
    """The model ``plan`` trains, before any checkpoint is loaded: its input normalised by the
    training patches (``train``) as the network sees them."""
    bands = band_set_bands(plan.band_set)
    seen = train.x
    if plan.architecture in INDEX_ARCHITECTURES:  # normalised as the network sees them
        with torch.no_grad():
            seen = SpectralIndices(bands)(train.x)
    mean, std = band_statistics(seen)
    if plan.base_model is None:
        # the initial weights follow the request's seed, not whatever drew from torch's global
        # generator before in this process: the same request trains the same model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.seed)
            return build_model(plan.architecture, bands, mean, std, num_classes=len(plan.classes))
    base, base_card = tracker.load_base(plan.base_model)
    if plan.dataset is not None:
        return start_from_base(plan, base, base_card, mean, std)
    if base.architecture != plan.architecture:
        raise BadTrainingRequestError(
            f"base_model {plan.base_model} is a {base.architecture}, the request asks for "
            f"{plan.architecture}"
        )
    if base.bands == bands:
        return base
    if not set(base.bands) <= set(bands):
        raise BadTrainingRequestError(
            f"base_model {plan.base_model} takes bands {base.bands}, which cannot be widened to "
            f"{plan.band_set} {bands}"
        )
    # the base model's units = scale * reflectance + offset; the new model takes reflectance
    unit_map = {s.band: (s.scale, s.offset) for s in base_card.scaling}
    log.info("widening %s from %s to %s", plan.base_model, base.bands, bands)
    return widen_input(base, bands, mean, std, unit_map=unit_map, seed=plan.seed)


def start_from_base(
    plan: TrainingPlan,
    base: EuroSATNet,
    base_card: ModelCard,
    mean: Sequence[float],
    std: Sequence[float],
) -> EuroSATNet:
    """A chip dataset's model that starts from a registered version (``plan.base_model``):
    the base's input moved to the chips' bands and units (bands it has and the chips lack
    dropped, bands the chips add starting small), then either the same architecture with a
    new head when the class list differs, or a ``seg_small_cnn`` whose encoder is a
    ``small_cnn``/``centre_cnn`` classifier's (a EuroSAT classifier's filters for a
    segmentation model)."""
    bands = band_set_bands(plan.band_set)
    encoder_only = plan.architecture == "seg_small_cnn" and base.architecture in ENCODER_SOURCES
    if base.architecture != plan.architecture and not encoder_only:
        encoder = base.architecture in ENCODER_SOURCES
        also = " (or seg_small_cnn, with its encoder)" if encoder else ""
        raise BadTrainingRequestError(
            f"base_model {plan.base_model} is a {base.architecture}: fine-tune it as a "
            f"{base.architecture}{also}, not a {plan.architecture}"
        )
    # the base model's units = scale * reflectance + offset; the chips hold reflectance
    unit_map = {s.band: (s.scale, s.offset) for s in base_card.scaling}
    try:
        model = widen_input(
            base, bands, mean, std, unit_map=unit_map, seed=plan.seed, drop_missing=True
        )
    except ValueError as exc:
        raise BadTrainingRequestError(f"base_model {plan.base_model}: {exc}") from exc
    log.info(
        "starting from %s (%s, %s) on the chips' %s",
        plan.base_model,
        base.architecture,
        ", ".join(base_card.classes),
        plan.band_set,
    )
    if encoder_only:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.seed)
            segmenter = build_model(
                plan.architecture, bands, mean, std, num_classes=len(plan.classes)
            )
        return transfer_encoder(model, segmenter)
    if tuple(base_card.classes) != tuple(plan.classes):
        new_head(model, len(plan.classes), seed=plan.seed)
    return model


def pretrained_start(
    plan: TrainingPlan, model: EuroSATNet, source: PretrainedSource | None = None
) -> PretrainedSource | None:
    """Load the plan's pretrained checkpoint (``source``, if resolved already) into ``model``
    and freeze it if asked: the checkpoint, or None without one."""
    if plan.pretrained is None:
        return None
    source = source or resolve_pretrained(plan.pretrained)
    load_pretrained(model, source)
    if plan.freeze_backbone:
        freeze_loaded(model)
    return source
