"""The trainer's Prometheus metrics (names carry units; labels are low-cardinality)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from eostream.shared.metrics import at_zero
from eostream.shared.modelcard import BAND_SETS

TRAININGS = Counter(
    "eostream_trainer_trainings_total",
    "Training requests handled, by outcome",
    ["band_set", "outcome"],
)
# the first failure must be a rise from 0 (see at_zero)
at_zero(TRAININGS, BAND_SETS, ("registered", "reused", "failed"))
TRAINING_DURATION = Histogram(
    "eostream_trainer_training_duration_seconds",
    "Wall time of one training request",
    ["band_set"],
    buckets=(30, 60, 120, 300, 600, 1200, 3600, 7200, 14400),
)
TRAIN_THROUGHPUT = Gauge(
    "eostream_trainer_train_images_per_second",
    "Training throughput of the last run",
    ["band_set"],
)
TEST_ACCURACY = Gauge(
    "eostream_trainer_test_accuracy_ratio",
    "Held-out accuracy of the last registered model",
    ["band_set"],
)
