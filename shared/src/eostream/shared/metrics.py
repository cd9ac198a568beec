"""Prometheus metrics shared by every service.

Names carry their unit; labels are low-cardinality (service, topic, outcome, ...), never a scene
id or a path. Services add their own metrics in their own ``metrics.py`` with the same habits.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import platform
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, Info

PUBLISHED = Counter(
    "eostream_events_published_total", "Events published on the bus", ["service", "topic"]
)
PUBLISH_RETRIES = Counter(
    "eostream_publish_retries_total",
    "Publishes tried again because the broker was unreachable or electing a leader",
    ["service", "topic"],
)
PRODUCER_REPLACED = Counter(
    "eostream_producer_replaced_total",
    "Kafka producers replaced after losing their idempotence state (e.g. a broker restart)",
    ["service"],
)
CONSUMED_OUTCOMES = ("ok", "retried", "dead_letter", "error")
CONSUMED = Counter(
    "eostream_events_consumed_total",
    f"Records consumed, by outcome ({', '.join(CONSUMED_OUTCOMES)})",
    ["service", "topic", "outcome"],
)
DEAD_LETTERS = Counter(
    "eostream_dead_letters_total",
    "Records sent to the dead-letter topic",
    ["service", "topic", "error_type"],
)
HANDLER_DURATION = Histogram(
    "eostream_handler_duration_seconds",
    "Time to handle one record, retries included",
    ["service", "topic"],
    # to 4 h: a training's handler runs for hours, and a quantile cannot pass the last bucket
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600, 7200, 14400),
)
EVENT_AGE = Histogram(
    "eostream_event_age_seconds",
    "Time from an event's creation to the end of its handling",
    ["service", "topic"],
    # to a day: a backlog past an hour read as exactly 3600 s at p95
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 7200, 21600, 86400),
)
CONSUMER_LAG = Gauge(
    "eostream_consumer_lag_messages",
    "Records behind the end of the partition, per consumer group, topic and partition",
    ["service", "topic", "group", "partition"],
)
CONSUMER_UP = Gauge(
    "eostream_consumer_up",
    "1 while the group's consumer runs; 0 while it restarts after a failure, or has stopped",
    ["service", "group"],
)
CONSUMER_CONNECTED = Gauge(
    "eostream_consumer_connected",
    "1 while the group's Kafka consumer knows its group coordinator (the broker answers for the "
    "group); 0 while it does not: the broker is out of reach, and lag and progress are stale",
    ["service", "group"],
)
CONSUMER_STALLED = Gauge(
    "eostream_consumer_stalled",
    "1 while the group's consumer has records waiting and made no progress for the stall time",
    ["service", "group"],
)
CONSUMER_RESTARTS = Counter(
    "eostream_consumer_restarts_total",
    "Times a consumer ended while its service was not stopping and was started again",
    ["service", "group"],
)
CONSUMER_PROGRESS = Gauge(
    "eostream_consumer_last_progress_timestamp_seconds",
    "Unix time of the consumer's last progress (a record done, a heartbeat, or nothing waiting)",
    ["service", "group"],
)
SERVICE_UP = Gauge(
    "eostream_service_up", "1 while the service serves its operations endpoints", ["service"]
)
BUILD = Info("eostream_build", "Version of the eostream code and the Python that runs it")
BUILD.info(
    {"version": importlib.metadata.version("eostream-shared"), "python": platform.python_version()}
)


def at_zero(metric: Counter | Histogram, *values: Iterable[str]) -> None:
    """Export every combination of label ``values`` of ``metric`` at 0, before its first event.

    A counter series that first appears at 1 shows Prometheus no rise: ``increase()`` over its
    one sample is nothing, so an alert on "any failure in the last N minutes" would miss the
    first failure (a series needs a 0 before it). Outcomes are known in advance; open labels
    such as an exception's type are not, and their alerts also take a new series' own value.
    """
    for combination in itertools.product(*values):
        metric.labels(*combination)


def announce(service: str) -> None:
    """``eostream_service_up{service} 1``: called by the operations router, once per service (the
    embedded process holds one series per service beside its one ``eostream_build_info``)."""
    SERVICE_UP.labels(service).set(1)
