"""Which versions the reconcile loop queues (the registry is the source of truth: a lost event,
a crash between a verdict and its promotion, a tag written outside the bridge)."""

from __future__ import annotations

from eostream.registry_bridge.worker import needs_gate, pending
from eostream.shared import tags


def test_the_reconcile_loop_queues_what_the_bridge_has_not_decided() -> None:
    promoted = {tags.GATE: tags.GATE_PASSED, tags.PROMOTED_AT: "2026-12-07T00:00:00Z"}
    assert needs_gate({}, "READY")  # never gated
    assert not needs_gate({}, "PENDING_REGISTRATION")  # its files are not there yet
    assert needs_gate({tags.GATE: tags.GATE_PASSED}, "READY")  # passed, promotion interrupted
    assert not needs_gate(promoted, "READY")
    assert not needs_gate({tags.GATE: tags.GATE_FAILED}, "READY")
    assert not needs_gate({tags.GATE: tags.GATE_REFUSED}, "READY")
    # a value the bridge never writes, set by hand: gated (it used to sit ungated for ever)
    for odd in ("Passed", "ok", ""):
        assert needs_gate({tags.GATE: odd}, "READY"), odd
        assert needs_gate({tags.GATE: odd, tags.PROMOTED_AT: "x"}, "READY"), odd


def test_pending_is_oldest_first() -> None:
    versions = [
        ("10", {}, "READY"),
        ("9", {tags.GATE: "Passed"}, "READY"),
        ("2", {tags.GATE: tags.GATE_FAILED}, "READY"),
        ("11", {}, "FAILED_REGISTRATION"),
    ]
    assert pending(versions) == ["9", "10"]
