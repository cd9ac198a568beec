"""Where a classified scene's products go: its files (the class COG, the probability COG, the
quicklook, the statistics) in the object store under the result's prefix, its STAC result item
beside them, and its record in the results index; and what each map file says of itself.

The products themselves are made by :mod:`.writer` and :mod:`.mapwriter`; :mod:`.pipeline`
classifies a scene and calls :func:`store_result` last.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from eostream.inference import writer
from eostream.inference.mapwriter import MapWriter
from eostream.inference.model import LoadedModel
from eostream.inference.results import ResultRecord, ResultsStore
from eostream.inference.scene import ScenePlan
from eostream.inference.settings import InferenceSettings
from eostream.inference.stacitem import SOFTWARE_VERSION, build_result_item, result_item_id
from eostream.shared.storage import ObjectStore


def provenance_tags(scene_id: str, model: LoadedModel) -> dict[str, str]:
    """What a map file says of itself (GeoTIFF dataset tags, kept by its COG): the scene, the
    model version, the MLflow run and the file that made it, so a downloaded map still names
    them (``gdalinfo`` shows them)."""
    info = model.info
    return {
        "EOSTREAM_SCENE_ID": scene_id,
        "EOSTREAM_MODEL_NAME": info.name,
        "EOSTREAM_MODEL_VERSION": info.version,
        "EOSTREAM_MLFLOW_RUN_ID": info.run_id or "",
        "EOSTREAM_MODEL_SHA256": info.sha256,
        "EOSTREAM_MODEL_FILE_SHA256": model.file_sha256 or info.sha256,
        "EOSTREAM_MODEL_PRECISION": model.precision,
        "EOSTREAM_SOFTWARE": f"eostream-inference {SOFTWARE_VERSION}",
    }


def store_result(
    settings: InferenceSettings,
    store: ObjectStore,
    results: ResultsStore,
    item: dict[str, Any],
    item_href: str,
    model: LoadedModel,
    plan: ScenePlan,
    maps: MapWriter,
    prefix: str,
    stats: dict[str, Any],
    extra: dict[str, Any],
) -> ResultRecord:
    """Upload the products ``maps`` wrote, then the result item naming them (``item.json``), then
    index the result: the record is written last, so the index never names files not there."""
    card, info = model.card, model.info
    run = f"run {info.run_id}" if info.run_id else "no MLflow run"
    caption = f"{plan.item_id}  |  {info.label} ({run}, {model.precision})"
    hrefs = put_products(store, prefix, maps, card.classes, stats, caption)
    public = settings.public_url.rstrip("/") if settings.public_url else None
    collection = settings.collection_id
    stac = build_result_item(
        scene=item,
        scene_href=item_href,
        collection_id=collection,
        collection_href=f"{public}/stac/collections/{collection}" if public else None,
        info=info,
        card=card,
        provider=model.provider,
        precision=model.precision,
        file_sha256=model.file_sha256,
        hrefs=hrefs,
        stats=stats,
        extra_properties=extra,
    )
    stac.set_self_href(store.uri(f"{prefix}/item.json"))
    item_dict = stac.to_dict(include_self_link=True)
    store.put_bytes(f"{prefix}/item.json", json.dumps(item_dict).encode(), "application/geo+json")
    when: datetime | None = stac.datetime
    record = ResultRecord(
        id=result_item_id(plan.item_id, info.name, info.version),
        scene_id=plan.item_id,
        model_name=info.name,
        model_version=info.version,
        run_id=info.run_id,
        datetime=when,
        bbox=_bbox(item),
        prefix=prefix,
        item=item_dict,
        stats=stats,
    )
    results.put(record)
    return record


def put_products(
    store: ObjectStore,
    prefix: str,
    maps: MapWriter,
    classes: tuple[str, ...],
    stats: dict[str, Any],
    caption: str = "",
) -> dict[str, str]:
    """Upload the COGs ``maps`` wrote, the quicklook and the statistics; their hrefs by asset."""
    hrefs: dict[str, str] = {}
    if maps.classification is None:  # pragma: no cover - the pipeline always asks for it
        raise RuntimeError("the map writer wrote no classification")
    store.put_file(
        f"{prefix}/classification.tif",
        maps.classification,
        "image/tiff; application=geotiff; profile=cloud-optimized",
    )
    hrefs["classification"] = store.uri(f"{prefix}/classification.tif")
    if maps.probabilities is not None:
        store.put_file(f"{prefix}/probabilities.tif", maps.probabilities, "image/tiff")
        hrefs["probabilities"] = store.uri(f"{prefix}/probabilities.tif")
    png = writer.quicklook_png(maps.quicklook, classes, caption=caption)
    store.put_bytes(f"{prefix}/quicklook.png", png, "image/png")
    hrefs["quicklook"] = store.uri(f"{prefix}/quicklook.png")
    store.put_bytes(f"{prefix}/statistics.json", json.dumps(stats).encode(), "application/json")
    hrefs["statistics"] = store.uri(f"{prefix}/statistics.json")
    return hrefs


def _bbox(item: dict[str, Any]) -> tuple[float, float, float, float] | None:
    bbox = item.get("bbox")
    if isinstance(bbox, list | tuple) and len(bbox) >= 4:
        if len(bbox) == 6:
            return (float(bbox[0]), float(bbox[1]), float(bbox[3]), float(bbox[4]))
        return (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
    return None
