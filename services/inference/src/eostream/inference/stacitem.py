"""The result STAC item of a classified scene (pystac), linked to its scene and model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pystac

from eostream.inference.engine import NODATA
from eostream.inference.model import ModelInfo
from eostream.inference.writer import legend
from eostream.shared.modelcard import ModelCard

CLASSIFICATION_EXT = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"


def result_item_id(scene_id: str, model_name: str, version: str) -> str:
    return f"{scene_id}__{model_name}__v{version}"


def build_result_item(
    *,
    scene: dict[str, Any],
    scene_href: str,
    collection_id: str,
    info: ModelInfo,
    card: ModelCard,
    provider: str,
    hrefs: dict[str, str],
    stats: dict[str, Any],
    extra_properties: dict[str, Any],
) -> pystac.Item:
    props = scene.get("properties") or {}
    when = props.get("datetime")
    dt = datetime.fromisoformat(str(when).replace("Z", "+00:00")) if when else datetime.now(UTC)
    item = pystac.Item(
        id=result_item_id(str(scene["id"]), info.name, info.version),
        geometry=scene.get("geometry"),
        bbox=scene.get("bbox"),
        datetime=dt,
        properties={
            "eostream:scene_id": scene["id"],
            "eostream:model_name": info.name,
            "eostream:model_version": info.version,
            "eostream:model_alias": info.alias,
            "eostream:mlflow_run_id": info.run_id,
            "eostream:model_sha256": info.sha256,
            "eostream:model_bands": list(card.bands),
            "eostream:execution_provider": provider,
            "eostream:class_shares": {k: v["share"] for k, v in stats["classes"].items()},
            "eostream:class_area_km2": {k: v["area_km2"] for k, v in stats["classes"].items()},
            "processing:software": {"eostream-inference": "0.1.0"},
            "created": datetime.now(UTC).isoformat(),
            **extra_properties,
        },
        collection=collection_id,
        stac_extensions=[CLASSIFICATION_EXT],
    )
    item.add_link(
        pystac.Link(
            "derived_from", scene_href, media_type="application/geo+json", title="source scene"
        )
    )
    if info.mlm_item_href:
        item.add_link(
            pystac.Link(
                "derived_from",
                info.mlm_item_href,
                media_type="application/geo+json",
                title="model (STAC MLM item)",
            )
        )
    classes = legend(card.classes)
    item.add_asset(
        "classification",
        pystac.Asset(
            hrefs["classification"],
            media_type=pystac.MediaType.COG,
            roles=["data"],
            title="land-cover classes",
            extra_fields={
                "classification:classes": classes,
                "nodata": NODATA,
                "data_type": "uint8",
            },
        ),
    )
    if "probabilities" in hrefs:
        item.add_asset(
            "probabilities",
            pystac.Asset(
                hrefs["probabilities"],
                media_type=pystac.MediaType.COG,
                roles=["data"],
                title="class probabilities x 254",
            ),
        )
    item.add_asset(
        "quicklook",
        pystac.Asset(
            hrefs["quicklook"],
            media_type=pystac.MediaType.PNG,
            roles=["overview", "visual"],
            extra_fields={"classification:classes": classes},
        ),
    )
    item.add_asset(
        "statistics",
        pystac.Asset(
            hrefs["statistics"],
            media_type=pystac.MediaType.JSON,
            roles=["metadata"],
        ),
    )
    return item
