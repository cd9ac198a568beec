"""A force promotion holds while its version stays champion: once the champion moved on (a
rollback, a promotion), making the forced version champion again takes a new force."""

from __future__ import annotations

from eostream.registry_bridge.audit import AuditEntry, in_force


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
