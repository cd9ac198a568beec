"""The gate transaction: verify a new version, evaluate it against the champion (on the EuroSAT
hold-out, and on the reference set's maps when one is configured), record the verdict, then make
it challenger and (with ``auto_promote``) champion.

Blocking and not thread-safe, like :mod:`.promotion`: the bridge runs it as one operation in one
worker thread, under its lock.
"""

from __future__ import annotations

import logging

from eostream.registry_bridge import contract, maps, metrics
from eostream.registry_bridge.contract import reasons_json
from eostream.registry_bridge.errors import NotReadyError, PromotionError, RefusedError
from eostream.registry_bridge.gatekeeper import Gatekeeper
from eostream.registry_bridge.policy import (
    Evaluation,
    Thresholds,
    Verdict,
    combine,
    judge,
    judge_map,
)
from eostream.registry_bridge.port import ModelRegistry
from eostream.registry_bridge.promotion import BRIDGE, Outcome, Promoter
from eostream.registry_bridge.verification import Verified
from eostream.shared import tags
from eostream.shared.modelcard import ModelCard

log = logging.getLogger(__name__)


class Gating:
    def __init__(
        self,
        registry: ModelRegistry,
        gate: Gatekeeper,
        promoter: Promoter,
        thresholds: Thresholds,
    ) -> None:
        self.registry = registry
        self.gate = gate
        self.promoter = promoter
        self.thresholds = thresholds

    def handle(self, name: str, version: str, auto_promote: bool) -> Outcome:
        """Gate ``name`` v``version`` unless done; promote it when it passes and
        ``auto_promote``. A version gated earlier but never promoted (a crash in between) is
        promoted now if it is still newer than the champion."""
        mv = self.promoter.version(name, version)
        if not mv.ready:
            return Outcome(name, version, "deferred", (f"status {mv.status}",))
        vtags = dict(mv.tags)
        gate = vtags.get(tags.GATE)
        if gate is not None:  # the tag alone is anyone's with MLflow write access
            tagged, gate = gate, self.promoter.verdict(mv)
            if gate != tagged and gate in (tags.GATE_PASSED, tags.GATE_FAILED, tags.GATE_REFUSED):
                # the verdict on record put back (a ``Passed`` over a recorded pass too, else
                # the reconcile loop, which queues tags the bridge never writes, would for ever)
                self.registry.set_version_tags(name, version, {tags.GATE: gate})
                log.error("%s v%s: eostream.gate set to %r outside the bridge; the audit log's "
                          "verdict %s restored", name, version, tagged[:40], gate)  # fmt: skip
        if gate in (tags.GATE_FAILED, tags.GATE_REFUSED):
            return Outcome(name, version, "skipped", (f"already {gate}",))
        if gate == tags.GATE_PASSED:
            if auto_promote and self._should_resume(name, version, vtags):
                log.info(
                    "%s v%s passed the gate earlier but was not promoted: resuming", name, version
                )
                self.promoter.promote(
                    name, version, BRIDGE, "gate passed (resumed)", "auto", via="auto"
                )
                return Outcome(name, version, "promoted", ("resumed",))
            return Outcome(name, version, "skipped", ("already passed",))

        champion_version = self._champion(name)
        champion_card: ModelCard | None = None
        try:
            verified = self.gate.verify(mv)
            if champion_version and champion_version != version:
                champion_card = self._champion_card(name, champion_version)
                self._same_classes(champion_version, champion_card, verified.card)
        except NotReadyError as exc:
            return Outcome(name, version, "deferred", (str(exc),))
        except RefusedError as exc:
            self.promoter.record_gate(mv, tags.GATE_REFUSED, exc.reasons)
            self._describe(name, version, tags.GATE_REFUSED, exc.reasons)
            self.registry.set_version_tags(
                name,
                version,
                {tags.GATE_REASONS: reasons_json(exc.reasons), tags.GATE: tags.GATE_REFUSED},
            )
            metrics.GATE_RESULTS.labels("refused").inc()
            log.warning("%s v%s refused: %s", name, version, "; ".join(exc.reasons))
            return Outcome(name, version, "refused", exc.reasons)

        candidate, run_id = self.gate.evaluate_candidate(verified)
        champion: Evaluation | None = None
        other_bands = _other_bands(champion_version, champion_card, verified.card)
        if champion_version and champion_version != version and other_bands is None:
            champion = self.gate.evaluate_champion(name, champion_version, verified.card)
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
        self.promoter.show_champion(name, champion_version)
        map_verdict, map_tags = self._map_check(verified, run_id, champion_version)
        patches = judge(candidate, champion, self.thresholds)
        if other_bands is not None:  # no patch comparison: never replaces it unasked
            kept = tuple(r for r in patches.reasons if "no champion yet" not in r)
            patches = Verdict(False, (*kept, other_bands))
        verdict = combine(patches, map_verdict)
        outcome = tags.GATE_PASSED if verdict.passed else tags.GATE_FAILED
        self._describe(name, version, outcome, verdict.reasons, champion_version)
        self.promoter.record_gate(mv, outcome, verdict.reasons)  # before the tag
        self.gate.record_verdict(
            name, version, outcome, verdict.reasons, run_id, candidate, champion_version, map_tags
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

        self.registry.set_alias(name, tags.CHALLENGER, version)
        self.registry.set_version_tags(name, version, {tags.STAGE: tags.STAGE_STAGING})
        if not auto_promote:
            self.promoter.ship(name, verified)
            return Outcome(name, version, "challenger", verdict.reasons)
        summary = "; ".join(r for r in verdict.reasons if r.startswith("PASS"))
        self.promoter.promote(
            name, version, BRIDGE, f"gate passed: {summary}"[:1000], "auto", verified, via="auto"
        )
        return Outcome(name, version, "promoted", verdict.reasons)

    def _champion(self, name: str) -> str | None:
        """The champion alias's version; where the alias was deleted in MLflow (the guard sets
        it back), the version inference serves: a missing alias is no licence to judge a new
        version as if it were the first."""
        alias = self.registry.alias_version(name, tags.CHAMPION)
        if alias is not None:
            return alias
        live = self.registry.model_tags(name).get(tags.LIVE_VERSION)
        if live is None or live not in {v.version for v in self.registry.versions(name)}:
            return None
        return live

    def _champion_card(self, name: str, champion_version: str) -> ModelCard | None:
        theirs, _ = contract.check_tags(
            dict(self.registry.get_version(name, champion_version).tags)
        )
        return theirs

    @staticmethod
    def _same_classes(champion_version: str, theirs: ModelCard | None, card: ModelCard) -> None:
        """Refuse a candidate whose class list is not the champion's: its maps would mean
        something else under the same name (a new class list is a new model name)."""
        if theirs is not None and tuple(theirs.classes) != tuple(card.classes):
            mine, champions = ", ".join(card.classes), ", ".join(theirs.classes)
            raise RefusedError(
                [
                    f"classes ({mine}) are not the champion v{champion_version}'s ({champions}): "
                    "register a new class list under another model name"
                ]
            )

    def _map_check(
        self, verified: Verified, run_id: str, champion_version: str | None
    ) -> tuple[Verdict, dict[str, str]]:
        """The map check's verdict and the version tags recording it."""
        metric = self.thresholds.map_metric
        if self.gate.reference is None:
            note = "NOTE: map check skipped: no reference set configured (BRIDGE_GATE__REFERENCE)"
            return Verdict(True, (note,)), {tags.GATE_MAP: tags.GATE_MAP_SKIPPED}
        candidate = self.gate.map_candidate(verified, run_id)
        champion = None
        if champion_version and champion_version != verified.version:
            champion = self.gate.map_champion(verified.name, champion_version)
        verdict = judge_map(candidate, champion, self.thresholds)
        figure = candidate.figure(metric)
        theirs = champion.figure(metric) if champion is not None else None
        values = {
            **maps.as_tags(candidate, self.gate.map_key(), self.gate.reference),
            tags.GATE_MAP_METRIC: metric,
            tags.GATE_MAP_FIGURE: "" if figure is None else f"{figure:.6f}",
            tags.GATE_MAP_CHAMPION_FIGURE: "" if theirs is None else f"{theirs:.6f}",
            tags.GATE_MAP: tags.GATE_PASSED if verdict.passed else tags.GATE_FAILED,
        }
        return verdict, values

    def _describe(
        self,
        name: str,
        version: str,
        outcome: str,
        reasons: tuple[str, ...],
        champion_version: str | None = None,
    ) -> None:
        """Put the verdict in the version's description (before the verdict tag, which readers
        wait for; a second gate of the same version replaces it)."""
        current = self.registry.get_version(name, version).description
        text = with_verdict(current, outcome, reasons, champion_version)
        self.registry.set_version_description(name, version, text)

    def verdict_first(self, name: str, version: str) -> str:
        """Gate a version an operator wants to promote that has no verdict yet (never promoting
        it); returns the verdict, or PromotionError when it is not ready."""
        outcome = self.handle(name, version, auto_promote=False)
        if outcome.state == "deferred":
            raise PromotionError(f"{name} v{version} is not ready: {'; '.join(outcome.reasons)}")
        return {"refused": tags.GATE_REFUSED, "failed": tags.GATE_FAILED}.get(
            outcome.state, tags.GATE_PASSED
        )

    def _should_resume(self, name: str, version: str, vtags: dict[str, str]) -> bool:
        if tags.PROMOTED_AT in vtags:
            return False
        champion = self._champion(name)  # a deleted alias: still the live version
        return champion is None or int(version) > int(champion)


def _other_bands(
    champion_version: str | None, theirs: ModelCard | None, card: ModelCard
) -> str | None:
    """Why the champion cannot be scored on the candidate's held-out patches (it reads other
    bands: an ONNX model's input has a fixed channel count), as a failing reason; None when it
    can. Such a candidate fails the gate, so it never replaces the champion unasked; an operator
    who means to move the name to the new bands promotes it with ``--force`` (audited)."""
    if champion_version is None or theirs is None or tuple(theirs.bands) == tuple(card.bands):
        return None
    return (
        f"FAIL: bands {card.band_set} ({len(card.bands)}) are not the champion "
        f"v{champion_version}'s {theirs.band_set} ({len(theirs.bands)}): their held-out "
        "accuracies cannot be compared; register it under another model name, or promote it "
        "with --force to move this name to the new bands"
    )


VERDICT_HEADING = "**Gate verdict (registry-bridge)**"
#: MLflow keeps at most 5000 characters of a version's description
DESCRIPTION_LIMIT = 5000


def with_verdict(
    description: str,
    outcome: str,
    reasons: tuple[str, ...] | list[str],
    champion_version: str | None = None,
) -> str:
    """``description`` with its gate verdict paragraph (any earlier one replaced)."""
    kept = description.split(VERDICT_HEADING, 1)[0].rstrip()
    against = f"against champion v{champion_version}" if champion_version else "no champion"
    verdict = "\n".join([f"{VERDICT_HEADING}: {outcome} ({against})", *(f"- {r}" for r in reasons)])
    room = DESCRIPTION_LIMIT - len(verdict) - 2
    if room < len(kept):
        kept = kept[: max(room - 1, 0)] + "…" if room > 1 else ""
    text = f"{kept}\n\n{verdict}" if kept else verdict
    return text[:DESCRIPTION_LIMIT]
