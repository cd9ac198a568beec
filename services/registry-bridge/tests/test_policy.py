"""The gate policy is a pure function: every rule, with both outcomes."""

from __future__ import annotations

from eostream.registry_bridge.policy import Evaluation, Thresholds, judge
from eostream.shared.modelcard import EUROSAT_CLASSES


def ev(accuracy: float, **recall: float) -> Evaluation:
    per_class = {c: accuracy for c in EUROSAT_CLASSES} | recall
    return Evaluation(accuracy=accuracy, per_class_recall=per_class, samples=100)


T = Thresholds(min_accuracy=0.6, max_class_drop=0.1, min_improvement=0.0)


def test_first_model_needs_only_the_minimum_accuracy() -> None:
    assert judge(ev(0.7), None, T).passed
    verdict = judge(ev(0.5), None, T)
    assert not verdict.passed
    assert "accuracy 0.5000 vs minimum 0.6000" in verdict.failures[0]


def test_better_candidate_passes_with_reasons() -> None:
    verdict = judge(ev(0.85), ev(0.80), T)
    assert verdict.passed
    assert all(r.startswith("PASS") for r in verdict.reasons)


def test_worse_overall_fails() -> None:
    verdict = judge(ev(0.70), ev(0.80), T)
    assert not verdict.passed
    assert any("vs champion 0.8000" in r for r in verdict.failures)


def test_one_class_dropping_too_far_fails_even_if_accuracy_rises() -> None:
    verdict = judge(ev(0.90, Forest=0.60), ev(0.80, Forest=0.95), T)
    assert not verdict.passed
    [failure] = verdict.failures
    assert "class Forest recall fell by 0.3500" in failure


def test_drop_within_allowance_passes() -> None:
    assert judge(ev(0.85, River=0.72), ev(0.80, River=0.80), T).passed


def test_required_improvement() -> None:
    strict = Thresholds(min_accuracy=0.0, max_class_drop=1.0, min_improvement=0.02)
    assert not judge(ev(0.81), ev(0.80), strict).passed
    assert judge(ev(0.83), ev(0.80), strict).passed


def test_empty_evaluation_never_passes() -> None:
    empty = Evaluation(accuracy=1.0, per_class_recall={}, samples=0)
    assert not judge(empty, None, Thresholds(min_accuracy=0.0)).passed


def test_a_candidate_exactly_at_a_threshold_passes() -> None:
    """0.82 - 0.80 is 0.01999... in binary floating point: exactly the improvement asked, and a
    drop of exactly the allowance, pass (as the settings' descriptions say)."""
    strict = Thresholds(min_accuracy=0.82, max_class_drop=0.1, min_improvement=0.02)
    verdict = judge(ev(0.82, Forest=0.70), ev(0.80, Forest=0.80), strict)
    assert verdict.passed, verdict.failures
    assert not judge(ev(0.8199), ev(0.80), strict).passed
