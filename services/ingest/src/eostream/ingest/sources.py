"""Where items come from: STAC APIs (pystac-client item search, paged) and static catalogues
(pystac's StacIO: local files or s3://; a stac-geoparquet table, read by stac-geoparquet). Both
yield pages of raw item JSON; nothing is parsed into pystac objects here, so a malformed item
reaches the validator instead of breaking the walk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote, urlparse

from pystac.stac_io import DefaultStacIO
from pystac.utils import make_absolute_href

from eostream.ingest.errors import SourceUnavailable
from eostream.ingest.mapping import self_href
from eostream.ingest.settings import StacApiSource, StaticSource, utc_text
from eostream.shared import sources_policy
from eostream.shared.errors import RetryableError, is_transient
from eostream.shared.objects import rewrite_href
from eostream.shared.sources_policy import SourcePolicy

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class RawItem:
    item: JsonDict
    href: str | None  # where a consumer can read the item; None: use its self link
    #: why the item could not be read (an unreadable or broken file of a static catalogue);
    #: ``item`` is then empty and the watcher dead-letters it with this reason and its href
    unreadable: str | None = None


class ItemSource(Protocol):
    name: str
    #: True when the source can search by time, so the watcher keeps a watermark for it.
    incremental: bool

    def pages(
        self, *, start: datetime | None, end: datetime | None
    ) -> AsyncIterator[list[RawItem]]:
        """Pages of items whose datetime is within [start, end] (None: open)."""

    async def fetch(
        self, item_id: str, *, collection: str | None = None, href: str | None = None
    ) -> RawItem | None:
        """One item by id, as the source has it now (None: not there any more). ``collection``
        and ``href`` are hints of where it was; raises SourceUnavailable when it cannot look."""


async def _iterate_in_thread(pages: Iterator[list[RawItem]]) -> AsyncIterator[list[RawItem]]:
    """Drive a blocking page iterator from a worker thread, one page at a time."""
    done = object()
    while True:
        page = await asyncio.to_thread(next, pages, done)
        if page is done:
            return
        yield page  # type: ignore[misc]


def _json_object(response: Any, source: str) -> JsonDict:
    try:
        data = response.json()
    except ValueError as exc:
        raise SourceUnavailable(f"{source}: {response.url} did not answer JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SourceUnavailable(f"{source}: {response.url} did not answer a JSON object")
    return data


def _range(start: datetime | None, end: datetime | None) -> str | None:
    if start is None and end is None:
        return None
    return f"{utc_text(start) if start else '..'}/{utc_text(end) if end else '..'}"


def page_items(page: Any, source: str, url: str) -> list[RawItem]:
    """The items of one page of a STAC API search. A feature that is not a JSON object is that
    feature's problem: marked ``unreadable`` (the watcher dead-letters it with the reason, the
    rest of the page flows); a page without a list of features is the API's."""
    features = page.get("features", []) if isinstance(page, dict) else None
    if not isinstance(features, list):
        raise SourceUnavailable(f"{source}: STAC API {url} answered a page without a features list")
    items = []
    for n, feature in enumerate(features):
        if isinstance(feature, dict):
            items.append(RawItem(feature, None))
            continue
        shown = json.dumps(feature, default=str)[:200]
        reason = f"feature {n} of a page of STAC API {url} is not a JSON object: {shown}"
        items.append(RawItem({}, None, unreadable=reason[:1000]))
    return items


class StacApiItemSource:
    incremental = True

    def __init__(self, config: StacApiSource) -> None:
        self.config = config
        self.name = config.name

    def _search(self, start: datetime | None, end: datetime | None) -> Iterator[list[RawItem]]:
        from pystac_client import Client
        from pystac_client.exceptions import APIError

        rule = self.config.filter
        try:
            client = Client.open(self.config.url, timeout=self.config.timeout_seconds)
            search = client.search(
                collections=list(rule.collections) or None,
                bbox=list(rule.bbox) if rule.bbox else None,
                intersects=rule.aoi,
                datetime=_range(start, end),
                limit=self.config.page_size,
            )
            for page in search.pages_as_dicts():
                yield page_items(page, self.name, self.config.url)
        except (APIError, OSError) as exc:
            raise SourceUnavailable(f"{self.name}: STAC API {self.config.url}: {exc}") from exc
        except Exception as exc:  # requests' errors subclass OSError; anything else is the API's
            if type(exc).__module__.startswith(("requests", "urllib3", "pystac_client")):
                raise SourceUnavailable(f"{self.name}: STAC API {self.config.url}: {exc}") from exc
            raise

    async def pages(
        self, *, start: datetime | None, end: datetime | None
    ) -> AsyncIterator[list[RawItem]]:
        async for page in _iterate_in_thread(self._search(start, end)):
            yield page

    async def fetch(
        self, item_id: str, *, collection: str | None = None, href: str | None = None
    ) -> RawItem | None:
        """GET the item from its collection; else (moved, or no collection known) search by id."""
        import httpx

        base = self.config.url.rstrip("/")
        try:
            async with httpx.AsyncClient(timeout=self.config.timeout_seconds) as client:
                if collection:
                    response = await client.get(
                        f"{base}/collections/{quote(collection, safe='')}/items/"
                        f"{quote(item_id, safe='')}"
                    )
                    if response.status_code == 200:
                        return RawItem(_json_object(response, self.name), None)
                    if response.status_code != 404:
                        raise SourceUnavailable(
                            f"{self.name}: GET {response.url}: HTTP {response.status_code}"
                        )
                response = await client.get(f"{base}/search", params={"ids": item_id})
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"{self.name}: STAC API {self.config.url}: {exc}") from exc
        if response.status_code != 200:
            raise SourceUnavailable(f"{self.name}: GET {response.url}: HTTP {response.status_code}")
        for feature in _json_object(response, self.name).get("features") or []:
            if isinstance(feature, dict) and feature.get("id") == item_id:
                return RawItem(feature, None)
        return None


class RewritingStacIO(DefaultStacIO):
    """pystac's StacIO with href prefix rewrites (read absolute-URL catalogues offline) and s3://
    read through a caller-supplied function (the shared object store's S3 client)."""

    def __init__(
        self,
        rewrites: dict[str, str],
        s3_reader: Callable[[str, str], bytes] | None = None,
        policy: SourcePolicy | None = None,
    ) -> None:
        super().__init__()
        self._rewrites = dict(rewrites)
        self._s3_reader = s3_reader
        self._policy = policy

    def rewrite(self, href: str) -> str:
        return rewrite_href(href, self._rewrites)

    def read_text_from_href(self, href: str) -> str:
        href = self.rewrite(href)
        if self._policy is not None:  # raises SourceNotAllowedError (a ValueError)
            sources_policy.check(href, self._policy)
        parsed = urlparse(href)
        if parsed.scheme == "s3":
            if self._s3_reader is None:
                raise SourceUnavailable(f"{href}: s3:// catalogues need INGEST_S3__* settings")
            return self._s3_reader(parsed.netloc, parsed.path.lstrip("/")).decode("utf-8")
        return str(super().read_text_from_href(href))

    def read_bytes(self, href: str) -> bytes:
        """A file's bytes (a stac-geoparquet table), by the JSON reads' rewrites and policy."""
        href = self.rewrite(href)
        if self._policy is not None:
            sources_policy.check(href, self._policy)
        parsed = urlparse(href)
        if parsed.scheme == "s3":
            if self._s3_reader is None:
                raise SourceUnavailable(f"{href}: s3:// catalogues need INGEST_S3__* settings")
            return self._s3_reader(parsed.netloc, parsed.path.lstrip("/"))
        if parsed.scheme in ("http", "https"):
            import httpx

            try:
                response = httpx.get(href, timeout=60.0)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise OSError(f"GET {href}: {exc}") from exc
            return response.content
        with open(parsed.path if parsed.scheme == "file" else href, "rb") as f:
            return f.read()


#: what names a stac-geoparquet table (one row per item) rather than STAC JSON
TABLE_SUFFIXES = (".parquet", ".geoparquet")


def is_table(href: str) -> bool:
    return urlparse(href).path.lower().endswith(TABLE_SUFFIXES)


def catalogue_policy(config: StaticSource) -> SourcePolicy:
    """Where a static catalogue's links may lead (:mod:`eostream.shared.sources_policy`): its own
    folder, bucket or host, its rewrite targets and ``allowed_roots``. Hosts the operator named
    are trusted whatever they resolve to (a STAC server on the local network); a link to any
    other host, folder or bucket is refused."""
    roots: list[str] = []
    hosts: list[str] = []
    for place in (config.href, *config.href_rewrites.values(), *config.allowed_roots):
        parsed = urlparse(place)
        if parsed.scheme in ("http", "https"):
            if parsed.hostname:
                hosts.append(parsed.hostname)
        elif parsed.scheme == "s3":
            roots.append(f"s3://{parsed.netloc}")
        else:
            path = sources_policy.local_target(os.path.abspath(parsed.path or place))
            if path is not None:
                folder = path if place.endswith("/") or os.path.isdir(path) else None
                roots.append(folder or os.path.dirname(path))
    return SourcePolicy.build(roots, hosts, networks=("0.0.0.0/0", "::/0"))


class StaticItemSource:
    incremental = False
    page_size = 100

    def __init__(
        self, config: StaticSource, s3_reader: Callable[[str, str], bytes] | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        self.policy = catalogue_policy(config)
        self._io = RewritingStacIO(config.href_rewrites, s3_reader, self.policy)

    def _read(self, href: str) -> JsonDict:
        try:
            data = json.loads(self._io.read_text(href))
        except (OSError, ValueError, KeyError, RetryableError) as exc:  # KeyError: no such object
            raise SourceUnavailable(f"{self.name}: cannot read {href}: {exc}") from exc
        if not isinstance(data, dict):
            raise SourceUnavailable(f"{self.name}: {href} is not a STAC JSON object")
        return data

    def _read_item(self, href: str) -> RawItem:
        """One item file of the catalogue; a file that cannot be read or is not a JSON object
        is that item's problem (a RawItem marked ``unreadable``), not the catalogue's: the
        others are still announced. A transient failure (a server down) still fails the poll."""
        where = self._io.rewrite(href)
        try:
            data = json.loads(self._io.read_text(href))
        except (OSError, ValueError, KeyError, RetryableError) as exc:
            if is_transient(exc):
                raise SourceUnavailable(f"{self.name}: cannot read {href}: {exc}") from exc
            reason = f"cannot read the item file {where}: {type(exc).__name__}: {exc}"
            return RawItem({}, where, unreadable=reason[:1000])
        if not isinstance(data, dict):
            return RawItem({}, where, unreadable=f"the item file {where} is not a JSON object")
        return RawItem(data, where)

    def _table(self, href: str) -> Iterator[RawItem]:
        """The rows of a stac-geoparquet table as the items they encode, a page of rows at a
        time (stac-geoparquet's own reader); each item's self link is where it is read."""
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
        from stac_geoparquet.arrow import stac_table_to_items

        try:
            table = pq.ParquetFile(pa.BufferReader(self._io.read_bytes(href)))
            batches = iter(table.iter_batches(batch_size=self.page_size))
        except (OSError, ValueError, KeyError, RetryableError, pa.ArrowException) as exc:
            raise SourceUnavailable(f"{self.name}: cannot read {href}: {exc}") from exc
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                items = list(stac_table_to_items(pa.Table.from_batches([batch])))
            except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
                raise SourceUnavailable(
                    f"{self.name}: {href} is no stac-geoparquet table eostream can read: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for item in items:
                link = self_href(item)
                yield RawItem(item, self._io.rewrite(link) if link else None)

    def _walk(self, href: str, depth: int = 0) -> Iterator[RawItem]:
        if depth > 16:
            raise SourceUnavailable(f"{self.name}: catalogue deeper than 16 levels at {href}")
        if is_table(href):
            yield from self._table(href)
            return
        data = self._read(href)
        kind = data.get("type")
        if kind == "Feature":
            yield RawItem(data, self._io.rewrite(href))
            return
        if kind == "FeatureCollection":
            for feature in data.get("features") or []:
                if isinstance(feature, dict):
                    link = self_href(feature)
                    yield RawItem(feature, self._io.rewrite(link) if link else None)
            return
        for link in data.get("links") or []:
            if not isinstance(link, dict) or link.get("rel") not in ("item", "child"):
                continue
            target = make_absolute_href(str(link["href"]), href)
            if link["rel"] == "item":
                yield self._read_item(target)
                continue
            try:
                sources_policy.check(self._io.rewrite(target), self.policy)
            except sources_policy.SourceNotAllowedError as exc:  # this link's problem alone
                where = self._io.rewrite(target)
                reason = f"the child link {where} is not allowed: {exc.reason}"
                yield RawItem({}, where, unreadable=reason[:1000])
                continue
            yield from self._walk(target, depth + 1)

    def _pages(self) -> Iterator[list[RawItem]]:
        page: list[RawItem] = []
        for raw in self._walk(self.config.href):
            page.append(raw)
            if len(page) >= self.page_size:
                yield page
                page = []
        if page:
            yield page

    def _find(self, item_id: str, href: str | None) -> RawItem | None:
        if href:
            try:
                data = self._read(href)
            except SourceUnavailable:
                data = {}  # moved or gone: look for it in the catalogue
            if data.get("type") == "Feature" and data.get("id") == item_id:
                return RawItem(data, self._io.rewrite(href))
        for raw in self._walk(self.config.href):
            if raw.item.get("id") == item_id:
                return raw
        return None

    async def fetch(
        self, item_id: str, *, collection: str | None = None, href: str | None = None
    ) -> RawItem | None:
        """Read the file the item was read from; else walk the catalogue for it."""
        return await asyncio.to_thread(self._find, item_id, href)

    async def pages(
        self, *, start: datetime | None, end: datetime | None
    ) -> AsyncIterator[list[RawItem]]:
        # A static catalogue cannot search: every poll walks it whole; the seen-set dedupes and
        # the filter (dates included) is applied item by item by the watcher.
        async for page in _iterate_in_thread(self._pages()):
            yield page
