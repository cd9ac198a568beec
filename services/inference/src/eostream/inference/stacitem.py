"""The result STAC item of a classified scene (pystac), linked to its scene and model."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import pystac

from eostream.inference.engine import NODATA
from eostream.inference.model import ModelInfo
from eostream.inference.writer import legend
from eostream.shared.modelcard import ModelCard

CLASSIFICATION_EXT = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
ALTERNATE_EXT = "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json"
PROCESSING_EXT = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
#: flat per-class share properties (``eostream:share:Forest``) a CQL2 filter can compare
SHARE_PREFIX = "eostream:share:"
#: the name of the object-store href kept beside an asset's HTTP href (alternate-assets)
STORAGE_ALTERNATE = "storage"
#: the version of the software that made a result (``processing:software``)
SOFTWARE_VERSION = metadata.version("eostream-inference")
#: the title of a result item's ``derived_from`` link to the model's MLM item
MODEL_LINK_TITLE = "model (STAC MLM item)"


def scene_properties(props: dict[str, Any]) -> dict[str, Any]:
    """The properties of the source scene a result item repeats (queryable: the scene's cloud
    cover), where they are what STAC says (``eo:cloud_cover``:
    a number in 0..100); a result is still made of a scene whose provider wrote one otherwise,
    without it (a string among numbers would break every search sorted by it)."""
    cover = props.get("eo:cloud_cover")
    if isinstance(cover, int | float) and not isinstance(cover, bool):
        if math.isfinite(cover) and 0 <= cover <= 100:
            return {"eo:cloud_cover": cover}
    return {}


def result_item_id(scene_id: str, model_name: str, version: str) -> str:
    return f"{scene_id}__{model_name}__v{version}"


def link_uri(href: str) -> str:
    """``href`` as a link may carry it: a local path as a ``file://`` URI (a bare path in a
    link is read relative to the item's own href, and led clients nowhere); URIs as they are."""
    if not href or len(urlparse(href).scheme) > 1:  # a URI (file://, s3://, models:/...)
        return href
    return Path(href).absolute().as_uri()


def build_result_item(
    *,
    scene: dict[str, Any],
    scene_href: str,
    collection_id: str,
    collection_href: str | None = None,
    info: ModelInfo,
    card: ModelCard,
    provider: str,
    precision: str = "fp32",
    file_sha256: str = "",
    hrefs: dict[str, str],
    stats: dict[str, Any],
    extra_properties: dict[str, Any],
) -> pystac.Item:
    """The result item. ``collection_href``: where its collection is served (the API's
    ``/stac/collections/<id>`` at its public URL); without one the item names no collection (a
    ``collection`` field needs a link to it, STAC 1.1), and the STAC answers add both."""
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
            "eostream:model_file_sha256": file_sha256 or info.sha256,  # the int8 file's if int8
            "eostream:model_bands": list(card.bands),
            "eostream:model_library": card.library,
            "eostream:model_task": card.task,
            "eostream:execution_provider": provider,
            "eostream:model_precision": precision,  # fp32, or int8 (the MLM item's model_int8)
            "eostream:class_shares": {k: v["share"] for k, v in stats["classes"].items()},
            "eostream:class_area_km2": {k: v["area_km2"] for k, v in stats["classes"].items()},
            **scene_properties(props),
            "processing:software": {"eostream-inference": SOFTWARE_VERSION},
            "created": datetime.now(UTC).isoformat(),
            **extra_properties,
        },
        collection=collection_id if collection_href else None,
        stac_extensions=[CLASSIFICATION_EXT, PROCESSING_EXT],
    )
    if collection_href:
        item.add_link(pystac.Link("collection", collection_href, media_type="application/json"))
    item.add_link(
        pystac.Link(
            "derived_from",
            link_uri(scene_href),
            media_type="application/geo+json",
            title="source scene",
        )
    )
    if info.mlm_item_href:
        item.add_link(
            pystac.Link(
                "derived_from",
                link_uri(info.mlm_item_href),
                media_type="application/geo+json",
                title=MODEL_LINK_TITLE,
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


def file_url(
    base_url: str, scene_id: str, model_name: str | None, model_version: str, name: str
) -> str:
    """The HTTP URL at which this service serves one product file of a result (Range
    requests; ``<name>.aux.xml`` beside a COG holds its category names for GDAL and QGIS):
    ``/results/{scene}/files/{model_name}/{version}/{name}``. The model is a path segment, not
    a query: version numbers are per registered model, and GDAL finds a sidecar by appending
    ``.aux.xml`` to the URL, which a query string would break. Without a model name (an item
    that never had one) the older ``/results/{scene}/files/{version}/{name}``: the scene's
    newest result of that version."""
    scene, version = quote(scene_id, safe=""), quote(model_version, safe="")
    model = f"{quote(model_name, safe='')}/" if model_name else ""
    return f"{base_url.rstrip('/')}/results/{scene}/files/{model}{version}/{quote(name, safe='')}"


def public_item(item: dict[str, Any], base_url: str) -> dict[str, Any]:
    """A stored result item as a STAC API serves it: every asset's href an HTTP URL of this
    service (``base_url``: the public URL setting, or the request's), the object-store href
    kept as the asset's ``storage`` alternate; one flat ``eostream:share:<class>`` number per
    class share, so CQL2 filters compare them. The stored item is not changed."""
    out = dict(item)
    props = dict(out.get("properties") or {})
    shares = props.get("eostream:class_shares")
    if isinstance(shares, dict):
        props.update({f"{SHARE_PREFIX}{k}": v for k, v in shares.items()})
    out["properties"] = props
    scene, version = props.get("eostream:scene_id"), props.get("eostream:model_version")
    model = props.get("eostream:model_name")
    assets = out.get("assets")
    if not isinstance(assets, dict) or scene is None or version is None:
        return out
    public: dict[str, Any] = {}
    for key, asset in assets.items():
        href = str(asset.get("href", ""))
        if href.startswith(("http://", "https://")) or not href:
            public[key] = asset
            continue
        name = href.rstrip("/").rsplit("/", 1)[-1]
        public[key] = {
            **asset,
            "href": file_url(
                base_url, str(scene), str(model) if model else None, str(version), name
            ),
            "alternate": {STORAGE_ALTERNATE: {"href": href, "title": "object store"}},
        }
    out["assets"] = public
    extensions = list(out.get("stac_extensions") or [])
    if ALTERNATE_EXT not in extensions:
        out["stac_extensions"] = [*extensions, ALTERNATE_EXT]
    return out
