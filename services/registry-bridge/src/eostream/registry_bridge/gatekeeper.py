"""The gate's checks and evaluations: verification, held-out sets, candidate and champion
scores, the recorded verdict.

Blocking (ONNX Runtime, the registry): called inside the bridge's worker-thread transactions.
Talks to the registry through its port only. Champion scores are cached per (name, version,
held-out digest), since a champion is compared with every candidate. Map figures on the
reference set (:mod:`.maps`) are kept in the version's tags under the reference set's key, so a
champion's maps are scored once, not for every candidate, even across restarts.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from eostream.registry_bridge import calibration, holdout, maps, onnx_model, quantize
from eostream.registry_bridge.contract import reasons_json
from eostream.registry_bridge.errors import RefusedError
from eostream.registry_bridge.policy import Evaluation, MapScores
from eostream.registry_bridge.port import ModelRegistry, VersionInfo
from eostream.registry_bridge.settings import BridgeSettings
from eostream.registry_bridge.shipping import Shipper
from eostream.registry_bridge.verification import Verified, verify
from eostream.shared import tags
from eostream.shared.modelcard import ModelCard

log = logging.getLogger(__name__)


class Gatekeeper:
    def __init__(self, settings: BridgeSettings, registry: ModelRegistry, shipper: Shipper) -> None:
        self.settings = settings
        self.registry = registry
        self.shipper = shipper
        self._holdouts: dict[str, holdout.Holdout] = {}
        self._calibration: dict[str, np.ndarray] = {}
        self._chip_tables: dict[str, str] = {}  # a card's dataset -> its table readable here
        self._evaluations: dict[tuple[str, str, str], Evaluation] = {}
        gate = settings.gate
        self.reference = (
            maps.ReferenceSet(
                gate.reference, gate.map_stride, gate.map_uncertain_below, settings.torch_threads
            )
            if gate.reference
            else None
        )
        self._map_key: str | None = None
        self._maps: dict[tuple[str, str, str], MapScores] = {}

    def _reference(self) -> maps.ReferenceSet:
        if self.reference is None:
            raise RuntimeError("no reference set configured (BRIDGE_GATE__REFERENCE)")
        return self.reference

    def map_key(self) -> str:
        """The reference set's key (read once: the set is a configured, fixed thing)."""
        if self._map_key is None:
            self._map_key = self._reference().key()
        return self._map_key

    def chip_table(self, card: ModelCard, run_id: str | None = None) -> str:
        """Where the chip dataset of ``card`` is readable here: the card's path (the trainer's
        disk: the embedded mode, one machine), else the copy the version's run logged
        (``tags.CHIPS_ARTIFACT_PATH``, downloaded once per process into a temporary folder)."""
        dataset = str(card.dataset)
        if dataset in self._chip_tables:
            return self._chip_tables[dataset]
        if Path(dataset).is_file() or run_id is None:
            return dataset
        dest = Path(tempfile.mkdtemp(prefix="eostream-bridge-chips-"))
        table = self.registry.download_chips(run_id, dest)
        if table is None:  # holdout.load_chips says the dataset is not readable here
            shutil.rmtree(dest, ignore_errors=True)
            return dataset
        log.info("chip dataset %s: the copy logged by run %s", dataset, run_id)
        self._chip_tables[dataset] = str(table)
        return str(table)

    def holdout_for(self, of: str | ModelCard, run_id: str | None = None) -> holdout.Holdout:
        """The held-out set of a band set (EuroSAT), or of a card: a model trained on a chip
        dataset (``card.dataset``) is scored on that dataset's test split, in its classes
        (``run_id``: the run that logged the dataset, when the card's path is not here)."""
        if isinstance(of, ModelCard) and of.dataset is not None:
            split = of.dataset_test_split or "test"
            pixels = of.task == "segmentation"  # scored pixel by pixel on the chips' masks
            key = f"chips:{of.dataset}#{split}{':pixels' if pixels else ''}"
            if key not in self._holdouts:
                table = self.chip_table(of, run_id)
                self._holdouts[key] = holdout.load_chips(table, split, masks=pixels)
            return self._holdouts[key]
        band_set = of.band_set if isinstance(of, ModelCard) else of
        if band_set not in self._holdouts:
            h = self.settings.holdout
            self._holdouts[band_set] = holdout.load(
                self.settings.data_dir, band_set, h.per_class, h.salt
            )
        return self._holdouts[band_set]

    def verify(self, mv: VersionInfo, *, wait_for_tags: bool = True) -> Verified:
        """Verify ``mv`` (see :func:`.verification.verify`). ``wait_for_tags``: a version younger
        than the registration grace period with tags missing is not ready yet (NotReadyError);
        otherwise missing tags refuse it at once."""
        s = self.settings
        return verify(
            self.registry,
            mv,
            holdout_for=self.holdout_for,
            grace_seconds=s.registration_grace_seconds if wait_for_tags else 0,
            samples=s.agreement_samples,
            atol=s.agreement_atol,
            threads=s.torch_threads,
        )

    def evaluate_candidate(self, verified: Verified) -> tuple[Evaluation, str]:
        sess = onnx_model.session(verified.onnx_bytes, self.settings.torch_threads)
        h = self.holdout_for(verified.card, verified.run_id)
        result = self.registry.evaluate(
            lambda x: onnx_model.logits(sess, x),
            h,
            experiment=self.settings.gate_experiment,
            run_name=f"gate {verified.name} v{verified.version}",
            params={
                "model_name": verified.name,
                "model_version": verified.version,
                "role": "candidate",
                "onnx_sha256": verified.sha256,
            },
            tags={
                "eostream.model_name": verified.name,
                "eostream.model_version": verified.version,
                "eostream.source_run_id": verified.run_id,
            },
        )
        self._evaluations[(verified.name, verified.version, h.digest)] = result[0]
        return result

    def champion_onnx(self, name: str, version: str) -> bytes:
        shipped = self.shipper.existing(name, version)
        if shipped is not None:
            model_key, _ = self.shipper.keys(name, version)
            return self.shipper.store.get_bytes(model_key)
        mv = self.registry.get_version(name, version)
        data = self.registry.download_onnx(mv.run_id) if mv.run_id else None
        if data is None:
            raise RefusedError([f"the champion {name} v{version} has no ONNX artifact"])
        return data

    def evaluate_champion(self, name: str, version: str, of: str | ModelCard) -> Evaluation:
        """The champion's scores on the candidate's held-out set (``of``: its band set or
        card)."""
        h = self.holdout_for(of)
        key = (name, version, h.digest)
        if key not in self._evaluations:
            sess = onnx_model.session(
                self.champion_onnx(name, version), self.settings.torch_threads
            )
            self._evaluations[key], _ = self.registry.evaluate(
                lambda x: onnx_model.logits(sess, x),
                h,
                experiment=self.settings.gate_experiment,
                run_name=f"champion {name} v{version}",
                params={"model_name": name, "model_version": version, "role": "champion"},
                tags={"eostream.model_name": name, "eostream.model_version": version},
            )
        return self._evaluations[key]

    def map_candidate(self, verified: Verified, run_id: str) -> MapScores:
        """Score the candidate's maps on the reference set and log the figures to its gate
        run (``run_id``)."""
        reference = self._reference()
        report = reference.score(verified.onnx_bytes)
        key = self.map_key()
        if report.metrics:
            self.registry.log_run_metrics(run_id, report.metrics)
        self.registry.set_run_tags(
            run_id, {tags.GATE_MAP_KEY: key, "eostream.map_reference": reference.href}
        )
        self._maps[(verified.name, verified.version, key)] = report.scores
        log.info(
            "%s v%s maps on %s: mean IoU %s, overall accuracy %s (%d items, %d errors)",
            verified.name,
            verified.version,
            reference.href,
            report.scores.mean_iou,
            report.scores.overall_accuracy,
            report.scores.items,
            len(report.scores.errors),
        )
        return report.scores

    def map_champion(self, name: str, version: str) -> MapScores | None:
        """The champion's map figures: from memory, else from its version tags when they were
        made with this reference set and settings, else scored now and written to its tags.
        None when its maps cannot be scored."""
        reference = self._reference()
        key = self.map_key()
        if (name, version, key) not in self._maps:
            found = maps.from_tags(dict(self.registry.get_version(name, version).tags), key)
            if found is None:
                log.info("scoring the champion %s v%s on %s", name, version, reference.href)
                found = reference.score(self.champion_onnx(name, version)).scores
                self.registry.set_version_tags(name, version, maps.as_tags(found, key, reference))
            self._maps[(name, version, key)] = found
        scores = self._maps[(name, version, key)]
        return scores if scores.figure(self.settings.gate.map_metric) is not None else None

    def calibration_for(
        self, band_set: str, card: ModelCard | None = None, run_id: str | None = None
    ) -> np.ndarray:
        """The int8 calibration patches of a band set (training patches, read once); for a
        chip dataset's model, chips of its train split."""
        if card is not None and card.dataset is not None:
            key = f"chips:{card.dataset}"
            if key not in self._calibration:
                chips = holdout.load_chips(self.chip_table(card, run_id), "train").images
                size = self.settings.int8.calibration_size
                self._calibration[key] = chips[:: max(1, len(chips) // size)][:size]
            return self._calibration[key]
        if band_set not in self._calibration:
            s = self.settings
            self._calibration[band_set] = calibration.load_calibration(
                s.data_dir, band_set, s.int8.calibration_size, s.holdout
            )
        return self._calibration[band_set]

    def int8_check(self, verified: Verified) -> quantize.Int8Check:
        """Quantise ``verified`` to int8 and check it against its fp32 model on the hold-out and,
        when configured, the reference set's maps (:mod:`.quantize`)."""
        band_set, threads = verified.card.band_set, self.settings.torch_threads
        reference = self.reference
        return quantize.check(
            verified.onnx_bytes,
            verified.card,
            settings=self.settings.int8,
            holdout=self.holdout_for(verified.card, verified.run_id),
            calibration=lambda: self.calibration_for(band_set, verified.card, verified.run_id),
            logits=lambda data, x: onnx_model.logits(onnx_model.session(data, threads), x),
            maps=(lambda data: reference.score(data).scores) if reference is not None else None,
            # the fp32 figures the gate recorded (memory, else the version's tags), else scored
            fp32_maps=lambda: self.map_champion(verified.name, verified.version),
            map_metric=self.settings.gate.map_metric,
            threads=threads,
        )

    def scores_of(self, name: str, version: str) -> Evaluation | None:
        """The scores this gatekeeper computed for ``name`` v``version`` (None: not evaluated by
        this run)."""
        found = [e for (n, v, _), e in self._evaluations.items() if (n, v) == (name, version)]
        return found[-1] if found else None

    def record_verdict(
        self,
        name: str,
        version: str,
        outcome: str,
        reasons: tuple[str, ...],
        run_id: str,
        candidate: Evaluation,
        champion_version: str | None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        """Write the verdict to the gate run and the version; ``extra`` tags (the map check's)
        go before the verdict tag."""
        self.registry.set_run_tags(
            run_id,
            {"eostream.gate": outcome, "eostream.champion_version": champion_version or ""},
        )
        self.registry.log_run_text(
            run_id,
            json.dumps({"outcome": outcome, "reasons": list(reasons)}, indent=2),
            "verdict.json",
        )
        # The verdict goes last: whoever sees it also sees its reasons (tags go one by one).
        self.registry.set_version_tags(
            name,
            version,
            {
                tags.GATE_REASONS: reasons_json(reasons),
                tags.GATE_EVAL_RUN: run_id,
                tags.GATE_ACCURACY: f"{candidate.accuracy:.6f}",
                **(extra or {}),
                tags.GATE: outcome,
            },
        )
