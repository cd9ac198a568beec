"""Classify a scene end to end: item -> windows -> products -> object store -> results index.

One :class:`Pipeline` serves the scenes consumer (SceneDiscovered) and the REST API (on-demand
requests). It classifies each scene with the model its :class:`LiveModel` leases it for the
whole scene (the service's :class:`~eostream.inference.deployment.ModelDeployment`); deploying
and swapping models is not its business. Its methods block; async callers run them in a thread.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eostream.inference import fetch, metrics, writer
from eostream.inference.domain import DomainCheck
from eostream.inference.engine import Run, batch_for, classify_strips, plan_for
from eostream.inference.errors import BadInputError, NoModelError
from eostream.inference.mapwriter import MapWriter
from eostream.inference.model import LoadedModel
from eostream.inference.products import provenance_tags, store_result
from eostream.inference.results import ResultRecord, ResultsStore
from eostream.inference.scene import ScenePlan, SceneReader, prepare_scene
from eostream.inference.session import release_free_memory
from eostream.inference.settings import InferenceSettings
from eostream.inference.validation import validate_item
from eostream.shared.events import SceneClassified
from eostream.shared.storage import ObjectStore

log = logging.getLogger(__name__)
#: how the result item says a model's windows label pixels (``eostream:window``)
WINDOW_LABELS = {
    "patch": "centre crop",  # one class for the window's centre stride x stride
    "pixel": "pixel",  # every pixel on its own
    "segmentation": "centre crop per pixel",  # the centre's own per-pixel classes
}
#: a patch model's windows labelling their centres from its per-pixel map output
MAP_OUTPUT_LABELS = "centre crop per pixel (map output)"
#: Called with a percentage (0..100) and a line of text while a scene is classified.
ReportProgress = Callable[[int, str], None]
#: uuid5 namespace of SceneClassified event ids
RESULT_EVENTS = uuid.UUID("5f0c3a52-6c1e-4d0e-9a57-2f3c8b1d7e41")


@dataclass(frozen=True)
class Outcome:
    record: ResultRecord
    skipped: bool
    seconds: float = 0.0
    pixels: int = 0

    def event(self, store: ObjectStore, *, recomputed: bool = False) -> SceneClassified:
        """The SceneClassified of this result. Its id is derived from (scene, model, version), so
        announcing one result again (after a crash, or for a scene found done) is a duplicate
        delivery that consumers drop on the event id, never a second classification. A result
        recomputed on purpose (``replace``) is news: it gets an id of its own."""
        item = self.record.item
        assets = item.get("assets", {})
        r = self.record
        key = f"{r.scene_id}|{r.model_name}|{r.model_version}"
        return SceneClassified(
            id=uuid.uuid4() if recomputed else uuid.uuid5(RESULT_EVENTS, key),
            item_id=self.record.scene_id,
            model_name=self.record.model_name,
            model_version=self.record.model_version,
            run_id=self.record.run_id,
            model_precision=self.record.item["properties"].get("eostream:model_precision"),
            result_item_href=store.uri(f"{self.record.prefix}/item.json"),
            cog_href=assets["classification"]["href"],
            quicklook_href=assets.get("quicklook", {}).get("href"),
            class_shares={k: v["share"] for k, v in self.record.stats["classes"].items()},
            pixels=self.pixels or int(self.record.stats["pixels"]),
            duration_seconds=self.seconds,
        )


def parse_item(data: bytes, href: str) -> dict[str, Any]:
    try:
        item = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{href} is not JSON: {exc}") from None
    except RecursionError:  # thousands of nested brackets
        raise BadInputError(f"{href} is not a STAC item: JSON nested too deeply") from None
    if not isinstance(item, dict) or "id" not in item:
        raise BadInputError(f"{href} is not a STAC item (no id)")
    return item


class LiveModel(Protocol):
    """The model to classify with: ``current`` (None before the first deployment) and a lease
    that keeps one model alive for a whole scene (a ModelDeployment or a bare ModelHolder)."""

    @property
    def current(self) -> LoadedModel | None: ...

    def lease(self) -> AbstractContextManager[LoadedModel]: ...


class Pipeline:
    def __init__(
        self,
        settings: InferenceSettings,
        store: ObjectStore,
        results: ResultsStore,
        models: LiveModel,
    ) -> None:
        self.settings = settings
        self.store = store
        self.results = results
        self.models = models
        #: called with each result written to the index, and with the result found when a
        #: scene comes again already classified (a crash may have come between writing it and
        #: its hooks), in the classification's thread: hooks are idempotent (subscriptions: a
        #: quick match and an outbox row per version of a result; delivery happens elsewhere)
        self.on_result: list[Callable[[ResultRecord], None]] = []

    # -- scenes -------------------------------------------------------------------------
    def load_item(self, href: str) -> dict[str, Any]:
        data = fetch.read_bytes(href, s3=self.settings.s3, max_bytes=self.settings.max_item_bytes)
        return parse_item(data, href)

    def classify_href(
        self,
        href: str,
        *,
        level: str | None = None,
        baseline: str | None = None,
        replace: bool = False,
        allow_coarse: bool | None = None,
        progress: ReportProgress | None = None,
    ) -> Outcome:
        if self.models.current is None:
            raise NoModelError("no model is deployed yet; promote one (ModelPromoted)")
        return self.classify_item(
            self.load_item(href),
            href,
            level=level,
            baseline=baseline,
            replace=replace,
            allow_coarse=allow_coarse,
            progress=progress,
        )

    def classify_item(
        self,
        item: dict[str, Any],
        item_href: str,
        *,
        level: str | None = None,
        baseline: str | None = None,
        replace: bool = False,
        allow_coarse: bool | None = None,
        progress: ReportProgress | None = None,
        requested: bool = False,
    ) -> Outcome:
        """Classify one item. ``allow_coarse`` overrides ``INFERENCE_ALLOW_COARSE_SCENES``;
        ``progress`` hears 10..90 % as strips of rows are classified, then 95 % while the
        products are written. ``requested``: a REST request named the item, whose sources were
        checked against ``INFERENCE_SOURCES__*``; the result says so
        (``eostream:sources_checked``), and the scene tiles check them again on every read (the
        item may have changed since). A scene announced on the bus came from ingest's configured
        sources and is read as such."""
        try:
            validate_item(item, item_href)  # before any work: no result files for a bad item
        except BadInputError:
            metrics.SCENES.labels("refused").inc()
            raise
        scene_id = str(item["id"])
        try:
            with self.models.lease() as model:
                if not replace:
                    existing = self._existing(scene_id, model)
                    if existing is not None:
                        metrics.SCENES.labels("skipped").inc()
                        log.info(
                            "%s already classified by %s; skipping", scene_id, model.info.label
                        )
                        self._run_hooks(existing)
                        return Outcome(existing, skipped=True)
                try:
                    coarse = (
                        self.settings.allow_coarse_scenes if allow_coarse is None else allow_coarse
                    )
                    return self._classify(
                        item, item_href, model, level, baseline, coarse, progress, requested
                    )
                finally:
                    release_free_memory()  # a scene's buffers are large: give them back
        except BadInputError:
            metrics.SCENES.labels("refused").inc()
            raise
        except Exception:
            metrics.SCENES.labels("failed").inc()
            raise

    def _run_hooks(self, record: ResultRecord) -> None:
        for hook in self.on_result:
            hook(record)

    def _existing(self, scene_id: str, model: LoadedModel) -> ResultRecord | None:
        """This model's own result of the scene (by name and version: versions are numbered
        per registered model, so another model's v3 is not this one's)."""
        return self.results.get(scene_id, model.info.version, model_name=model.info.name)

    def _classify(
        self,
        item: dict[str, Any],
        item_href: str,
        model: LoadedModel,
        level: str | None,
        baseline: str | None,
        allow_coarse: bool = False,
        progress: ReportProgress | None = None,
        requested: bool = False,
    ) -> Outcome:
        """Classify strip by strip into the products' files (memory bounded by a strip, not
        by the scene), then publish them."""
        with tempfile.TemporaryDirectory(prefix="eostream-inference-") as tmp:
            return self._classify_into(
                Path(tmp),
                item,
                item_href,
                model,
                level,
                baseline,
                allow_coarse,
                progress,
                requested,
            )

    def _classify_into(
        self,
        tmp: Path,
        item: dict[str, Any],
        item_href: str,
        model: LoadedModel,
        level: str | None,
        baseline: str | None,
        allow_coarse: bool,
        progress: ReportProgress | None,
        requested: bool = False,
    ) -> Outcome:
        s, card = self.settings, model.card
        started = time.perf_counter()
        plan = prepare_scene(
            item,
            item_href,
            card,
            policy=s.level_mismatch,
            href_rewrites=s.asset_href_rewrites,
            b10_fill=s.b10_fill_reflectance,
            event_level=level,
            event_baseline=baseline,
        )
        with SceneReader(
            plan,
            card,
            fetch.gdal_env(s.s3, s.gdal_cache_mb),
            max_pixels=s.max_scene_pixels,
            mask_clouds=s.mask_clouds,
            allow_coarse=allow_coarse,
        ) as reader:
            windows = plan_for(card, reader.height, reader.width, s.stride)
            maps = MapWriter(
                (reader.height, reader.width),
                reader.transform,
                reader.crs,
                card.classes,
                classification=tmp / "classification.tif",
                probabilities=tmp / "probabilities.tif" if s.write_probabilities else None,
                tags=provenance_tags(plan.item_id, model),
            )
            with maps:
                result = classify_strips(
                    reader,
                    model,
                    windows,
                    maps,
                    batch_size=batch_for(card, s.batch_size, s.pixel_batch_size, model.provider),
                    rows_per_strip=s.rows_per_strip,
                    probabilities=s.write_probabilities,
                    uncertain_below=s.uncertain_below,
                    domain=(
                        DomainCheck(card.input_reference, s.out_of_domain_limit)
                        if card.input_reference is not None
                        else None
                    ),
                    on_progress=_reporter(progress),
                )
                if progress is not None:
                    progress(95, "writing the map (COG, overviews, quicklook)")
                maps.finish()
            pixel_km2 = reader.bounds_area_km2()
            scale: dict[str, Any] = {"gsd": reader.gsd, "eostream:model_gsd": card.gsd_m}
            if reader.resampled:
                scale["eostream:resampled_from_gsd"] = reader.source_gsd
            if reader.coarse:
                scale["eostream:coarse_scene"] = True
        stats = writer.statistics_of_counts(maps.counts, result.pixels, card.classes, pixel_km2)
        confidence = result.confidence.properties() if result.confidence else {}
        if confidence:
            stats["mean_confidence"] = confidence["eostream:mean_confidence"]
            stats["uncertain"]["below"] = confidence["eostream:uncertain_below"]
            stats["out_of_domain"] = confidence["eostream:out_of_domain"]
        info = model.info
        prefix = f"{s.results_prefix}/{plan.item_id}/{info.name}/v{info.version}"
        extra = plan.decision.properties() | {
            "eostream:sources_checked": requested,
            "eostream:radiometry": list(plan.notes),
            "eostream:window": {
                "patch": windows.patch,
                "stride": windows.stride,
                "padding": "reflect",
                "labels": (
                    MAP_OUTPUT_LABELS
                    if model.map_block_for(windows.stride) and card.task == "patch"
                    else WINDOW_LABELS[card.task]
                ),
            },
            "eostream:pixels": result.pixels,
            "eostream:masked_pixels": stats["masked_pixels"],
            "eostream:duration_seconds": round(result.seconds, 3),
            "eostream:processing_baseline": plan.baseline,
            **scale,
            **confidence,
        }
        rollback = not self.results.exists(plan.item_id, info.name, info.version)
        try:
            return self._publish(
                item, item_href, model, plan, result, maps, prefix, stats, extra, started
            )
        except BaseException:
            # no orphans: what this attempt wrote goes (a replaced result keeps its files, which
            # its index record still names)
            if rollback:
                writer.remove_products(self.store, prefix)
            raise

    def _publish(
        self,
        item: dict[str, Any],
        item_href: str,
        model: LoadedModel,
        plan: ScenePlan,
        result: Run,
        maps: MapWriter,
        prefix: str,
        stats: dict[str, Any],
        extra: dict[str, Any],
        started: float,
    ) -> Outcome:
        info = model.info
        record = store_result(
            self.settings, self.store, self.results, item, item_href, model, plan, maps,
            prefix, stats, extra,
        )  # fmt: skip
        self._run_hooks(record)
        seconds = time.perf_counter() - started
        metrics.SCENES.labels("classified").inc()
        metrics.PIXELS.inc(result.pixels)
        metrics.PIXELS_PER_SECOND.set(result.pixels / max(result.seconds, 1e-9))
        metrics.SCENE_DURATION.observe(seconds)
        metrics.record_map(
            info.name,
            info.version,
            plan.decision.scene_level,
            stats,
            mean_confidence=extra.get("eostream:mean_confidence"),
            uncertain_share=extra.get("eostream:uncertain_share"),
        )
        log.info(
            "classified %s with %s: %dx%d px, %d windows in %.2fs (%.0f px/s, read wait %.2fs)",
            plan.item_id,
            info.label,
            result.width,
            result.height,
            result.windows,
            result.seconds,
            result.pixels / max(result.seconds, 1e-9),
            result.read_wait_seconds,
        )
        return Outcome(record, skipped=False, seconds=seconds, pixels=result.pixels)


def _reporter(progress: ReportProgress | None) -> Callable[[int, int, float], None] | None:
    """Strips done -> 10..90 % of a job (reading the item and writing the map are the rest)."""
    if progress is None:
        return None
    report = progress

    def on_strip(rows: int, total: int, windows_per_s: float) -> None:
        report(
            10 + 80 * rows // max(total, 1),
            f"classified {rows}/{total} rows ({windows_per_s:.0f} windows/s)",
        )

    return on_strip
