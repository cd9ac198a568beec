"""Evaluate a model's maps against a reference set (see :mod:`eostream.inference.reference`).

Every scene is classified by inference's own :class:`~eostream.inference.pipeline.Pipeline`
(the path ``eostream inference classify`` takes), on a scratch store. The labels are rasterised
on the grid of the classification the pipeline wrote, and NDWI = (B03 - B08) / (B03 + B08) > 0 is
computed from the scene's own bands, resampled to that grid, on the same pixels: a baseline
measured in the same run. A bad reference item (no overlap with its scene, classes the model
cannot map, a label file that is not GeoJSON) becomes one error line; the others go on.

The model is an ONNX file, or a version's MLM item: then it is loaded as inference loads that
version (its int8 file on the CPU when the item ships one that passed its check), so the figures
are those of the maps inference serves, and the report names the precision that made them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pystac
import rasterio
from pystac.extensions.label import LabelExtension
from rasterio.features import rasterize
from rasterio.warp import Resampling, reproject, transform_geom
from shapely.geometry import box, shape
from shapely.ops import unary_union

from eostream.inference import accuracy, reference
from eostream.inference.engine import NODATA, UNCERTAIN
from eostream.inference.errors import InferenceError, ReferenceSetError
from eostream.inference.fetch import local_path
from eostream.inference.model import ModelInfo, info_from_item
from eostream.inference.pipeline import Pipeline
from eostream.inference.settings import CatalogSettings, InferenceSettings, scratch_settings
from eostream.shared.modelcard import ModelCard

log = logging.getLogger(__name__)
WATER = "water"
GREEN, NIR = "B03", "B08"
_COMMON_NAMES = {GREEN: "green", NIR: "nir"}


@dataclass(frozen=True)
class Reference:
    href: str
    collection_id: str
    mapping: dict[str, list[str]]
    background: str
    items: list[pystac.Item]

    @property
    def classes(self) -> list[str]:
        """The evaluated classes: the mapped reference classes, then the background."""
        return [*self.mapping, self.background]


@dataclass
class ItemResult:
    item_id: str
    scene_id: str
    date: str
    coverage: str
    pixels: int
    model_cm: np.ndarray
    ndwi_cm: np.ndarray | None
    #: scored pixels the map left uncertain (below ``uncertain_below``, or out of the model's
    #: domain): counted as the background class, so a miss of every other class
    uncertain: int = 0
    #: NDWI > t on the same pixels for each t of :data:`accuracy.NDWI_THRESHOLDS`, from which
    #: :meth:`Report.tuned_ndwi` chooses a threshold on the other dates
    ndwi_sweep: dict[float, np.ndarray] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return self.coverage == reference.PARTIAL


@dataclass
class Report:
    """The scores of one model on a reference set. ``precision``: the file that classified
    (``int8`` when the model was named by its MLM item and inference runs its int8 file here)."""

    model: str
    model_name: str
    reference: Reference
    precision: str = "fp32"
    model_version: str | None = None
    model_run_id: str | None = None  # the MLflow run that trained it (an MLM item names it)
    #: the inference settings the maps were made with, which move the figures (stride,
    #: uncertain_below, out_of_domain_limit)
    scoring: dict[str, Any] = field(default_factory=dict)
    items: list[ItemResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.reference.classes

    def pooled(self, which: str = "model") -> np.ndarray | None:
        """The summed confusion matrix of the complete items (partial ones are left out):
        ``model``, ``ndwi`` (NDWI > 0) or ``ndwi_tuned`` (each item at the NDWI threshold tuned on
        the other complete items: :meth:`tuned_ndwi`)."""
        complete = [r for r in self.items if not r.partial]
        if which == "ndwi_tuned":
            tuned = [self.tuned_ndwi(r) for r in complete]
            cms = [t[1] if t is not None else None for t in tuned]
        else:
            cms = [r.model_cm if which == "model" else r.ndwi_cm for r in complete]
        kept = [cm for cm in cms if cm is not None]
        return np.sum(kept, axis=0) if kept and len(kept) == len(cms) else None

    def tuned_ndwi(self, item: ItemResult) -> tuple[float, np.ndarray, list[str]] | None:
        """NDWI as a baseline that learnt from labels too: its threshold chosen where the water
        IoU pooled over the OTHER complete items (dates) is highest, then scored on ``item``
        (leave one date out, as a model trained on the other dates' labels is scored). Returns
        (threshold, confusion matrix, the dates it was tuned on), or None with no other
        complete item."""
        day = item.date or item.item_id  # leave its date out, whichever items hold it
        others = [
            r for r in self.items if (r.date or r.item_id) != day and not r.partial and r.ndwi_sweep
        ]
        if not item.ndwi_sweep or not others or WATER not in self.classes:
            return None
        threshold = accuracy.best_threshold(
            [r.ndwi_sweep for r in others], self.classes.index(WATER)
        )
        if threshold is None:
            return None
        return threshold, item.ndwi_sweep[threshold], [r.date or r.item_id for r in others]


def scores_for(cm: np.ndarray, classes: list[str], partial: bool) -> dict[str, dict[str, Any]]:
    """Per-class scores; for partial labels only recall is defined (precision, F1, IoU: None)."""
    out = {}
    for name, s in accuracy.scores(cm, classes).items():
        d = s.as_dict()
        if partial:
            d.update(precision=None, f1=None, iou=None)
        out[name] = d
    return out


# -- reading a reference set ----------------------------------------------------------------
def load_reference(href: str) -> Reference:
    """The label items and class mapping of a reference set: a labels collection (its
    ``collection.json`` or folder), or a catalog holding one."""
    path = Path(href)
    if path.is_dir():
        for name in ("collection.json", "catalog.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ReferenceSetError(f"{href} is a folder without a collection.json")
    try:
        root = pystac.read_file(str(path.resolve()) if local_path(str(path)) else href)
    except Exception as exc:
        raise ReferenceSetError(f"{href} is not a readable STAC collection: {exc}") from None
    if not isinstance(root, pystac.Catalog):
        raise ReferenceSetError(f"{href} is a STAC {type(root).__name__}, not a collection")
    candidates = [root, *root.get_children()] if not _mapping_of(root) else [root]
    for coll in candidates:
        mapping = _mapping_of(coll)
        if not mapping:
            continue
        items = [i for i in coll.get_items(recursive=True) if LabelExtension.has_extension(i)]
        background = str(coll.extra_fields.get(reference.BACKGROUND_FIELD, "other"))
        return Reference(href, coll.id, mapping, background, sorted(items, key=lambda i: i.id))
    raise ReferenceSetError(
        f"{href} has no class mapping ({reference.MAPPING_FIELD}: reference class -> model "
        "classes); build the reference set with `eostream maps reference build`"
    )


def _mapping_of(catalog: pystac.Catalog) -> dict[str, list[str]]:
    raw = catalog.extra_fields.get(reference.MAPPING_FIELD)
    if not isinstance(raw, dict):
        return {}
    return {str(k): [str(v)] if isinstance(v, str) else [str(x) for x in v] for k, v in raw.items()}


# -- one item --------------------------------------------------------------------------------
def check_mapping(ref: Reference, label_classes: Sequence[str], card: ModelCard) -> None:
    unmapped = [c for c in label_classes if c not in ref.mapping]
    if unmapped:
        raise ReferenceSetError(
            f"label class(es) {', '.join(map(repr, unmapped))} have no entry in the reference "
            f"set's class mapping (it maps {', '.join(ref.mapping)}); add them to "
            f"{reference.MAPPING_FIELD}"
        )
    for c in label_classes:
        missing = [m for m in model_targets(ref, c, card) if m not in card.classes]
        if missing:
            raise ReferenceSetError(
                f"the model cannot map {c!r}: it has no class {', '.join(missing)} "
                f"(model classes: {', '.join(card.classes)})"
            )


def model_targets(ref: Reference, cls: str, card: ModelCard) -> list[str]:
    """The model classes a reference class ``cls`` counts as: itself, when the model has a class
    of that name (a model trained on the reference's own classes, e.g. on the user's water
    labels), else the reference set's mapping (water -> SeaLake + River for EuroSAT)."""
    return [cls] if cls in card.classes else ref.mapping[cls]


def label_classes(item: pystac.Item) -> list[str]:
    label = LabelExtension.ext(item)
    return [str(c) for lc in (label.label_classes or []) for c in lc.classes]


def read_labels(item: pystac.Item) -> list[tuple[dict[str, Any], list[str]]]:
    asset = item.assets.get(reference.LABELS_ASSET) or next(
        (a for a in item.assets.values() if "json" in (a.media_type or "")), None
    )
    if asset is None:
        raise ReferenceSetError("the label item has no labels asset")
    href = asset.get_absolute_href() or asset.href
    try:
        text = Path(local_path(href) or href).read_text()  # a path or file:// URI
    except OSError as exc:
        raise ReferenceSetError(f"cannot read the label file {href}: {exc.strerror}") from None
    try:
        return reference.segmentation_geometries(json.loads(text))
    except ValueError as exc:
        raise ReferenceSetError(f"the label file {href} is not valid GeoJSON: {exc}") from None


def scene_href(item: pystac.Item) -> str:
    links = item.get_links("source")
    if not links:
        raise ReferenceSetError("the label item has no 'source' link to the scene it labels")
    return str(links[0].get_absolute_href())


def evaluate_item(
    pipeline: Pipeline, card: ModelCard, ref: Reference, item: pystac.Item
) -> ItemResult:
    classes = label_classes(item)
    check_mapping(ref, classes, card)
    shapes = read_labels(item)
    check_mapping(ref, sorted({c for _, cs in shapes for c in cs}), card)
    coverage = str(item.properties.get(reference.COVERAGE_FIELD, reference.COMPLETE))
    href = scene_href(item)
    scene = pystac.Item.from_file(href)
    # the area whose labels are known, in EPSG:4326 (STAC geometries and GeoJSON labels)
    polygons = unary_union([shape(g) for g, _ in shapes]) if shapes else None
    if coverage == reference.PARTIAL:
        if polygons is None:
            raise ReferenceSetError("partial labels without any polygon: nothing to score")
        area = polygons
    else:
        area = shape(item.geometry) if item.geometry else box(*scene.bbox or (0, 0, 0, 0))
    footprint = shape(scene.geometry) if scene.geometry else box(*scene.bbox or (0, 0, 0, 0))
    if not area.intersects(footprint) or area.intersection(footprint).area == 0:
        raise ReferenceSetError(
            f"the labels (bbox {_fmt_bounds(area.bounds)}) do not overlap their scene "
            f"{scene.id} (bbox {_fmt_bounds(footprint.bounds)})"
        )

    outcome = pipeline.classify_href(href, replace=True)
    cog = local_path(str(outcome.record.item["assets"]["classification"]["href"]))
    if cog is None:
        raise InferenceError("the classification was not written to a local scratch store")
    with rasterio.open(cog) as ds:
        predicted = ds.read(1)
        transform, crs, grid = ds.transform, ds.crs, ds.shape

    n = len(ref.classes)
    bg = n - 1
    index = {c: i for i, c in enumerate(ref.classes)}
    truth, in_area = rasterize_labels(shapes, _geo(area), index, bg, grid, transform, crs)
    if not in_area.any():
        raise ReferenceSetError(f"the labels do not overlap the classified pixels of {scene.id}")

    lut = np.full(256, bg, np.int16)
    for ref_class in ref.mapping:
        for t in model_targets(ref, ref_class, card):
            if t in card.classes:
                lut[card.classes.index(t)] = index[ref_class]
    valid = in_area & (predicted != NODATA)
    mapped = lut[predicted]

    ndwi_cm = None
    sweep: dict[float, np.ndarray] = {}
    if WATER in index:
        green = read_band_on_grid(scene, GREEN, grid, transform, crs)
        nir = read_band_on_grid(scene, NIR, grid, transform, crs)
        water, defined = accuracy.ndwi_water(green, nir)
        valid &= defined
        baseline = np.where(water, index[WATER], bg).astype(np.int16)
        ndwi_cm = accuracy.confusion_matrix(truth, baseline, n, valid)
        sweep = accuracy.ndwi_sweep(truth, accuracy.ndwi(green, nir), index[WATER], bg, n, valid)
    model_cm = accuracy.confusion_matrix(truth, mapped, n, valid)
    when = scene.datetime.date().isoformat() if scene.datetime else ""
    uncertain = int((valid & (predicted == UNCERTAIN)).sum())
    return ItemResult(
        item.id, scene.id, when, coverage, int(valid.sum()), model_cm, ndwi_cm, uncertain,
        ndwi_sweep=sweep,
    )  # fmt: skip


def rasterize_labels(
    shapes: Sequence[tuple[dict[str, Any], list[str]]],
    area: dict[str, Any],
    index: dict[str, int],
    background: int,
    grid: tuple[int, int],
    transform: Any,
    crs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Label shapes (EPSG:4326) on a grid: ``(truth, in_area)``. ``truth`` holds each pixel's
    class index (``index[class]``; a later shape wins; ``background`` outside every shape) and
    ``in_area`` marks the pixels whose centre is inside ``area`` (the labelled area)."""

    def burn(geoms: list[dict[str, Any]]) -> np.ndarray:
        if not geoms:
            return np.zeros(grid, np.int16)
        projected = [transform_geom("EPSG:4326", crs, g) for g in geoms]
        return np.asarray(
            rasterize(
                [(g, 1) for g in projected],
                out_shape=grid,
                transform=transform,
                fill=0,
                dtype="int16",
            )
        )

    truth = np.full(grid, background, np.int16)
    for geometry, cs in shapes:
        for c in cs:
            truth = np.where(burn([geometry]) > 0, index[c], truth).astype(np.int16)
    return truth, burn([area]) > 0


def _geo(geom: Any) -> dict[str, Any]:
    return dict(geom.__geo_interface__)


def _fmt_bounds(bounds: Sequence[float]) -> str:
    return "[" + ", ".join(f"{b:.5f}" for b in bounds) + "]"


def read_band_on_grid(
    scene: pystac.Item, band: str, grid: tuple[int, int], transform: Any, crs: Any
) -> np.ndarray:
    """One band of a scene as reflectance, resampled (bilinear) onto a grid; NaN where invalid."""
    href, index, scale, offset = _band_source(scene, band)
    out = np.full(grid, np.nan, np.float32)
    with rasterio.open(href) as ds:
        reproject(
            source=rasterio.band(ds, index),
            destination=out,
            src_nodata=ds.nodata,
            dst_transform=transform,
            dst_crs=crs,
            dst_nodata=np.nan,
            resampling=Resampling.bilinear,
        )
    return out * scale + offset


def _band_source(scene: pystac.Item, band: str) -> tuple[str, int, float, float]:
    common = _COMMON_NAMES.get(band)
    for key, asset in scene.assets.items():
        bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
        raster = asset.extra_fields.get("raster:bands") or []
        for i, b in enumerate(bands):
            name = b.get("name") if isinstance(b, dict) else None
            if name == band or (
                isinstance(b, dict) and b.get("common_name") == common and len(bands) == 1
            ):
                r = raster[i] if i < len(raster) and isinstance(raster[i], dict) else {}
                href = asset.get_absolute_href() or asset.href
                return href, i + 1, float(r.get("scale", 1.0)), float(r.get("offset", 0.0))
        if key in (band, common) and not bands:
            r = raster[0] if raster and isinstance(raster[0], dict) else {}
            href = asset.get_absolute_href() or asset.href
            return href, 1, float(r.get("scale", 1.0)), float(r.get("offset", 0.0))
    raise ReferenceSetError(f"scene {scene.id} has no {band} band for the NDWI baseline")


# -- a whole reference set -------------------------------------------------------------------
def evaluate(
    reference_href: str,
    model_uri: str,
    *,
    on_error: Callable[[str], None] | None = None,
    settings: InferenceSettings | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Report:
    """Classify every labelled scene with the model (an ONNX file, or a version's MLM item:
    :func:`read_item`) and score the maps and the NDWI baseline.

    Without ``settings`` the scene runs on scratch settings (memory bus, a temporary local store
    and results index), with ``overrides`` on top (e.g. ``uncertain_below=0``: every pixel gets
    its top class). Errors of single items are collected (and passed to ``on_error`` at once); a
    reference set or model that cannot be used at all raises.
    """
    ref = load_reference(reference_href)
    if not ref.items:
        raise ReferenceSetError(f"{reference_href} holds no label items")
    with tempfile.TemporaryDirectory(prefix="eostream-maps-") as tmp:
        s = settings or scratch_settings(Path(tmp), **(overrides or {}))
        return asyncio.run(_evaluate(ref, model_uri, s, on_error))


def scoring_of(settings: InferenceSettings) -> dict[str, Any]:
    """The settings of the maps that move the figures: the window step, the threshold under
    which a pixel is uncertain (0: every pixel gets its top class) and the out-of-domain limit
    (for a card that carries its training input's statistics)."""
    return {
        "stride": settings.stride,
        "uncertain_below": settings.uncertain_below,
        "out_of_domain_limit": settings.out_of_domain_limit,
    }


def read_item(model_uri: str, read: Callable[[str], bytes]) -> bytes | None:
    """The bytes of the version's MLM item ``evaluate`` was given, or None for an ONNX file: told
    by its name (``.json``, ``.onnx``), else by its first byte (a STAC API's item URL has no
    suffix; an ONNX file is protobuf, never a JSON object, and one named without a suffix is
    read once more to load it)."""
    path = urlparse(model_uri).path.lower()
    if path.endswith(".onnx"):
        return None
    data = read(model_uri)
    return data if path.endswith(".json") or data.lstrip()[:1] == b"{" else None


async def _evaluate(
    ref: Reference,
    model_uri: str,
    settings: InferenceSettings,
    on_error: Callable[[str], None] | None,
) -> Report:
    from eostream.inference.wiring import build_service

    # scratch results only: an evaluation never publishes (INFERENCE_CATALOG__* in the
    # environment would otherwise replace the served result item, which has the same id)
    settings = settings.model_copy(update={"catalog": CatalogSettings()})
    service = await asyncio.to_thread(build_service, settings, consume=False)
    await service.start()
    try:
        deployment = service.deployment
        mlm_item = await asyncio.to_thread(read_item, model_uri, deployment.source.read)
        if mlm_item is not None:  # what inference runs for this version: int8 where it would
            info = info_from_item(mlm_item, model_uri)
            sha256: str | None = info.sha256
        else:  # a file: named by its card and digest once loaded, as `inference classify`
            info, sha256 = ModelInfo.of_file(model_uri), None
        loaded = await asyncio.to_thread(deployment.deploy_uri, info, info.artifact_uri, sha256)
        report = Report(
            model=model_uri,
            model_name=loaded.card.name,
            reference=ref,
            precision=loaded.precision,
            model_version=info.version if mlm_item is not None else None,
            model_run_id=info.run_id,
            scoring=scoring_of(settings),
        )
        for item in ref.items:
            try:
                result = await asyncio.to_thread(
                    evaluate_item, service.pipeline, loaded.card, ref, item
                )
            except Exception as exc:  # one bad item must not end the evaluation
                line = (
                    f"{item.id}: {exc}"
                    if isinstance(exc, InferenceError)
                    else (f"{item.id}: {type(exc).__name__}: {exc}")
                )
                report.errors.append(line)
                if on_error is not None:
                    on_error(line)
                continue
            report.items.append(result)
        return report
    finally:
        await service.stop()
