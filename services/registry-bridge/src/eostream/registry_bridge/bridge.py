"""The bridge: gate new versions, promote with aliases, ship, announce, roll back.

One instance per process; operations on the registry are serialised by one lock, so a webhook,
the reconcile loop, the event consumer and a manual promotion never interleave. All state is in
MLflow tags and aliases (see :mod:`.tags`) and in the models bucket, so a restarted bridge
carries on where it stopped. Blocking calls (MLflow, ONNX, torch, the object store) run in
threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from mlflow.entities.model_registry import ModelVersion

from eostream.registry_bridge import metrics, tags
from eostream.registry_bridge.audit import Action, AuditEntry, AuditLog, Via
from eostream.registry_bridge.contract import reasons_json
from eostream.registry_bridge.errors import NotReadyError, PromotionError, RefusedError
from eostream.registry_bridge.gatekeeper import Gatekeeper
from eostream.registry_bridge.policy import Evaluation, Thresholds, champion_refusal, judge
from eostream.registry_bridge.registry import MlflowRegistry, is_not_found
from eostream.registry_bridge.settings import BridgeSettings
from eostream.registry_bridge.shipping import Shipment, Shipper
from eostream.registry_bridge.verification import Verified, verify
from eostream.shared import topics
from eostream.shared.bus import Bus
from eostream.shared.events import ModelPromoted
from eostream.shared.mlm import MlmFacts
from eostream.shared.storage import ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")
State = Literal["deferred", "skipped", "refused", "failed", "challenger", "promoted"]
BRIDGE = "registry-bridge"


@dataclass(frozen=True)
class Outcome:
    name: str
    version: str
    state: State
    reasons: tuple[str, ...] = ()


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Bridge:
    def __init__(
        self, settings: BridgeSettings, registry: MlflowRegistry, store: ObjectStore, bus: Bus
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.bus = bus
        self.shipper = Shipper(
            store,
            settings.models_prefix,
            attempts=settings.retry_attempts,
            backoff=settings.retry_backoff_seconds,
            backoff_max=settings.retry_backoff_max_seconds,
        )
        self.audit = AuditLog(
            store,
            settings.audit_prefix,
            attempts=settings.retry_attempts,
            backoff=settings.retry_backoff_seconds,
            backoff_max=settings.retry_backoff_max_seconds,
        )
        self.thresholds = Thresholds(**settings.gate.model_dump())
        self.lock = asyncio.Lock()
        self.announced: dict[str, str] = {}  # name -> version this bridge announced on its bus
        self.gate = Gatekeeper(settings, registry, self.shipper)
        self.holdout_for = self.gate.holdout_for

    async def _t(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def _verify(self, mv: ModelVersion) -> Verified:
        s = self.settings
        return verify(
            self.registry,
            mv,
            holdout_for=self.holdout_for,
            grace_seconds=s.registration_grace_seconds,
            samples=s.agreement_samples,
            atol=s.agreement_atol,
            threads=s.torch_threads,
        )

    async def _get_version(self, name: str, version: str) -> ModelVersion:
        try:
            return await self._t(self.registry.get_version, name, version)
        except Exception as exc:
            if is_not_found(exc):
                raise PromotionError(f"{name} has no version {version}") from None
            raise

    # ------------------------------------------------------------------ gate
    async def handle_version(self, name: str, version: str, source: str = "manual") -> Outcome:
        """Gate a new version; promote it when it passes (and auto_promote is on)."""
        metrics.VERSIONS_SEEN.labels(source).inc()
        async with self.lock:
            return await self._handle_version(name, version, self.settings.auto_promote)

    async def _handle_version(self, name: str, version: str, auto_promote: bool) -> Outcome:
        mv = await self._get_version(name, version)
        if str(mv.status) != "READY":
            return Outcome(name, version, "deferred", (f"status {mv.status}",))
        vtags = dict(mv.tags or {})
        gate = vtags.get(tags.GATE)
        if gate in (tags.GATE_FAILED, tags.GATE_REFUSED):
            return Outcome(name, version, "skipped", (f"already {gate}",))
        if gate == tags.GATE_PASSED:
            if auto_promote and await self._t(self._should_resume, name, version, vtags):
                log.info(
                    "%s v%s passed the gate earlier but was not promoted: resuming", name, version
                )
                await self._promote(
                    name, version, BRIDGE, "gate passed (resumed)", "auto", via="auto"
                )
                return Outcome(name, version, "promoted", ("resumed",))
            return Outcome(name, version, "skipped", ("already passed",))

        try:
            verified = await self._t(self._verify, mv)
        except NotReadyError as exc:
            return Outcome(name, version, "deferred", (str(exc),))
        except RefusedError as exc:
            await self._t(
                self.registry.set_version_tags,
                name,
                version,
                {
                    tags.GATE_REASONS: reasons_json(exc.reasons),
                    tags.GATE: tags.GATE_REFUSED,
                },
            )
            metrics.GATE_RESULTS.labels("refused").inc()
            log.warning("%s v%s refused: %s", name, version, "; ".join(exc.reasons))
            return Outcome(name, version, "refused", exc.reasons)

        candidate, run_id = await self._t(self.gate.evaluate_candidate, verified)
        champion_version = await self._t(self.registry.alias_version, name, tags.CHAMPION)
        champion: Evaluation | None = None
        if champion_version and champion_version != version:
            champion = await self._t(
                self.gate.evaluate_champion, name, champion_version, verified.card.band_set
            )
        metrics.show_scores(
            name, version, metrics.CHALLENGER, candidate.accuracy, candidate.per_class_recall
        )
        if champion is not None and champion_version is not None:
            metrics.show_scores(
                name,
                champion_version,
                metrics.CHAMPION,
                champion.accuracy,
                champion.per_class_recall,
            )
        await self._show_champion(name, champion_version)
        verdict = judge(candidate, champion, self.thresholds)
        outcome = tags.GATE_PASSED if verdict.passed else tags.GATE_FAILED
        await self._t(
            self.gate.record_verdict,
            name,
            version,
            outcome,
            verdict.reasons,
            run_id,
            candidate,
            champion_version,
        )
        metrics.GATE_RESULTS.labels(outcome).inc()
        log.info(
            "%s v%s gate %s (champion %s): %s",
            name,
            version,
            outcome,
            champion_version,
            "; ".join(verdict.reasons),
        )
        if not verdict.passed:
            return Outcome(name, version, "failed", verdict.reasons)

        await self._t(self.registry.set_alias, name, tags.CHALLENGER, version)
        await self._t(
            self.registry.set_version_tags, name, version, {tags.STAGE: tags.STAGE_STAGING}
        )
        if not auto_promote:
            await self._t(self._ship, name, verified)
            return Outcome(name, version, "challenger", verdict.reasons)
        summary = "; ".join(r for r in verdict.reasons if r.startswith("PASS"))
        await self._promote(
            name, version, BRIDGE, f"gate passed: {summary}"[:1000], "auto", verified, via="auto"
        )
        return Outcome(name, version, "promoted", verdict.reasons)

    async def _show_champion(self, name: str, version: str | None) -> None:
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
            mv = await self._t(self.registry.get_version, name, version)
            accuracy = dict(mv.tags or {}).get(tags.GATE_ACCURACY)
            if accuracy:
                metrics.show_scores(name, version, metrics.CHAMPION, float(accuracy), {})
        except Exception as exc:  # a metric must not stop a promotion
            log.warning("%s v%s: champion accuracy not exported: %s", name, version, exc)

    def _should_resume(self, name: str, version: str, vtags: dict[str, str]) -> bool:
        if tags.PROMOTED_AT in vtags:
            return False
        champion = self.registry.alias_version(name, tags.CHAMPION)
        return champion is None or int(version) > int(champion)

    # ------------------------------------------------------------------ ship
    def _ship(self, name: str, verified: Verified) -> Shipment:
        started = time.perf_counter()
        try:
            metrics_ = self.registry.run_metrics(verified.run_id)
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
                    created=datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, UTC),
                    run_id=verified.run_id,
                    run_href=self._run_href(verified.run_id),
                    training_data_href=dict(mv.tags or {}).get("training_data_href"),
                    metrics=tuple(sorted(metrics_.items())),
                ),
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
                tags.SHIPPED: "true",
                tags.ARTIFACT_URI: shipment.artifact_uri,
                tags.SHA256: shipment.sha256,
                tags.MLM_ITEM_HREF: shipment.mlm_item_href,
            },
        )
        return shipment

    def _run_href(self, run_id: str) -> str | None:
        uri = self.registry.tracking_uri
        if not uri.startswith(("http://", "https://")):
            return None
        run = self.registry.client.get_run(run_id)
        return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

    def _ensure_shipped(self, name: str, version: str) -> Shipment:
        found = self.shipper.existing(name, version)
        if found is not None:
            return found
        mv = self.registry.get_version(name, version)
        if dict(mv.tags or {}).get(tags.GATE) == tags.GATE_REFUSED:
            raise RefusedError([f"{name} v{version} was refused by the gate; it cannot ship"])
        return self._ship(name, self._verify_now(mv))

    def _verify_now(self, mv: ModelVersion) -> Verified:
        s = self.settings
        return verify(
            self.registry,
            mv,
            holdout_for=self.holdout_for,
            grace_seconds=0,
            samples=s.agreement_samples,
            atol=s.agreement_atol,
            threads=s.torch_threads,
        )

    # ------------------------------------------------------------------ promote
    async def _record(
        self,
        name: str,
        action: Action,
        by: str,
        via: Via,
        before: str | None,
        after: str | None,
        reason: str,
    ) -> None:
        await self._t(
            self.audit.append,
            AuditEntry(
                model=name,
                action=action,
                by=by,
                via=via,
                from_version=before,
                to_version=after,
                reason=reason,
            ),
        )

    async def _promote(
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
        if verified is not None:
            shipment = await self._t(self._ship, name, verified)
        else:
            shipment = await self._t(self._ensure_shipped, name, version)
        previous = await self._t(self.registry.alias_version, name, tags.CHAMPION)
        live = (await self._t(self.registry.model_tags, name)).get(tags.LIVE_VERSION)
        await self._t(self.registry.set_alias, name, tags.CHAMPION, version)
        if await self._t(self.registry.alias_version, name, tags.CHALLENGER) == version:
            await self._t(self.registry.delete_alias, name, tags.CHALLENGER)
        new_tags = {
            **(extra_tags or {}),
            tags.STAGE: tags.STAGE_PRODUCTION,
            tags.PROMOTED_BY: by,
            tags.PROMOTED_REASON: reason[:5000],
            tags.PROMOTED_AT: _now(),
        }
        before = previous or live
        if before and before != version:
            new_tags[tags.PREVIOUS_CHAMPION] = before
            await self._t(
                self.registry.set_version_tags, name, before, {tags.STAGE: tags.STAGE_ARCHIVED}
            )
        await self._t(self.registry.set_version_tags, name, version, new_tags)
        event = await self._announce(name, version, shipment, before, by, reason)
        metrics.PROMOTIONS.labels(kind).inc()
        await self._record(name, action, by, via, before, version, reason)
        await self._show_champion(name, version)
        return event

    async def _announce(
        self,
        name: str,
        version: str,
        shipment: Shipment,
        previous: str | None,
        by: str,
        reason: str,
    ) -> ModelPromoted:
        mv = await self._t(self.registry.get_version, name, version)
        event = ModelPromoted(
            name=name,
            version=version,
            alias=tags.CHAMPION,
            artifact_uri=shipment.artifact_uri,
            sha256=shipment.sha256,
            mlm_item_href=shipment.mlm_item_href,
            run_id=str(mv.run_id) if mv.run_id else None,
            previous_version=previous if previous != version else None,
            promoted_by=by,
            reason=reason[:2000],
            source=BRIDGE,
        )
        await self.bus.publish(topics.MODELS_PROMOTED, event)
        self.announced[name] = version
        # written after the publish: a crash in between re-announces (consumers are idempotent)
        await self._t(self.registry.set_model_tag, name, tags.LIVE_VERSION, version)
        log.info("%s v%s is champion (by %s): %s", name, version, by, reason)
        return event

    async def promote(
        self,
        name: str,
        version: str,
        *,
        by: str,
        reason: str,
        force: bool = False,
        via: Via = "cli",
    ) -> ModelPromoted:
        """Manual promotion. A version that failed the gate needs ``force`` (an override, kept in
        the audit log and in ``eostream.override_*`` tags); a refused one never ships. ``by`` is
        who asks: the REST credential's name, or the operator of the CLI."""
        metrics.VERSIONS_SEEN.labels("manual").inc()
        async with self.lock:
            mv = await self._get_version(name, version)
            champion = await self._t(self.registry.alias_version, name, tags.CHAMPION)
            live = (await self._t(self.registry.model_tags, name)).get(tags.LIVE_VERSION)
            if champion == version == live:
                raise PromotionError(f"{name} v{version} is already the live champion")
            gate = dict(mv.tags or {}).get(tags.GATE)
            if gate is None:
                gate = await self._gate_only(name, version)
            reasons = dict((await self._get_version(name, version)).tags or {}).get(
                tags.GATE_REASONS, "[]"
            )
            if gate == tags.GATE_REFUSED:
                raise PromotionError(f"{name} v{version} was refused and cannot ship: {reasons}")
            if gate == tags.GATE_FAILED and not force:
                raise PromotionError(
                    f"{name} v{version} failed the gate: {reasons}; pass --force to promote anyway"
                )
            override = gate == tags.GATE_FAILED
            extra = (
                {
                    tags.OVERRIDE_BY: by,
                    tags.OVERRIDE_REASON: reason[:5000],
                    tags.OVERRIDE_AT: _now(),
                }
                if override
                else {}
            )
            try:
                return await self._promote(
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

    async def _gate_only(self, name: str, version: str) -> str:
        outcome = await self._handle_version(name, version, auto_promote=False)
        if outcome.state == "deferred":
            raise PromotionError(f"{name} v{version} is not ready: {'; '.join(outcome.reasons)}")
        return {"refused": tags.GATE_REFUSED, "failed": tags.GATE_FAILED}.get(
            outcome.state, tags.GATE_PASSED
        )

    async def rollback(self, name: str, *, by: str, reason: str, via: Via = "cli") -> ModelPromoted:
        """Make the champion before the current one live again (if it may still be champion:
        the ``previous_champion`` tag is MLflow state anyone with MLflow access can write)."""
        async with self.lock:
            current = await self._t(self.registry.alias_version, name, tags.CHAMPION)
            if current is None:
                raise PromotionError(f"{name} has no champion; nothing to roll back")
            mv = await self._get_version(name, current)
            target = dict(mv.tags or {}).get(tags.PREVIOUS_CHAMPION)
            if not target:
                raise PromotionError(
                    f"{name} v{current} has no previous champion recorded; promote a version "
                    "explicitly with `eostream models promote`"
                )
            why_not = await self._t(self._champion_refusal, name, target)
            if why_not is not None:
                raise PromotionError(
                    f"{name} v{target}, the previous champion, may not be champion: {why_not}"
                )
            try:
                shipment = await self._t(self._ensure_shipped, name, target)
            except RefusedError as exc:
                raise PromotionError("; ".join(exc.reasons)) from exc
            await self._t(self.registry.set_alias, name, tags.CHAMPION, target)
            await self._t(
                self.registry.set_version_tags,
                name,
                current,
                {
                    tags.STAGE: tags.STAGE_ARCHIVED,
                    tags.ROLLED_BACK_BY: by,
                    tags.ROLLED_BACK_REASON: reason[:5000],
                },
            )
            why = f"rollback from v{current}: {reason}"
            await self._t(
                self.registry.set_version_tags,
                name,
                target,
                {
                    tags.STAGE: tags.STAGE_PRODUCTION,
                    tags.PROMOTED_BY: by,
                    tags.PROMOTED_REASON: why[:5000],
                    tags.PROMOTED_AT: _now(),
                },
            )
            event = await self._announce(name, target, shipment, current, by, why)
            metrics.ROLLBACKS.inc()
            await self._record(name, "rollback", by, via, current, target, reason)
            await self._show_champion(name, target)
            return event

    def _champion_refusal(self, name: str, version: str) -> str | None:
        """Why ``version`` may not be champion (None: it may). Blocking."""
        gate = dict(self.registry.get_version(name, version).tags or {}).get(tags.GATE)
        overridden = gate == tags.GATE_FAILED and self.audit.overridden(name, version)
        return champion_refusal(gate, overridden)

    async def _undo_alias(self, name: str, champion: str, live: str | None, why: str) -> None:
        """The alias guard: move the champion alias back to the version last announced (or
        remove it), say why on the version, audit it. Nothing is shipped or announced."""
        log.error(
            "%s: champion alias set to v%s in MLflow, but %s; moving it back to %s",
            name,
            champion,
            why,
            f"v{live}" if live else "no champion",
        )
        restored = live
        if live:
            try:
                await self._t(self.registry.set_alias, name, tags.CHAMPION, live)
            except Exception as exc:  # the last live version is gone: leave no champion
                log.error("%s: cannot restore v%s (%s); removing the alias", name, live, exc)
                restored = None
        if restored is None:
            await self._t(self.registry.delete_alias, name, tags.CHAMPION)
        reason = f"champion alias moved to v{champion} outside the bridge, undone: {why}"
        await self._t(
            self.registry.set_version_tags,
            name,
            champion,
            {
                tags.ALIAS_UNDONE_REASON: reason[:5000],
                tags.ALIAS_UNDONE_AT: _now(),
            },
        )
        metrics.ALIAS_UNDONE.inc()
        await self._record(name, "alias_undone", BRIDGE, "mlflow", champion, restored, reason)
        await self._show_champion(name, restored)

    async def sync_champion(self, name: str) -> ModelPromoted | None:
        """React to a champion alias moved outside the bridge (MLflow UI/API), or a lost publish.

        The alias guard: a version that may not be champion (gate not passed, and no force
        promotion on record in the audit log) is neither shipped nor announced; the alias goes
        back to the version last announced. A passing version is shipped and announced.
        """
        async with self.lock:
            champion = await self._t(self.registry.alias_version, name, tags.CHAMPION)
            live = (await self._t(self.registry.model_tags, name)).get(tags.LIVE_VERSION)
            if champion is None or champion == live:
                await self._show_champion(name, champion)
                return None
            why_not = await self._t(self._champion_refusal, name, champion)
            if why_not is not None:
                await self._undo_alias(name, champion, live, why_not)
                return None
            try:
                shipment = await self._t(self._ensure_shipped, name, champion)
            except RefusedError as exc:
                await self._t(
                    self.registry.set_version_tags,
                    name,
                    champion,
                    {tags.GATE_REASONS: reasons_json(exc.reasons)},
                )
                await self._undo_alias(
                    name, champion, live, "it cannot ship: " + "; ".join(exc.reasons)
                )
                return None
            vtags = dict((await self._t(self.registry.get_version, name, champion)).tags or {})
            # the bridge's own promotion whose publish was lost (tags written, then a crash)
            lost_publish = (
                tags.PROMOTED_AT in vtags and vtags.get(tags.STAGE) == tags.STAGE_PRODUCTION
            )
            by, reason = "mlflow-alias", "champion alias set in MLflow"
            update = {tags.STAGE: tags.STAGE_PRODUCTION}
            if lost_publish:
                by = vtags.get(tags.PROMOTED_BY, by)
                reason = vtags.get(tags.PROMOTED_REASON, reason)
            else:
                update |= {
                    tags.PROMOTED_BY: by,
                    tags.PROMOTED_REASON: reason,
                    tags.PROMOTED_AT: _now(),
                }
            if live and live != champion:
                if not (lost_publish and tags.PREVIOUS_CHAMPION in vtags):
                    update[tags.PREVIOUS_CHAMPION] = live
                await self._t(
                    self.registry.set_version_tags, name, live, {tags.STAGE: tags.STAGE_ARCHIVED}
                )
            await self._t(self.registry.set_version_tags, name, champion, update)
            event = await self._announce(name, champion, shipment, live, by, reason)
            metrics.PROMOTIONS.labels("alias").inc()
            if lost_publish:  # the promotion's audit entry comes after its publish: not written
                await self._record(
                    name,
                    "promote",
                    by,
                    "auto",
                    live,
                    champion,
                    f"{reason} (announced again after an interruption)",
                )
            else:
                await self._record(name, "alias_accepted", by, "mlflow", live, champion, reason)
            await self._show_champion(name, champion)
            return event

    async def announce_current_champion(self, name: str) -> ModelPromoted | None:
        """Announce again the champion a previous run shipped and announced, on this bridge's bus.

        For buses that do not keep their log across runs (the embedded in-process bus): without
        it, inference started in the same process would not know the live model. Does nothing
        when there is no champion, when the champion was never announced (``sync_champion``, in
        the reconcile loop, ships and announces it), or when this bridge already announced it on
        its bus, so calling it again is harmless. Nothing is shipped again while the models bucket
        holds the shipment; the event carries the champion's recorded promoter and reason.
        """
        async with self.lock:
            champion = await self._t(self.registry.alias_version, name, tags.CHAMPION)
            live = (await self._t(self.registry.model_tags, name)).get(tags.LIVE_VERSION)
            if champion is None or champion != live or self.announced.get(name) == champion:
                return None
            try:
                shipment = await self._t(self._ensure_shipped, name, champion)
            except RefusedError as exc:
                log.error(
                    "%s: champion v%s cannot ship (%s); not announced",
                    name,
                    champion,
                    "; ".join(exc.reasons),
                )
                return None
            vtags = dict((await self._t(self.registry.get_version, name, champion)).tags or {})
            log.info("%s: re-announcing champion v%s shipped by an earlier run", name, champion)
            event = await self._announce(
                name,
                champion,
                shipment,
                vtags.get(tags.PREVIOUS_CHAMPION),
                vtags.get(tags.PROMOTED_BY, BRIDGE),
                vtags.get(tags.PROMOTED_REASON, "champion of an earlier run"),
            )
            await self._show_champion(name, champion)
            return event
