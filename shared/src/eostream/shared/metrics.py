"""Prometheus metrics shared by every service.

Names carry their unit; labels are low-cardinality (service, topic, outcome, ...), never a scene
id or a path. Services add their own metrics in their own ``metrics.py`` with the same habits.
"""

from __future__ import annotations

import importlib.metadata
import platform

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
CONSUMED = Counter(
    "eostream_events_consumed_total",
    "Records consumed, by outcome (ok, retried, dead_letter, error)",
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
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
)
EVENT_AGE = Histogram(
    "eostream_event_age_seconds",
    "Time from an event's creation to the end of its handling",
    ["service", "topic"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
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


def announce(service: str) -> None:
    """``eostream_service_up{service} 1``: called by the operations router, once per service (the
    embedded process holds one series per service beside its one ``eostream_build_info``)."""
    SERVICE_UP.labels(service).set(1)
