"""registry-bridge Prometheus metrics (names with units, low-cardinality labels)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

VERSIONS_SEEN = Counter(
    "eostream_bridge_versions_seen_total",
    "Model versions looked at, by where the bridge heard of them",
    ["source"],  # webhook, reconcile, event, manual
)
GATE_RESULTS = Counter(
    "eostream_bridge_gate_results_total", "Gate verdicts", ["outcome"]  # passed, failed, refused
)
PROMOTIONS = Counter(
    "eostream_bridge_promotions_total", "Versions made champion", ["kind"]  # auto, manual, alias
)
ROLLBACKS = Counter("eostream_bridge_rollbacks_total", "Rollbacks to the previous champion")
SHIP_DURATION = Histogram(
    "eostream_bridge_ship_duration_seconds",
    "Time to verify, upload and describe one model version",
    ["outcome"],  # shipped, already_shipped, error
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
WEBHOOKS = Counter(
    "eostream_bridge_webhooks_total", "MLflow webhook deliveries", ["outcome"]  # accepted, rejected
)
HANDLING_ERRORS = Counter(
    "eostream_bridge_handling_errors_total",
    "Errors while handling a version (retried by the reconcile loop)",
    ["error_type"],
)
