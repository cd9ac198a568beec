"""The inference service's Prometheus metrics (units in names, low-cardinality labels)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from eostream.inference.writer import UNCERTAIN_NAME
from eostream.shared.metrics import at_zero

PIXELS_PER_SECOND = Gauge(
    "eostream_inference_pixels_per_second", "Pixels classified per second in the last scene"
)
PIXELS = Counter("eostream_inference_pixels_total", "Pixels classified")
SCENE_OUTCOMES = ("classified", "skipped", "refused", "failed")
SCENES = Counter(
    "eostream_inference_scenes_total",
    f"Scenes handled, by outcome ({', '.join(SCENE_OUTCOMES)})",
    ["outcome"],
)
SCENE_DURATION = Histogram(
    "eostream_inference_scene_duration_seconds",
    "Time to classify one scene, read to write",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
)
MODEL_INFO = Gauge(
    "eostream_inference_model_info",
    "The deployed model (value 1 for the live one) and the alias it was promoted under ('' for "
    "a model named by its file)",
    ["name", "version", "provider", "alias"],
)
MODEL_SWAPS = Counter(
    "eostream_inference_model_swaps_total", "Model hot swaps, by outcome (ok, failed)", ["outcome"]
)
REQUEST_DURATION = Histogram(
    "eostream_inference_request_duration_seconds",
    "HTTP request duration by route template and method",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)

NOTIFICATIONS = Counter(
    "eostream_inference_notifications_total",
    "Subscription notifications by target (webhook, kafka; 'any' for a result that could not "
    "be matched) and outcome: sent, failed (one failed attempt) or dead_lettered",
    ["target", "outcome"],
)
NOTIFICATIONS_PENDING = Gauge(
    "eostream_inference_notifications_pending",
    "Subscription notifications waiting for delivery (as last counted by the worker)",
)
JOB_OUTCOMES = ("successful", "failed", "error", "dismissed", "lost")
JOBS = Counter(
    "eostream_inference_jobs_total",
    "OGC API - Processes jobs ended, by outcome: successful, failed (the request's or the "
    "scene's fault: the job's message says), error (an unexpected error: the log has the "
    "traceback), dismissed (by the client), lost (their runner stopped: marked failed by a sweep)",
    ["outcome"],
)
JOBS_PENDING = Gauge(
    "eostream_inference_jobs_pending",
    "Asynchronous jobs this replica holds, waiting for a runner or running",
)
# the first failure of each kind must be a rise from 0 (see at_zero)
at_zero(JOBS, JOB_OUTCOMES)
at_zero(SCENES, SCENE_OUTCOMES)
at_zero(MODEL_SWAPS, ("ok", "failed"))
at_zero(NOTIFICATIONS, ("webhook", "kafka"), ("sent", "failed", "dead_lettered"))
at_zero(NOTIFICATIONS, ("any",), ("failed",))  # a result no subscription could be matched to


def set_model_info(name: str, version: str, provider: str, alias: str | None = None) -> None:
    MODEL_INFO.clear()
    MODEL_INFO.labels(name, version, provider, alias or "").set(1)


# -- what the maps say, per model version ------------------------------------------------------
# "Same kind of scenes": the scene's processing level (L1C, L2A), anything else "other", so the
# labels stay bounded: model name x version x scene kind (x class for the pixel counter).
SCENE_KINDS = frozenset({"L1C", "L2A"})

CLASS_PIXELS = Counter(
    "eostream_inference_class_pixels_total",
    "Pixels labelled with each class (and 'uncertain') by model version and scene kind",
    ["model", "version", "scene_kind", "class"],
)
SCENE_MEAN_CONFIDENCE = Histogram(
    "eostream_inference_scene_mean_confidence",
    "Mean top-class probability over a scene's valid pixels, one observation per scene",
    ["model", "version", "scene_kind"],
    buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0),
)
SCENE_UNCERTAIN_SHARE = Histogram(
    "eostream_inference_scene_uncertain_share",
    "Share of a scene's valid pixels labelled uncertain (254), one observation per scene",
    ["model", "version", "scene_kind"],
    buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
)


def scene_kind(level: str | None) -> str:
    """The bounded ``scene_kind`` label: the scene's processing level, else ``other``."""
    return level if level in SCENE_KINDS else "other"


def record_map(
    model: str,
    version: str,
    level: str | None,
    stats: Mapping[str, Any],
    *,
    mean_confidence: float | None,
    uncertain_share: float | None,
) -> None:
    """Count one finished scene's map, once: the pixels of each class and of ``uncertain`` from
    its ``statistics``, and (when it had valid pixels) its mean confidence and uncertain share,
    the values of its result item's ``eostream:mean_confidence`` / ``eostream:uncertain_share``."""
    kind = scene_kind(level)
    for name, entry in stats["classes"].items():
        CLASS_PIXELS.labels(model, version, kind, name).inc(entry["pixels"])
    uncertain = stats["uncertain"]
    CLASS_PIXELS.labels(model, version, kind, UNCERTAIN_NAME).inc(uncertain["pixels"])
    if not stats["valid_pixels"]:
        return  # an all-cloud scene says nothing about the model
    share = uncertain["share"] if uncertain_share is None else uncertain_share
    SCENE_UNCERTAIN_SHARE.labels(model, version, kind).observe(share)
    if mean_confidence is not None:
        SCENE_MEAN_CONFIDENCE.labels(model, version, kind).observe(mean_confidence)
