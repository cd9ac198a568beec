"""A force promotion holds while its version stays champion: once the champion moved on (a
rollback, a promotion), making the forced version champion again takes a new force."""

from __future__ import annotations

from eostream.registry_bridge.audit import (
    UNVERIFIED,
    AuditEntry,
    in_force,
    trusted_gate,
    verdict_on_record,
)


def entry(action: str, before: str | None, after: str | None) -> AuditEntry:
    return AuditEntry.model_validate(
        {
            "model": "m", "action": action, "by": "bob", "via": "rest",
            "from_version": before, "to_version": after, "reason": "test",
        }
    )  # fmt: skip


def test_a_force_holds_until_the_champion_moves_on() -> None:
    forced = [entry("promote", None, "1"), entry("override", "1", "2")]
    assert in_force(forced, "2") and not in_force(forced, "1")
    # the same version announced again (after an interruption) keeps it
    assert in_force([*forced, entry("promote", "2", "2")], "2")
    # rolled back "because it misclassifies rivers": an alias move back is no force
    rolled_back = [*forced, entry("rollback", "2", "1")]
    assert not in_force(rolled_back, "2")
    assert not in_force([*rolled_back, entry("alias_undone", "2", "1")], "2")
    # a later promotion ends it too; a new force with its reason starts it again
    assert not in_force([*forced, entry("promote", "2", "3")], "2")
    assert in_force([*rolled_back, entry("override", "1", "2")], "2")
    assert not in_force([], "2")


def test_the_verdict_on_record_is_the_versions_own() -> None:
    """A verdict is the version's, not its number's (a model deleted and registered again
    numbers from 1); a version the bridge made champion before verdicts were recorded (promoted,
    or an accepted alias move) counts as passed, so earlier champions stay rollback targets."""
    gated = AuditEntry(model="m", action="gated", by="registry-bridge", via="auto",
                       from_version=None, to_version=None, reason="PASS", version="1",
                       verdict="passed", registered_ms=1000)  # fmt: skip
    assert verdict_on_record([gated], "1", 1000) == "passed"
    assert verdict_on_record([gated], "1", 2000) is None  # another version 1
    assert verdict_on_record([gated], "2", 1000) is None
    legacy = [entry("promote", None, "1"), entry("alias_accepted", "1", "2")]
    assert [verdict_on_record(legacy, v, 5) for v in ("1", "2", "3")] == ["passed", "passed", None]
    failed = gated.model_copy(update={"verdict": "failed", "version": "2"})
    assert verdict_on_record([*legacy, failed], "2", None) == "failed"  # the newer record
    assert verdict_on_record([entry("override", "1", "2")], "2") is None  # forced: not passed
    # a model deleted and registered again: the old version 1's promotion is not the new one's
    promoted = entry("promote", None, "1")
    registered_later = int(promoted.at.timestamp() * 1000) + 600_000  # beyond clock skew
    assert verdict_on_record([promoted], "1", registered_later) is None
    assert verdict_on_record([promoted], "1", registered_later - 400_000) == "passed"


def test_the_surfaces_show_the_verdict_on_record_not_the_tag() -> None:
    """``models list``, REST ``/models`` and the catalogue show what the bridge trusts: a
    ``passed`` tag with no verdict on record is "unverified" (the bridge gates it again), a tag
    over a recorded failure shows the failure, and a failed tag with nothing on record keeps
    the version out as it is."""
    gated = AuditEntry(model="m", action="gated", by="registry-bridge", via="auto",
                       from_version=None, to_version=None, reason="FAIL", version="1",
                       verdict="failed", registered_ms=1000)  # fmt: skip
    assert trusted_gate(None, [gated], "1", 1000) is None  # not gated yet
    assert trusted_gate("passed", [], "1", 1000) == UNVERIFIED
    assert trusted_gate("Passed", [], "1", 1000) == UNVERIFIED
    assert trusted_gate("passed", [gated], "1", 1000) == "failed"
    assert trusted_gate("failed", [], "1", 1000) == "failed"
    assert trusted_gate("refused", [], "1", 1000) == "refused"
    passed = gated.model_copy(update={"verdict": "passed"})
    assert trusted_gate("passed", [passed], "1", 1000) == "passed"
    # an earlier champion, promoted before verdicts were recorded
    assert trusted_gate("passed", [entry("promote", None, "1")], "1", 5) == "passed"
