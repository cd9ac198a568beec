"""The gate's map check: a model's maps scored on a reference set of labelled real scenes.

One code path with ``eostream maps evaluate``: the scenes are classified and scored by
:func:`eostream.inference.evaluation.evaluate` (inference's own pipeline on a scratch store, the
labels rasterised on the map's grid), here with the gate's stride and uncertain threshold. The
figures are pooled over the completely labelled items (partial ones only give recall):

* ``mean_iou``: the mean IoU of the reference classes (the mapped ones, not the background):
  water IoU for the Boadella set;
* ``overall_accuracy``: correct pixels / scored pixels, background included.

Blocking (onnxruntime, rasterio; it runs its own event loop): called from the bridge's worker
thread. The reference set is read once per :class:`ReferenceSet`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from eostream.inference import accuracy, evaluation
from eostream.inference.errors import InferenceError
from eostream.inference.settings import scratch_settings
from eostream.registry_bridge.policy import MapScores
from eostream.shared import tags

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapReport:
    """A model's map scores and the figures logged to its gate run."""

    scores: MapScores
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ReferenceSet:
    """The configured reference set and the inference settings it is scored with."""

    href: str
    stride: int
    uncertain_below: float
    threads: int = 1

    def key(self) -> str:
        """Digest of the reference set (its label items and label files) and of the scoring
        settings: map figures recorded under one key are comparable with each other."""
        h = hashlib.sha256(
            json.dumps(
                {"stride": self.stride, "uncertain_below": self.uncertain_below}, sort_keys=True
            ).encode()
        )
        try:
            ref = evaluation.load_reference(self.href)
        except InferenceError:
            h.update(self.href.encode())  # scored as an error; the key just has to be stable
            return h.hexdigest()
        h.update(json.dumps(ref.mapping, sort_keys=True).encode())
        for item in ref.items:
            h.update(json.dumps(item.to_dict(include_self_link=False), sort_keys=True).encode())
            try:
                shapes = evaluation.read_labels(item)
            except InferenceError:
                continue
            h.update(json.dumps(shapes, sort_keys=True).encode())
        return h.hexdigest()

    def conditions(self, scores: MapScores) -> dict[str, object]:
        """What figures scored on this set hold for (:data:`tags.GATE_MAP_CONDITIONS`): its
        labels collection and scored items, the map settings, and the file scored (the gate
        scores a version's fp32 file; its int8 file's difference is ``eostream.int8.map_delta``).
        Pure: what the scoring read (the set is not read again)."""
        return {
            "reference": scores.reference,
            "items": list(scores.scored),
            "stride": self.stride,
            "uncertain_below": self.uncertain_below,
            "file": "fp32",
        }

    def score(self, onnx_bytes: bytes) -> MapReport:
        """Classify the reference scenes with the model and score its maps. Never raises for a
        bad reference set or model: the errors come back in ``scores.errors``."""
        with tempfile.TemporaryDirectory(prefix="eostream-bridge-maps-") as tmp:
            model = Path(tmp) / "model.onnx"
            model.write_bytes(onnx_bytes)
            settings = scratch_settings(
                Path(tmp),
                stride=self.stride,
                uncertain_below=self.uncertain_below,
                intra_op_threads=self.threads,
            )
            try:
                report = evaluation.evaluate(self.href, str(model), settings=settings)
            except Exception as exc:  # a set or model that cannot be used at all
                text = str(exc) if isinstance(exc, InferenceError) else repr(exc)
                log.warning("map check on %s failed: %s", self.href, text)
                return MapReport(MapScores(None, None, 0, (text,)))
        return summarise(report)


def summarise(report: evaluation.Report) -> MapReport:
    """The gate's figures from an evaluation report (pooled complete items)."""
    errors = tuple(report.errors)
    complete = [r for r in report.items if not r.partial]
    ids, collection = tuple(r.item_id for r in complete), report.reference.collection_id
    pooled = report.pooled()
    if pooled is None or not pooled.sum():
        return MapReport(MapScores(None, None, len(complete), errors, None, ids, collection))
    scored = accuracy.scores(pooled, report.classes)
    ious = {name: scored[name].iou for name in report.reference.mapping}
    defined = [v for v in ious.values() if v is not None]
    mean_iou = sum(defined) / len(defined) if defined else None
    overall = accuracy.overall_accuracy(pooled)
    metrics = {"map_items": float(len(complete)), "map_errors": float(len(errors))}
    if mean_iou is not None:
        metrics["map_mean_iou"] = mean_iou
    if overall is not None:
        metrics["map_overall_accuracy"] = overall
    for name, value in ious.items():
        if value is not None:
            metrics[f"map_iou_{name}"] = value
    baseline = report.pooled("ndwi")
    ndwi = None
    if baseline is not None and evaluation.WATER in report.classes:
        ndwi = accuracy.scores(baseline, report.classes)[evaluation.WATER].iou
        if ndwi is not None:
            metrics["map_ndwi_iou_water"] = ndwi  # the NDWI > 0 baseline on the same pixels
        tuned = report.pooled("ndwi_tuned")  # its threshold tuned on the other dates (2 or more)
        tuned_iou = (
            accuracy.scores(tuned, report.classes)[evaluation.WATER].iou
            if tuned is not None
            else None
        )
        if tuned_iou is not None:
            metrics["map_ndwi_tuned_iou_water"] = tuned_iou
    scores = MapScores(mean_iou, overall, len(complete), errors, ndwi, ids, collection)
    return MapReport(scores, metrics)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def from_tags(values: dict[str, str], key: str) -> MapScores | None:
    """Map figures recorded on a version for ``key``; None when it has none for that key."""
    if values.get(tags.GATE_MAP_KEY) != key:
        return None
    scores = MapScores(
        _number(values.get(tags.GATE_MAP_MEAN_IOU)),
        _number(values.get(tags.GATE_MAP_OVERALL_ACCURACY)),
        ndwi_iou=_number(values.get(tags.GATE_MAP_NDWI_IOU)),
    )
    return scores if scores.mean_iou is not None or scores.overall_accuracy is not None else None


def as_tags(scores: MapScores, key: str, reference: ReferenceSet) -> dict[str, str]:
    """The figures as version tags (empty string: not scored), with the NDWI baseline on the
    same pixels and what they were measured on and with (:meth:`ReferenceSet.conditions`)."""

    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    return {
        tags.GATE_MAP_KEY: key,
        tags.GATE_MAP_MEAN_IOU: fmt(scores.mean_iou),
        tags.GATE_MAP_OVERALL_ACCURACY: fmt(scores.overall_accuracy),
        tags.GATE_MAP_NDWI_IOU: fmt(scores.ndwi_iou),
        tags.GATE_MAP_CONDITIONS: json.dumps(reference.conditions(scores), sort_keys=True),
    }
