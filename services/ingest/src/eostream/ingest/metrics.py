"""Prometheus metrics of the ingest service. Labels: source (configured names, few) and outcome."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from eostream.shared.metrics import at_zero

ITEM_OUTCOMES = ("seen", "published", "rejected", "filtered", "duplicate")
ITEMS = Counter(
    "eostream_ingest_items_total",
    "STAC items by outcome: seen (returned by the source), published, rejected (dead-lettered), "
    "filtered, duplicate (already announced)",
    ["source", "outcome"],
)
POLL_DURATION = Histogram(
    "eostream_ingest_poll_duration_seconds",
    "Time of one poll of one source, paging and publishing included",
    ["source"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
WATERMARK_LAG = Gauge(
    "eostream_ingest_watermark_lag_seconds",
    "Now minus the source's watermark (the newest item datetime announced)",
    ["source"],
)
SOURCE_ERRORS = Counter(
    "eostream_ingest_source_errors_total",
    "Failed polls of a source, by error type",
    ["source", "error_type"],
)
SOURCE_UP = Gauge(
    "eostream_ingest_source_up", "1 when the last poll of the source succeeded", ["source"]
)
LEADER = Gauge(
    "eostream_ingest_leader",
    "1 when this replica holds the state's leader lock and polls; 0 when it stands by",
)
NOTIFICATIONS = Counter(
    "eostream_ingest_notifications_total",
    "Items that arrived by push (signed CloudEvents) or by PostgreSQL NOTIFY, by outcome: "
    "announced, duplicate, filtered, rejected, not_found, not_watched, refused (signature, "
    "event), failed (source unreadable)",
    ["via", "outcome"],
)
NOTIFICATION_OUTCOMES = (
    *("announced", "duplicate", "filtered", "rejected"),
    *("not_found", "not_watched", "refused", "failed"),
)
# the first failure must be a rise from 0 (see at_zero)
at_zero(NOTIFICATIONS, ("push", "notify"), NOTIFICATION_OUTCOMES)
