"""The gate verdict in a version's description (pure): appended after the trainer's text,
replaced (never repeated) when a version is gated again, and kept within MLflow's limit."""

from __future__ import annotations

from eostream.registry_bridge.gating import DESCRIPTION_LIMIT, VERDICT_HEADING, with_verdict

TRAINER_TEXT = "**eurosat**: EuroSAT patch classifier, small_cnn.\n\nTest accuracy 0.9100."


def test_the_verdict_follows_the_trainers_text_and_replaces_an_earlier_one() -> None:
    first = with_verdict(TRAINER_TEXT, "failed", ("FAIL: accuracy 0.1 < 0.5",))
    assert first == (
        f"{TRAINER_TEXT}\n\n{VERDICT_HEADING}: failed (no champion)\n- FAIL: accuracy 0.1 < 0.5"
    )
    again = with_verdict(first, "passed", ("PASS: accuracy 0.91 >= 0.5", "NOTE: x"), "3")
    assert again == (
        f"{TRAINER_TEXT}\n\n{VERDICT_HEADING}: passed (against champion v3)\n"
        "- PASS: accuracy 0.91 >= 0.5\n- NOTE: x"
    )
    assert with_verdict("", "refused", ("tag 'onnx_sha256' is missing",)).startswith(
        VERDICT_HEADING
    )


def test_a_long_description_is_cut_before_the_verdict_never_the_verdict() -> None:
    text = with_verdict("x" * 6000, "passed", ("PASS: fine",))
    assert len(text) <= DESCRIPTION_LIMIT
    assert text.endswith(f"{VERDICT_HEADING}: passed (no champion)\n- PASS: fine")
    assert "x…\n\n" in text
