"""A client of a STAC API's Transactions extension (the stack's stac-fastapi-pgstac): upsert a
collection and its items. The registry bridge publishes model items with it, inference its
result items: ``PUT`` replaces, ``POST`` creates when ``PUT`` finds nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from eostream.shared.errors import EostreamError


class CatalogError(EostreamError):
    """The catalogue refused or did not answer a write."""


class StacTransactions:
    """Upserts into one STAC API (``url``: its root, e.g. ``http://127.0.0.1:18082``)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, timeout=timeout, transport=httpx.HTTPTransport(retries=2)
        )

    @staticmethod
    def collection_path(collection: str) -> str:
        return f"/collections/{quote(collection, safe='')}"

    def get_collection(self, collection: str) -> dict[str, Any] | None:
        """The collection as published now, None when there is none yet."""
        r = self.http.get(self.collection_path(collection))
        if r.status_code == 404:
            return None
        self._check(r)
        data: dict[str, Any] = r.json()
        return data

    def upsert_collection(self, collection: Mapping[str, Any]) -> None:
        self._upsert(self.collection_path(str(collection["id"])), "/collections", collection)

    def upsert_item(self, collection: str, item: Mapping[str, Any]) -> None:
        path = self.collection_path(collection)
        body = {**item, "collection": collection}
        self._upsert(f"{path}/items/{quote(str(item['id']), safe='')}", f"{path}/items", body)

    def _upsert(self, put_path: str, post_path: str, body: Mapping[str, Any]) -> None:
        r = self.http.put(put_path, json=body)
        if r.status_code == 404:
            r = self.http.post(post_path, json=body)
            if r.status_code == 409:  # created meanwhile by another writer
                r = self.http.put(put_path, json=body)
        self._check(r)

    @staticmethod
    def _check(r: httpx.Response) -> None:
        if r.status_code == 405:
            raise CatalogError(
                f"{r.request.method} {r.request.url}: 405; is the STAC API's transactions "
                "extension on (stac-fastapi: ENABLE_TRANSACTIONS_EXTENSIONS=true)?"
            )
        if r.status_code >= 400:
            raise CatalogError(
                f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}"
            )

    def close(self) -> None:
        self.http.close()
