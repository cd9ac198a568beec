"""registry-bridge Prometheus metrics (names with units, low-cardinality labels).

The model-quality gauges carry ``model_version`` (and the recall gauge ``class``). Their
cardinality is bounded: per watched model the bridge exports the scores of at most two versions
at once, the last version the gate evaluated (role ``challenger``) and the current champion
(role ``champion``), each with one accuracy series and at most ten recall series (the ten
EuroSAT classes). A version's series are removed when it stops being either, so the exported
set never grows with the number of versions; Prometheus keeps their history.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

from eostream.shared.metrics import at_zero

VERSIONS_SEEN = Counter(
    "eostream_bridge_versions_seen_total",
    "Model versions looked at, by where the bridge heard of them",
    ["source"],  # webhook, reconcile, event, manual
)
GATE_RESULTS = Counter(
    "eostream_bridge_gate_results_total",
    "Gate verdicts",
    ["outcome"],  # passed, failed, refused
)
PROMOTIONS = Counter(
    "eostream_bridge_promotions_total",
    "Versions made champion",
    ["kind"],  # auto, manual, override (a forced gate failure), alias
)
ROLLBACKS = Counter("eostream_bridge_rollbacks_total", "Rollbacks to the previous champion")
ALIAS_UNDONE = Counter(
    "eostream_bridge_alias_moves_undone_total",
    "Champion aliases moved in MLflow to a version that may not be champion, moved back",
)
SHIP_DURATION = Histogram(
    "eostream_bridge_ship_duration_seconds",
    "Time to verify, upload and describe one model version",
    ["outcome"],  # shipped, already_shipped, error
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
WEBHOOKS = Counter(
    "eostream_bridge_webhooks_total",
    "MLflow webhook deliveries",
    ["outcome"],  # accepted, rejected
)
HANDLING_ERRORS = Counter(
    "eostream_bridge_handling_errors_total",
    "Errors while handling a version (retried by the reconcile loop)",
    ["error_type"],
)
HOLDOUT_ACCURACY = Gauge(
    "eostream_bridge_holdout_accuracy_ratio",
    "Accuracy on the gate's fixed held-out set, of the version the gate last evaluated "
    "(role challenger) and of the current champion (role champion)",
    ["model", "model_version", "role"],
)
HOLDOUT_RECALL = Gauge(
    "eostream_bridge_holdout_recall_ratio",
    "Per-class recall on the gate's held-out set, of the last evaluated version and the champion",
    ["model", "model_version", "class"],
)
CHAMPION_VERSION = Gauge(
    "eostream_bridge_champion_version",
    "Version number the champion alias points to",
    ["model"],
)
CHAMPION_INFO = Gauge(
    "eostream_bridge_champion_info",
    "The version the champion alias points to, as a label (value 1): what inference's "
    "eostream_inference_model_info should show",
    ["model", "version"],
)

# the first event of each outcome must be a rise from 0 (see at_zero)
at_zero(VERSIONS_SEEN, ("webhook", "reconcile", "event", "manual"))
at_zero(GATE_RESULTS, ("passed", "failed", "refused"))
at_zero(PROMOTIONS, ("auto", "manual", "override", "alias"))
at_zero(SHIP_DURATION, ("shipped", "already_shipped", "error"))
at_zero(WEBHOOKS, ("accepted", "rejected"))

CHALLENGER, CHAMPION = "challenger", "champion"
# (model, role) -> (version, classes with a recall series) currently exported
_shown: dict[tuple[str, str], tuple[str, frozenset[str]]] = {}
# (model, version) of the champion_info series currently exported
_champions: set[tuple[str, str]] = set()


def _drop(model: str, role: str) -> None:
    shown = _shown.pop((model, role), None)
    if shown is None:
        return
    version, classes = shown
    HOLDOUT_ACCURACY.remove(model, version, role)
    still = {v for (m, _), (v, _) in _shown.items() if m == model}
    if version not in still:  # the other role may show the same version
        for cls in classes:
            HOLDOUT_RECALL.remove(model, version, cls)


def show_scores(
    model: str, version: str, role: str, accuracy: float, recall: Mapping[str, float]
) -> None:
    """Export ``version``'s held-out scores in ``role``, replacing the version shown before."""
    _drop(model, role)
    HOLDOUT_ACCURACY.labels(model, version, role).set(accuracy)
    for cls, value in recall.items():
        HOLDOUT_RECALL.labels(model, version, cls).set(value)
    _shown[(model, role)] = (version, frozenset(recall))


def forget_scores(model: str, role: str) -> None:
    """Stop exporting the scores in ``role`` (e.g. a champion whose scores this run never saw)."""
    _drop(model, role)


def show_champion(model: str, version: str | None) -> None:
    """Export the champion's version, as a number and as a label; ``None``: no champion."""
    for shown_model, shown in sorted(_champions):
        if shown_model == model and shown != version:
            CHAMPION_INFO.remove(model, shown)
            _champions.discard((model, shown))
    if version is None:
        CHAMPION_VERSION.remove(model)
        forget_scores(model, CHAMPION)
        return
    CHAMPION_INFO.labels(model, version).set(1)
    _champions.add((model, version))
    try:
        CHAMPION_VERSION.labels(model).set(int(version))
    except ValueError:  # MLflow versions are integers; anything else is not a number to plot
        CHAMPION_VERSION.remove(model)


def shown_version(model: str, role: str) -> str | None:
    """The version whose scores are exported in ``role``, if any."""
    shown = _shown.get((model, role))
    return shown[0] if shown else None
