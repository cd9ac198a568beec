"""Shipping, promotion, rollback and the announcement: blocking transactions.

A :class:`Promoter` method is one whole operation on the registry (through its port), the models
bucket, the audit log and the bus, in a fixed order: ship, move the alias, write the tags,
publish ``ModelPromoted``, write ``eostream.live_version``, append to the audit log. It is not
thread-safe: the bridge (:mod:`.bridge`) runs one operation at a time, under its lock, in one
worker thread; ``publish`` hands the event to the bus on the event loop and waits for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from eostream.registry_bridge import metrics
from eostream.registry_bridge.audit import (
    UNVERIFIED,
    Action,
    AuditEntry,
    AuditLog,
    Via,
    in_force,
    moves,
    trusted_gate,
)
from eostream.registry_bridge.errors import PromotionError, RefusedError, VersionNotFoundError
from eostream.registry_bridge.gatekeeper import Gatekeeper
from eostream.registry_bridge.policy import champion_refusal
from eostream.registry_bridge.port import ModelRegistry, VersionInfo
from eostream.registry_bridge.quantize import INT8, Int8Check
from eostream.registry_bridge.shipping import INT8_FILE, Shipment, Shipper, Variant
from eostream.registry_bridge.verification import Verified
from eostream.shared import mlm, tags
from eostream.shared.events import ModelPromoted
from eostream.shared.mlm import MlmFacts

log = logging.getLogger(__name__)

State = Literal["deferred", "skipped", "refused", "failed", "challenger", "promoted"]
BRIDGE = "registry-bridge"
#: puts an event on the bus and returns once it is there (blocking)
Publish = Callable[[ModelPromoted], None]
#: (name, version) -> the gate verdict of a version, gating it first when it has none
GateFirst = Callable[[str, str], str]


@dataclass(frozen=True)
class Outcome:
    name: str
    version: str
    state: State
    reasons: tuple[str, ...] = ()


def now() -> str:
    return datetime.now(UTC).isoformat()


def base_model_of(run_params: dict[str, str]) -> str | None:
    """The ``models:/`` URI a run fine-tuned (the trainer logs its plan's ``base_model``
    parameter; ``None`` when it trained from scratch)."""
    value = run_params.get("base_model", "").strip()
    return value if value.startswith("models:/") else None


class Promoter:
    def __init__(
        self,
        registry: ModelRegistry,
        gate: Gatekeeper,
        shipper: Shipper,
        audit: AuditLog,
        publish: Publish,
    ) -> None:
        self.registry = registry
        self.gate = gate
        self.shipper = shipper
        self.audit = audit
        self.publish = publish
        self.announced: dict[str, str] = {}  # name -> version this bridge announced on its bus

    def version(self, name: str, version: str) -> VersionInfo:
        """The version, or PromotionError when there is none (an operator's request)."""
        try:
            return self.registry.get_version(name, version)
        except VersionNotFoundError as exc:
            raise PromotionError(str(exc)) from None

    # ------------------------------------------------------------------ ship
    def ship(self, name: str, verified: Verified) -> Shipment:
        """Ship the version: its fp32 file, the int8 one when it passes its check (made only
        when the version is not shipped yet), the MLM item; then the version's tags."""
        started = time.perf_counter()
        checks: list[Int8Check] = []

        def variants() -> tuple[Variant, ...]:
            check = self.gate.int8_check(verified)
            checks.append(check)
            if check.onnx_bytes is None:
                return ()
            return (
                Variant(
                    mlm.INT8_ASSET,
                    INT8,
                    INT8_FILE,
                    check.onnx_bytes,
                    tuple(check.asset_fields().items()),
                ),
            )

        try:
            run_metrics = self.registry.run_metrics(verified.run_id)
            base_model = base_model_of(self.registry.run_params(verified.run_id))
            mv = self.registry.get_version(name, verified.version)
            shipment = self.shipper.ship(
                name,
                verified.version,
                verified.onnx_bytes,
                verified.card,
                lambda uri, sha, size: MlmFacts(
                    name=name,
                    version=verified.version,
                    card=verified.card,
                    artifact_href=uri,
                    sha256=sha,
                    size=size,
                    created=datetime.fromtimestamp(mv.created_ms / 1000, UTC),
                    run_id=verified.run_id,
                    run_href=self.registry.run_href(verified.run_id),
                    training_data_href=mv.tags.get("training_data_href"),
                    metrics=tuple(sorted(run_metrics.items())),
                    base_model=base_model,
                ),
                variants,
            )
        except Exception:
            metrics.SHIP_DURATION.labels("error").observe(time.perf_counter() - started)
            raise
        outcome = "already_shipped" if shipment.already_shipped else "shipped"
        metrics.SHIP_DURATION.labels(outcome).observe(time.perf_counter() - started)
        self.registry.set_version_tags(
            name,
            verified.version,
            {
                **(checks[-1].as_tags() if checks else {}),
                tags.SHIPPED: "true",
                tags.ARTIFACT_URI: shipment.artifact_uri,
                tags.SHA256: shipment.sha256,
                tags.MLM_ITEM_HREF: shipment.mlm_item_href,
            },
        )
        return shipment

    def ensure_shipped(self, name: str, version: str) -> Shipment:
        found = self.shipper.existing(name, version)
        if found is not None:
            return found
        mv = self.registry.get_version(name, version)
        if mv.tags.get(tags.GATE) == tags.GATE_REFUSED:
            raise RefusedError([f"{name} v{version} was refused by the gate; it cannot ship"])
        return self.ship(name, self.gate.verify(mv, wait_for_tags=False))

    # ------------------------------------------------------------------ promote
    def record(
        self,
        name: str,
        action: Action,
        by: str,
        via: Via,
        before: str | None,
        after: str | None,
        reason: str,
    ) -> None:
        self.audit.append(
            AuditEntry(
                model=name,
                action=action,
                by=by,
                via=via,
                from_version=before,
                to_version=after,
                reason=reason,
            )
        )

    def record_gate(self, mv: VersionInfo, outcome: str, reasons: Sequence[str]) -> None:
        """The gate's verdict on ``mv``, in the audit log: the record :meth:`verdict` trusts
        (written before the ``eostream.gate`` tag)."""
        name, version = mv.name, mv.version
        self.audit.append(
            AuditEntry(
                model=name,
                action="gated",
                by=BRIDGE,
                via="auto",
                from_version=None,
                to_version=None,
                version=version,
                verdict=outcome,
                registered_ms=mv.created_ms,
                reason=("; ".join(reasons) or outcome)[:5000],
            )
        )

    def verdict(self, mv: VersionInfo, entries: list[AuditEntry] | None = None) -> str | None:
        """The gate's verdict on ``mv`` the bridge can trust: its audit log's (``entries``, else
        read), whatever the ``eostream.gate`` tag says; with nothing on record, a tag that keeps
        the version out (failed, refused) is taken as it is, any other is no verdict (None:
        gate it)."""
        tagged = mv.tags.get(tags.GATE)
        if tagged is None:
            return None
        found = self.audit.entries(mv.name) if entries is None else entries
        trusted = trusted_gate(tagged, found, mv.version, mv.created_ms)
        if trusted != UNVERIFIED:
            return trusted
        log.warning(
            "%s v%s: its eostream.gate tag says %r, but the audit log has no verdict of it: "
            "not trusted",
            mv.name,
            mv.version,
            tagged[:40],
        )
        return None

    def promote(
        self,
        name: str,
        version: str,
        by: str,
        reason: str,
        kind: str,
        verified: Verified | None = None,
        *,
        via: Via,
        action: Action = "promote",
        extra_tags: dict[str, str] | None = None,
    ) -> ModelPromoted:
        """Ship (``verified``, else what the bucket or a fresh verification gives), make
        champion, tag, announce, audit. No checks: callers decided that it may."""
        if verified is not None:
            shipment = self.ship(name, verified)
        else:
            shipment = self.ensure_shipped(name, version)
        previous = self.registry.alias_version(name, tags.CHAMPION)
        live = self.registry.model_tags(name).get(tags.LIVE_VERSION)
        self.registry.set_alias(name, tags.CHAMPION, version)
        if self.registry.alias_version(name, tags.CHALLENGER) == version:
            self.registry.delete_alias(name, tags.CHALLENGER)
        new_tags = {
            **(extra_tags or {}),
            tags.STAGE: tags.STAGE_PRODUCTION,
            tags.PROMOTED_BY: by,
            tags.PROMOTED_REASON: reason[:5000],
            tags.PROMOTED_AT: now(),
        }
        before = previous or live
        if before and before != version:
            new_tags[tags.PREVIOUS_CHAMPION] = before
            self.registry.set_version_tags(name, before, {tags.STAGE: tags.STAGE_ARCHIVED})
        self.registry.set_version_tags(name, version, new_tags)
        # audited before the announcement: were the process to stop between the publish and
        # the live_version tag, the alias guard must find a forced promotion on record, and
        # announce its version again rather than move the alias back under a live model
        self.record(name, action, by, via, before, version, reason)
        event = self.announce(name, version, shipment, before, by, reason)
        metrics.PROMOTIONS.labels(kind).inc()
        self.show_champion(name, version)
        return event

    def promote_manually(
        self,
        name: str,
        version: str,
        *,
        by: str,
        reason: str,
        force: bool,
        via: Via,
        gate_first: GateFirst,
    ) -> ModelPromoted:
        """An operator's promotion. A version that failed the gate needs ``force`` (an override,
        kept in the audit log and in ``eostream.override_*`` tags); a refused one never ships; one
        not gated yet is gated first (``gate_first``)."""
        mv = self.version(name, version)
        champion = self.registry.alias_version(name, tags.CHAMPION)
        live = self.registry.model_tags(name).get(tags.LIVE_VERSION)
        if champion == version == live:
            raise PromotionError(f"{name} v{version} is already the live champion")
        gate = self.verdict(mv)
        if gate is None:
            gate = gate_first(name, version)
        reasons = self.version(name, version).tags.get(tags.GATE_REASONS, "[]")
        if gate == tags.GATE_REFUSED:
            raise PromotionError(f"{name} v{version} was refused and cannot ship: {reasons}")
        if gate == tags.GATE_FAILED and not force:
            raise PromotionError(
                f"{name} v{version} failed the gate: {reasons}; pass --force to promote anyway"
            )
        override = gate == tags.GATE_FAILED
        extra = (
            {tags.OVERRIDE_BY: by, tags.OVERRIDE_REASON: reason[:5000], tags.OVERRIDE_AT: now()}
            if override
            else {}
        )
        try:
            return self.promote(
                name,
                version,
                by,
                reason,
                "override" if override else "manual",
                via=via,
                action="override" if override else "promote",
                extra_tags=extra,
            )
        except RefusedError as exc:
            raise PromotionError("; ".join(exc.reasons)) from exc

    def rollback(self, name: str, *, by: str, reason: str, via: Via) -> ModelPromoted:
        """Make the champion before the current one live again (if it may still be champion:
        the ``previous_champion`` tag is registry state anyone with registry access can write)."""
        current = self.registry.alias_version(name, tags.CHAMPION)
        if current is None:
            raise PromotionError(f"{name} has no champion; nothing to roll back")
        target = self.version(name, current).tags.get(tags.PREVIOUS_CHAMPION)
        if not target:
            raise PromotionError(
                f"{name} v{current} has no previous champion recorded; promote a version "
                "explicitly with `eostream models promote`"
            )
        why_not = self.champion_refusal(name, target, undoing=current)
        if why_not is not None:
            raise PromotionError(
                f"{name} v{target}, the previous champion, may not be champion: {why_not}"
            )
        try:
            shipment = self.ensure_shipped(name, target)
        except RefusedError as exc:
            raise PromotionError("; ".join(exc.reasons)) from exc
        self.registry.set_alias(name, tags.CHAMPION, target)
        self.registry.set_version_tags(
            name,
            current,
            {
                tags.STAGE: tags.STAGE_ARCHIVED,
                tags.ROLLED_BACK_BY: by,
                tags.ROLLED_BACK_REASON: reason[:5000],
            },
        )
        why = f"rollback from v{current}: {reason}"
        self.registry.set_version_tags(
            name,
            target,
            {
                tags.STAGE: tags.STAGE_PRODUCTION,
                tags.PROMOTED_BY: by,
                tags.PROMOTED_REASON: why[:5000],
                tags.PROMOTED_AT: now(),
            },
        )
        self.record(name, "rollback", by, via, current, target, reason)  # before: see promote
        event = self.announce(name, target, shipment, current, by, why)
        metrics.ROLLBACKS.inc()
        self.show_champion(name, target)
        return event

    def champion_refusal(
        self, name: str, version: str, *, undoing: str | None = None
    ) -> str | None:
        """Why ``version`` may not be champion (None: it may); the audit log, not a tag, tells
        whether a failed version's force is in force. ``undoing``: a rollback of the champion
        ``undoing`` to ``version``, which restores a force that promotion alone ended (the
        one-command way back from a bad version to a forced hotfix)."""
        mv = self.registry.get_version(name, version)
        entries = self.audit.entries(name)
        gate = self.verdict(mv, entries)
        if gate is None and mv.tags.get(tags.GATE) is not None:
            return (
                f"its eostream.gate tag says {mv.tags[tags.GATE][:40]!r}, but the bridge's audit "
                "log has no such verdict (whoever can write MLflow tags can write that one); "
                "the bridge gates it"
            )
        if gate != tags.GATE_FAILED:
            return champion_refusal(gate, False)
        entries = moves(entries)
        last = entries[-1] if entries else None
        if (
            undoing is not None
            and last is not None
            and (last.from_version, last.to_version) == (version, undoing)
        ):
            entries = entries[:-1]
        return champion_refusal(gate, in_force(entries, version))

    # ------------------------------------------------------------------ announce
    def announce(
        self,
        name: str,
        version: str,
        shipment: Shipment,
        previous: str | None,
        by: str,
        reason: str,
    ) -> ModelPromoted:
        mv = self.registry.get_version(name, version)
        event = ModelPromoted(
            name=name,
            version=version,
            alias=tags.CHAMPION,
            artifact_uri=shipment.artifact_uri,
            sha256=shipment.sha256,
            mlm_item_href=shipment.mlm_item_href,
            run_id=mv.run_id,
            previous_version=previous if previous != version else None,
            promoted_by=by,
            reason=reason[:2000],
            source=BRIDGE,
        )
        self.publish(event)
        self.announced[name] = version
        # written after the publish: a crash in between re-announces (consumers are idempotent)
        self.registry.set_model_tag(name, tags.LIVE_VERSION, version)
        log.info("%s v%s is champion (by %s): %s", name, version, by, reason)
        return event

    def show_champion(self, name: str, version: str | None) -> None:
        """Export the champion's version and, when known, its held-out scores: from this run's
        gate evaluations, else the accuracy the gate recorded on the version (no recall)."""
        metrics.show_champion(name, version)
        if version is None or metrics.shown_version(name, metrics.CHAMPION) == version:
            return
        scores = self.gate.scores_of(name, version)
        if scores is not None:
            metrics.show_scores(
                name, version, metrics.CHAMPION, scores.accuracy, scores.per_class_recall
            )
            return
        metrics.forget_scores(name, metrics.CHAMPION)
        try:
            accuracy = self.registry.get_version(name, version).tags.get(tags.GATE_ACCURACY)
            if accuracy:
                metrics.show_scores(name, version, metrics.CHAMPION, float(accuracy), {})
        except Exception as exc:  # a metric must not stop a promotion
            log.warning("%s v%s: champion accuracy not exported: %s", name, version, exc)
