"""Where the models catalogue is written: one small interface (:class:`CatalogPublisher`) and two
adapters, a STAC API with the transactions extension (:class:`StacApiPublisher`, the stack's
stac-fastapi-pgstac) and a static catalogue folder (:class:`StaticCatalogPublisher`, the
embedded mode's). They only write what :mod:`.catalog` built; :func:`build_publisher` picks one
from the settings."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pystac

from eostream.registry_bridge.settings import CatalogSettings
from eostream.shared.stac_transactions import CatalogError, StacTransactions

log = logging.getLogger(__name__)

#: link relations a publisher owns (the API and pystac write their own)
HIERARCHY = frozenset(("self", "root", "parent", "collection", "items"))


__all__ = ["CatalogError", "CatalogPublisher", "StacApiPublisher", "StaticCatalogPublisher"]


class CatalogPublisher(Protocol):
    """Somewhere the models collection and its items are written (upserts, never deletes)."""

    @property
    def where(self) -> str: ...

    def current_collection(self) -> dict[str, Any] | None:
        """The collection as published now, None when there is none yet."""
        ...

    def publish(self, collection: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> None:
        """Create or replace the collection, then create or replace each item."""


class StacApiPublisher:
    """A STAC API with the transactions extension (stac-fastapi-pgstac), written through the
    shared :class:`~eostream.shared.stac_transactions.StacTransactions` client."""

    def __init__(self, url: str, collection: str, timeout: float = 10.0) -> None:
        self.client = StacTransactions(url, timeout)
        self.url = self.client.url
        self.collection = collection

    @property
    def where(self) -> str:
        return f"{self.url}/collections/{self.collection}"

    def current_collection(self) -> dict[str, Any] | None:
        return self.client.get_collection(self.collection)

    def publish(self, collection: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> None:
        self.client.upsert_collection(collection)
        for item in items:
            self.client.upsert_item(self.collection, item)

    def close(self) -> None:
        self.client.close()


class StaticCatalogPublisher:
    """A self-contained static STAC catalogue: ``<root>/catalog.json`` holding the collection
    ``<root>/<collection>/collection.json`` and its items ``<root>/<collection>/<id>/<id>.json``
    (pystac's layout, relative links). Each publication rewrites it from the items on disk plus
    the new ones."""

    def __init__(self, root: Path, collection: str) -> None:
        self.root = Path(root)
        self.collection = collection

    @property
    def where(self) -> str:
        return str(self.root / "catalog.json")

    def _collection_file(self) -> Path:
        return self.root / self.collection / "collection.json"

    def current_collection(self) -> dict[str, Any] | None:
        path = self._collection_file()
        if not path.is_file():
            return None
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def _items_on_disk(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        folder = self.root / self.collection
        for path in sorted(folder.glob("*/*.json")) if folder.is_dir() else []:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("type") == "Feature":
                found[str(data["id"])] = data
        return found

    def publish(self, collection: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> None:
        everything = self._items_on_disk()
        everything.update({str(i["id"]): dict(i) for i in items})
        catalog = pystac.Catalog(
            id="eostream",
            title="eostream",
            description="eostream's models catalogue (embedded mode)",
        )
        coll = pystac.Collection.from_dict(
            {**collection, "links": []}, preserve_dict=False, migrate=False
        )
        catalog.add_child(coll)
        for item_id in sorted(everything):
            data = dict(everything[item_id])
            data["links"] = [x for x in data.get("links", []) if x["rel"] not in HIERARCHY]
            coll.add_item(pystac.Item.from_dict(data, preserve_dict=False))
        self.root.mkdir(parents=True, exist_ok=True)
        catalog.normalize_hrefs(str(self.root))
        catalog.save(pystac.CatalogType.SELF_CONTAINED)

    def close(self) -> None:
        return None


def build_publisher(settings: CatalogSettings) -> CatalogPublisher | None:
    """The publisher the settings name: the STAC API, else the static folder, else none."""
    if settings.stac_api_url:
        return StacApiPublisher(
            settings.stac_api_url, settings.collection, settings.timeout_seconds
        )
    if settings.static_dir is not None:
        return StaticCatalogPublisher(settings.static_dir, settings.collection)
    log.info(
        "BRIDGE_CATALOG__STAC_API_URL (and BRIDGE_CATALOG__STATIC_DIR) unset: shipped models "
        "are not published to a STAC catalogue"
    )
    return None
