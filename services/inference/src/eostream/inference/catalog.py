"""Result items into a STAC API (the stack's stac-fastapi-pgstac), besides the service's own
/stac: every result the index takes is upserted, with HTTP asset hrefs of this service, into one
collection whose spatial and temporal extents and model summaries grow with it.

:class:`PublishingResults` wraps the results index: ``put`` writes the index (the source of
truth), then publishes. A STAC API that refuses or does not answer is logged and counted, never
fails the scene: the index keeps the result and the next classification of any scene
re-publishes the collection; ``eostream`` tools read the index, not the catalogue."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy.engine import Engine

from eostream.inference.results import ResultQuery, ResultRecord, ResultsStore
from eostream.inference.settings import InferenceSettings
from eostream.inference.stacitem import public_item
from eostream.shared.stac_transactions import StacTransactions

log = logging.getLogger(__name__)

STAC_VERSION = "1.1.0"
#: link relations the STAC API writes itself (and the stored item's point into the store)
HIERARCHY = frozenset(("self", "root", "parent", "collection", "items"))
SUMMARIES = ("eostream:model_name", "eostream:model_version")


def published_item(record: ResultRecord, collection: str, public_url: str) -> dict[str, Any]:
    """The item as the STAC API holds it: HTTP asset hrefs, the collection, and a link to the
    same item in the inference service's own STAC API."""
    item = public_item(record.item, public_url)
    base = public_url.rstrip("/")
    item["collection"] = collection
    item["links"] = [
        *(link for link in item.get("links", []) if link.get("rel") not in HIERARCHY),
        {
            "rel": "alternate",
            "href": f"{base}/results/{quote(record.scene_id, safe='')}/item?"
            + urlencode({"model_name": record.model_name, "model_version": record.model_version}),
            "type": "application/geo+json",
            "title": "the result in the inference service",
        },
    ]
    return item


def _interval(value: Any) -> list[str | None]:
    return list(value) if isinstance(value, list) and len(value) == 2 else [None, None]


def collection_document(
    collection: str, item: dict[str, Any], current: dict[str, Any] | None
) -> dict[str, Any]:
    """The results collection with its extents and summaries widened to hold ``item``."""
    old_extent = (current or {}).get("extent", {})
    bbox = (old_extent.get("spatial", {}).get("bbox") or [None])[0]
    new_bbox = item.get("bbox")
    if new_bbox and len(new_bbox) >= 4:
        nb = [new_bbox[0], new_bbox[1], new_bbox[-2], new_bbox[-1]]
        bbox = (
            nb
            if not bbox or len(bbox) < 4
            else [
                min(bbox[0], nb[0]),
                min(bbox[1], nb[1]),
                max(bbox[2], nb[2]),
                max(bbox[3], nb[3]),
            ]
        )
        if nb[0] > nb[2] or bbox[0] > bbox[2]:
            # across the antimeridian (west > east): min and max of such boxes hold neither
            # side; every longitude does
            bbox[0], bbox[2] = -180.0, 180.0
    start, end = _interval((old_extent.get("temporal", {}).get("interval") or [None])[0])
    when = item.get("properties", {}).get("datetime")
    if when:
        start = when if start is None or when < start else start
        end = when if end is None or when > end else end
    summaries = dict((current or {}).get("summaries") or {})
    for key in SUMMARIES:
        value = item.get("properties", {}).get(key)
        if value is not None:
            summaries[key] = sorted({*summaries.get(key, []), str(value)})
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": collection,
        "title": "eostream land-cover results",
        "description": "Land-cover classifications of Sentinel-2 scenes by eostream's models "
        "(one item per scene and model version; class COGs with category names)",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [bbox or [-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [[start, end]]},
        },
        "summaries": summaries,
        "links": [],
    }


class ResultsCatalog:
    """Publishes result items into one collection of a STAC API."""

    def __init__(self, client: StacTransactions, collection: str, public_url: str) -> None:
        self.client = client
        self.collection = collection
        self.public_url = public_url
        self._published: dict[str, Any] | None = None

    def publish(self, record: ResultRecord) -> dict[str, Any]:
        item = published_item(record, self.collection, self.public_url)
        current = self._published or self.client.get_collection(self.collection)
        wanted = collection_document(self.collection, item, current)
        if current is None or any(wanted[k] != current.get(k) for k in ("extent", "summaries")):
            self.client.upsert_collection(wanted)
        self._published = wanted
        self.client.upsert_item(self.collection, item)
        return item

    def close(self) -> None:
        self.client.close()


class PublishingResults:
    """A :class:`ResultsStore` that publishes each result it takes into a STAC API."""

    def __init__(self, inner: ResultsStore, catalog: ResultsCatalog) -> None:
        self.inner = inner
        self.catalog = catalog

    @property
    def engine(self) -> Engine:
        return self.inner.engine

    def init(self) -> None:
        self.inner.init()

    def exists(self, scene_id: str, model_name: str, model_version: str) -> bool:
        return self.inner.exists(scene_id, model_name, model_version)

    def put(self, record: ResultRecord) -> None:
        self.inner.put(record)
        try:
            self.catalog.publish(record)
        except Exception as exc:  # the index holds the result; the catalogue is a copy
            self.catalog._published = None
            log.error(
                "result %s is indexed but not published to %s: %s",
                record.id,
                self.catalog.client.url,
                exc,
            )

    def get(
        self, scene_id: str, model_version: str | None = None, model_name: str | None = None
    ) -> ResultRecord | None:
        return self.inner.get(scene_id, model_version, model_name)

    def search(self, query: ResultQuery) -> tuple[list[ResultRecord], int]:
        return self.inner.search(query)

    def record_deployment(self, **fields: Any) -> None:
        self.inner.record_deployment(**fields)

    def deployments(self, limit: int = 50, name: str | None = None) -> list[dict[str, Any]]:
        return self.inner.deployments(limit, name)

    def ping(self) -> bool:
        return self.inner.ping()

    def close(self) -> None:
        self.catalog.close()
        self.inner.close()


def with_catalog(results: ResultsStore, settings: InferenceSettings) -> ResultsStore:
    """``results`` publishing into the STAC API the settings name (unchanged without one)."""
    catalog = settings.catalog
    if not catalog.stac_api_url:
        return results
    public_url = settings.public_url or f"http://{settings.http_host}:{settings.http_port}"
    client = StacTransactions(catalog.stac_api_url, catalog.timeout_seconds)
    log.info("publishing results to %s/collections/%s", client.url, catalog.collection)
    return PublishingResults(results, ResultsCatalog(client, catalog.collection, public_url))
