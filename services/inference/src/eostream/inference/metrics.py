"""The inference service's Prometheus metrics (units in names, low-cardinality labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PIXELS_PER_SECOND = Gauge(
    "eostream_inference_pixels_per_second", "Pixels classified per second in the last scene"
)
PIXELS = Counter("eostream_inference_pixels_total", "Pixels classified")
SCENES = Counter(
    "eostream_inference_scenes_total",
    "Scenes handled, by outcome (classified, skipped, refused, failed)",
    ["outcome"],
)
SCENE_DURATION = Histogram(
    "eostream_inference_scene_duration_seconds",
    "Time to classify one scene, read to write",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
)
MODEL_INFO = Gauge(
    "eostream_inference_model_info",
    "The deployed model (value 1 for the live one)",
    ["name", "version", "provider"],
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


def set_model_info(name: str, version: str, provider: str) -> None:
    MODEL_INFO.clear()
    MODEL_INFO.labels(name, version, provider).set(1)
