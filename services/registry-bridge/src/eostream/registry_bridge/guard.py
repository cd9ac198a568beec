"""The champion alias guard and the champion sync (docs/adr/0007): react to a champion alias
moved outside the bridge, to a lost publish, and re-announce a champion on a fresh bus.

Blocking and not thread-safe, like :mod:`.promotion`: the bridge runs each as one operation in
one worker thread, under its lock.
"""

from __future__ import annotations

import logging

from eostream.registry_bridge import metrics
from eostream.registry_bridge.audit import MOVES, AuditEntry, moves
from eostream.registry_bridge.contract import reasons_json
from eostream.registry_bridge.errors import RefusedError
from eostream.registry_bridge.port import ModelRegistry
from eostream.registry_bridge.promotion import BRIDGE, Promoter, now
from eostream.shared import tags
from eostream.shared.events import ModelPromoted

log = logging.getLogger(__name__)
#: the audit actions that make a version champion through :meth:`.promotion.Promoter.promote`
PROMOTING_ACTIONS = ("promote", "override", "rollback")


class ChampionGuard:
    def __init__(self, registry: ModelRegistry, promoter: Promoter) -> None:
        self.registry = registry
        self.promoter = promoter

    def _champion_and_live(self, name: str) -> tuple[str | None, str | None]:
        champion = self.registry.alias_version(name, tags.CHAMPION)
        return champion, self.registry.model_tags(name).get(tags.LIVE_VERSION)

    def sync(self, name: str) -> ModelPromoted | None:
        """A version that may not be champion (gate not passed, and no force promotion in force
        in the audit log) is neither shipped nor announced; the alias goes back to the version
        last announced. A passing version is shipped and announced."""
        p = self.promoter
        champion, live = self._champion_and_live(name)
        if champion is None and live is not None:
            self.restore_alias(name, live)
            return None
        if champion is not None and champion == live:
            # the live_version tag is anyone's with MLflow write access too: set beside the
            # alias, it skipped every check (and the next start announced that version)
            why_not = p.champion_refusal(name, champion)
            if why_not is not None:
                self.undo_alias(name, champion, self._restore_live(name, champion), why_not)
                return None
        if champion is None or champion == live:
            p.show_champion(name, champion)
            return None
        why_not = p.champion_refusal(name, champion)
        if why_not is not None:
            self.undo_alias(name, champion, live, why_not)
            return None
        try:
            shipment = p.ensure_shipped(name, champion)
        except RefusedError as exc:
            self.registry.set_version_tags(
                name, champion, {tags.GATE_REASONS: reasons_json(exc.reasons)}
            )
            self.undo_alias(name, champion, live, "it cannot ship: " + "; ".join(exc.reasons))
            return None
        vtags = self.registry.get_version(name, champion).tags
        # the bridge's own promotion whose publish was lost (audited, then a crash): known from
        # the audit log, never from tags, which anyone with MLflow write access can set (they
        # re-announced an old version as its first promoter's, audited in that name)
        lost = self._recorded(name, champion)
        by, reason = "mlflow-alias", "champion alias set in MLflow"
        update = {tags.STAGE: tags.STAGE_PRODUCTION}
        if lost is not None:
            by, reason = lost.by, lost.reason
        else:
            update |= {tags.PROMOTED_BY: by, tags.PROMOTED_REASON: reason, tags.PROMOTED_AT: now()}
        if live and live != champion:
            if not (lost is not None and tags.PREVIOUS_CHAMPION in vtags):
                update[tags.PREVIOUS_CHAMPION] = live
            self.registry.set_version_tags(name, live, {tags.STAGE: tags.STAGE_ARCHIVED})
        self.registry.set_version_tags(name, champion, update)
        event = p.announce(name, champion, shipment, live, by, reason)
        metrics.PROMOTIONS.labels("alias").inc()
        if lost is None:  # a promotion stopped before its audit entry is an alias move too
            p.record(name, "alias_accepted", by, "mlflow", live, champion, reason)
        p.show_champion(name, champion)
        return event

    def _restore_live(self, name: str, other_than: str) -> str | None:
        """Set ``eostream.live_version`` back to the version the audit log last made champion,
        other than ``other_than`` (whose live tag was written outside the bridge); returns it."""
        for entry in reversed(moves(self.promoter.audit.entries(name))):
            if entry.action in MOVES and entry.to_version and entry.to_version != other_than:
                self.registry.set_model_tag(name, tags.LIVE_VERSION, entry.to_version)
                return entry.to_version
        return None

    def _recorded(self, name: str, version: str) -> AuditEntry | None:
        """The model's newest move in the audit log when it is the promotion of ``version``."""
        entries = moves(self.promoter.audit.entries(name))
        last = entries[-1] if entries else None
        if last is not None and last.to_version == version and last.action in PROMOTING_ACTIONS:
            return last
        return None

    def restore_alias(self, name: str, live: str) -> None:
        """The champion alias was deleted in MLflow while inference still serves ``live``: set
        it back (fail closed), so the gate keeps comparing new versions with the model that
        maps the scenes rather than judging them as if there were no champion. Retiring a
        model is done by promoting another, not by deleting its alias."""
        try:
            self.registry.set_alias(name, tags.CHAMPION, live)
        except Exception as exc:  # the live version itself is gone: nothing to restore
            log.error("%s: champion alias deleted and v%s cannot be restored: %s", name, live, exc)
            return
        reason = f"champion alias deleted outside the bridge while v{live} is live: restored"
        log.error("%s: %s", name, reason)
        metrics.ALIAS_UNDONE.inc()
        self.promoter.record(name, "alias_undone", BRIDGE, "mlflow", None, live, reason)
        self.promoter.show_champion(name, live)

    def undo_alias(self, name: str, champion: str, live: str | None, why: str) -> None:
        """Move the champion alias back to the version last announced (or remove it), say why on
        the version, audit it. Nothing is shipped or announced."""
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
                self.registry.set_alias(name, tags.CHAMPION, live)
            except Exception as exc:  # the last live version is gone: leave no champion
                log.error("%s: cannot restore v%s (%s); removing the alias", name, live, exc)
                restored = None
        if restored is None:
            self.registry.delete_alias(name, tags.CHAMPION)
        reason = f"champion alias moved to v{champion} outside the bridge, undone: {why}"
        self.registry.set_version_tags(
            name,
            champion,
            {tags.ALIAS_UNDONE_REASON: reason[:5000], tags.ALIAS_UNDONE_AT: now()},
        )
        metrics.ALIAS_UNDONE.inc()
        self.promoter.record(name, "alias_undone", BRIDGE, "mlflow", champion, restored, reason)
        self.promoter.show_champion(name, restored)

    def announce_current(self, name: str) -> ModelPromoted | None:
        """Announce again the champion a previous run shipped and announced (see
        :meth:`.bridge.Bridge.announce_current_champion`)."""
        p = self.promoter
        champion, live = self._champion_and_live(name)
        if champion is None or champion != live or p.announced.get(name) == champion:
            return None
        why_not = p.champion_refusal(name, champion)
        if why_not is not None:  # both the alias and the live tag moved outside the bridge
            log.error("%s: champion v%s not announced: %s", name, champion, why_not)
            return None
        try:
            shipment = p.ensure_shipped(name, champion)
        except RefusedError as exc:
            log.error(
                "%s: champion v%s cannot ship (%s); not announced",
                name,
                champion,
                "; ".join(exc.reasons),
            )
            return None
        vtags = self.registry.get_version(name, champion).tags
        log.info("%s: re-announcing champion v%s shipped by an earlier run", name, champion)
        event = p.announce(
            name,
            champion,
            shipment,
            vtags.get(tags.PREVIOUS_CHAMPION),
            vtags.get(tags.PROMOTED_BY, BRIDGE),
            vtags.get(tags.PROMOTED_REASON, "champion of an earlier run"),
        )
        p.show_champion(name, champion)
        return event
