"""The model-quality gauges: one challenger and one champion per model, never a growing set."""

from __future__ import annotations

from prometheus_client import REGISTRY

from eostream.registry_bridge import metrics
from eostream.shared.modelcard import EUROSAT_CLASSES

MODEL = "metrics-unit-test"


def series(name: str) -> set[tuple[str, ...]]:
    return {
        tuple(v for k, v in sorted(s.labels.items()) if k != "model")
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == name and s.labels.get("model") == MODEL
    }


def recall(accuracy: float) -> dict[str, float]:
    return dict.fromkeys(EUROSAT_CLASSES, accuracy)


def test_scores_of_many_versions_leave_two_versions_exported() -> None:
    metrics.show_scores(MODEL, "1", metrics.CHALLENGER, 0.8, recall(0.8))
    metrics.show_scores(MODEL, "1", metrics.CHAMPION, 0.8, recall(0.8))
    for version in ("2", "3", "4"):
        metrics.show_scores(MODEL, version, metrics.CHALLENGER, 0.7, recall(0.7))
    assert series("eostream_bridge_holdout_accuracy_ratio") == {
        ("1", "champion"),
        ("4", "challenger"),
    }
    recalls = series("eostream_bridge_holdout_recall_ratio")
    assert {version for _, version in recalls} == {"1", "4"}
    assert len(recalls) == 2 * len(EUROSAT_CLASSES)

    # v4 is promoted: it is both the challenger and the champion; v1's series go
    metrics.show_scores(MODEL, "4", metrics.CHAMPION, 0.7, recall(0.7))
    assert series("eostream_bridge_holdout_accuracy_ratio") == {
        ("4", "challenger"),
        ("4", "champion"),
    }
    assert {version for _, version in series("eostream_bridge_holdout_recall_ratio")} == {"4"}
    # the next challenger replaces v4 as challenger, but v4 keeps its recall as champion
    metrics.show_scores(MODEL, "5", metrics.CHALLENGER, 0.9, recall(0.9))
    assert {v for _, v in series("eostream_bridge_holdout_recall_ratio")} == {"4", "5"}
    assert metrics.shown_version(MODEL, metrics.CHAMPION) == "4"


def test_champion_version_and_no_champion() -> None:
    metrics.show_scores(MODEL, "7", metrics.CHAMPION, 0.9, recall(0.9))
    metrics.show_champion(MODEL, "7")
    assert REGISTRY.get_sample_value("eostream_bridge_champion_version", {"model": MODEL}) == 7
    metrics.show_champion(MODEL, None)  # the alias was deleted
    assert REGISTRY.get_sample_value("eostream_bridge_champion_version", {"model": MODEL}) is None
    assert ("7", "champion") not in series("eostream_bridge_holdout_accuracy_ratio")


def test_the_champion_as_a_label_follows_the_alias() -> None:
    """eostream_bridge_champion_info{model, version}: what inference should serve, one series
    per model (EostreamServedModelIsNotChampion compares it with inference's model_info)."""
    for version in ("2", "3"):
        metrics.show_champion(MODEL, version)
    assert series("eostream_bridge_champion_info") == {("3",)}
    metrics.show_champion(MODEL, "2")  # a rollback
    assert series("eostream_bridge_champion_info") == {("2",)}
    metrics.show_champion(MODEL, None)
    assert series("eostream_bridge_champion_info") == set()
