"""The map check's decision (:func:`policy.judge_map`), pure: figures in, verdict out."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from eostream.registry_bridge.policy import (
    Evaluation,
    MapScores,
    Thresholds,
    combine,
    judge,
    judge_map,
)
from eostream.registry_bridge.settings import GateSettings

T = Thresholds(map_margin=0.02)


def test_a_drop_within_the_margin_passes_and_beyond_it_fails_with_both_figures() -> None:
    assert judge_map(MapScores(0.835, 0.9), MapScores(0.85, 0.9), T).passed
    verdict = judge_map(MapScores(0.80, 0.95), MapScores(0.85, 0.90), T)
    assert not verdict.passed
    (failure,) = verdict.failures
    assert "0.8000" in failure and "0.8500" in failure and "0.0200" in failure


def test_the_compared_figure_is_configurable() -> None:
    oa = Thresholds(map_metric="overall_accuracy", map_margin=0.02)
    assert judge_map(MapScores(0.80, 0.95), MapScores(0.85, 0.90), oa).passed
    assert not judge_map(MapScores(0.90, 0.80), MapScores(0.85, 0.90), oa).passed


def test_without_a_champion_the_figure_is_recorded_and_the_floor_applies() -> None:
    verdict = judge_map(MapScores(0.40, 0.8), None, T)
    assert verdict.passed and "0.4000 recorded" in verdict.reasons[-1]
    floored = Thresholds(map_floor=0.5)
    assert not judge_map(MapScores(0.40, 0.8), None, floored).passed
    assert not judge_map(MapScores(0.40, 0.8), MapScores(0.30, 0.8), floored).passed


def test_maps_that_could_not_be_scored_fail_with_the_reason() -> None:
    verdict = judge_map(MapScores(None, None, 0, ("item x: no overlap",)), MapScores(0.8, 0.9), T)
    assert not verdict.passed and "item x: no overlap" in verdict.failures[0]


def test_a_candidate_better_on_patches_fails_on_maps_alone() -> None:
    patches = judge(Evaluation(0.9, {}, 100), Evaluation(0.5, {}, 100), T)
    verdict = combine(patches, judge_map(MapScores(0.3, 0.7), MapScores(0.8, 0.9), T))
    assert patches.passed and not verdict.passed and len(verdict.failures) == 1


def test_gate_settings_feed_the_thresholds() -> None:
    gate = GateSettings(map_margin=0.05, map_floor=0.6, map_metric="overall_accuracy")
    t = Thresholds.of(gate)
    assert (t.map_margin, t.map_floor, t.map_metric) == (0.05, 0.6, "overall_accuracy")
    assert gate.reference is None  # unset: the map check is skipped
    with pytest.raises(ValidationError):
        GateSettings(map_stride=7)


def test_the_map_check_scores_maps_as_inference_serves_them() -> None:
    """It scored at stride 8 with no uncertain label where inference serves at stride 32 with
    pixels under 0.5 uncertain: the check would have given the demo's EuroSAT model a water IoU
    of 0.80, and its served maps were at 0.46 (pooled over the three labelled dates)."""
    from eostream.inference.settings import InferenceSettings

    served = InferenceSettings.model_fields
    gate = GateSettings()
    assert gate.map_stride == served["stride"].default
    assert gate.map_uncertain_below == served["uncertain_below"].default


def test_the_gates_summary_carries_both_baselines_and_what_was_scored() -> None:
    """NDWI > 0 and NDWI tuned on the other dates (two complete dates or more), the items and
    the collection the figures hold for."""
    import numpy as np

    from eostream.inference import accuracy, evaluation, reference
    from eostream.registry_bridge.maps import summarise

    ref = evaluation.Reference("href", "labels", {"water": ["SeaLake"]}, "other", [])

    def cm(tp: int, fn: int, fp: int) -> np.ndarray:  # rows: water, other
        return np.array([[tp, fn], [fp, 1000]])

    sweep = {t: cm(100, int(abs(t + 0.1) * 100), 0) for t in accuracy.NDWI_THRESHOLDS}
    items = [
        evaluation.ItemResult(
            d, d, d, reference.COMPLETE, 1100, cm(90, 10, 0), cm(80, 20, 0), ndwi_sweep=sweep
        )
        for d in ("a", "b")
    ]
    made = summarise(evaluation.Report("m", "m", ref, items=items))
    assert made.metrics["map_ndwi_iou_water"] == pytest.approx(0.8)
    assert made.metrics["map_ndwi_tuned_iou_water"] == pytest.approx(1.0)  # t -0.1 on both
    assert (made.scores.scored, made.scores.reference) == (("a", "b"), "labels")
    assert made.scores.mean_iou == pytest.approx(0.9)
    alone = summarise(evaluation.Report("m", "m", ref, items=items[:1]))
    assert "map_ndwi_tuned_iou_water" not in alone.metrics  # one date: nothing to tune on
