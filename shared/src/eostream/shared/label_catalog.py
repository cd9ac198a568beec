"""Where label items live: one port, :class:`LabelCatalog`, two adapters.

- :class:`StacApiLabelCatalog`: the stack's STAC API (stac-fastapi-pgstac). Writes go through
  the Transactions extension (:mod:`eostream.shared.stac_transactions`), searches through
  pystac-client: by collection, bbox, datetime, task and class (a CQL2 ``a_contains`` on the
  flat ``eostream:label_classes`` array).
- :class:`StaticLabelCatalog`: the embedded mode's self-contained static catalogue under the
  home folder (``<home>/labels/catalog.json``, one folder per collection), read directly with
  pystac and filtered with :func:`item_matches`.

Both grow the collection's extent and summaries on each import (:func:`grow_collection`,
pure); :func:`item_matches` is what a STAC API search answers, for the static catalogue;
:func:`items_digest` is a collection's state, as ingest announces it and the trainer checks it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pystac
from shapely.geometry import box, shape

from eostream.shared.labels import CLASSES_FIELD, DEFAULT_COLLECTION, LABEL_SCHEMA, LabelError
from eostream.shared.stac_transactions import StacTransactions

HIERARCHY = ("root", "parent", "collection", "self", "child", "item")

#: links that say what an item labels (the rest point at the catalogue's own layout)
KEPT_LINKS = ("source",)
#: a search for every item of a label collection (what :func:`items_digest` covers)
ALL_ITEMS = 100_000


def items_digest(items: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 of the items' content that matters to training, independent of their order.

    Ingest announces a label collection with the digest of its items; the trainer computes it
    again before it trains, so what it trains (and names after the digest) is what it read.
    """
    rows = []
    for item in items:
        # fields of another shape count as absent: a digest never raises on a label item
        listed, named = item.get("links"), item.get("assets")
        links = sorted(
            str(link.get("href"))
            for link in (listed if isinstance(listed, list) else [])
            if isinstance(link, Mapping) and isinstance(link.get("rel"), str)
            and link["rel"] in KEPT_LINKS
        )  # fmt: skip
        assets = {
            str(k): str(v.get("href"))
            for k, v in (named if isinstance(named, Mapping) else {}).items()
            if isinstance(v, Mapping)
        }
        rows.append(
            json.dumps(
                [item.get("id"), item.get("geometry"), item.get("properties"), assets, links],
                sort_keys=True,
                default=str,
            )
        )
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


@dataclass(frozen=True)
class LabelQuery:
    collection: str
    bbox: Sequence[float] | None = None
    classes: Sequence[str] = ()
    tasks: Sequence[str] = ()
    interval: tuple[datetime | None, datetime | None] | None = None
    limit: int = 1000


class LabelCatalog(Protocol):
    @property
    def where(self) -> str: ...

    def add(self, collection: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Upsert ``items`` into ``collection`` (created or grown); returns the collection."""

    def search(self, query: LabelQuery) -> list[dict[str, Any]]: ...

    def collections(self) -> list[dict[str, Any]]:
        """The label collections (those that declare the label extension)."""

    def href(self, collection: str) -> str:
        """Where a reader finds ``collection`` (a collection.json path, or its API URL)."""

    def close(self) -> None: ...


def _is_label_collection(c: dict[str, Any]) -> bool:
    return any("/label/" in str(e) for e in c.get("stac_extensions", []))


def grow_collection(
    current: Mapping[str, Any] | None,
    items: Sequence[Mapping[str, Any]],
    collection_id: str = DEFAULT_COLLECTION,
    description: str = "Labels brought by users (STAC label extension), one item per scene",
) -> dict[str, Any]:
    """The label collection covering ``current`` (None: a new one) and ``items``."""
    boxes = [list(i["bbox"]) for i in items]
    times: list[str] = []
    for i in items:
        p = i["properties"]
        times += [
            t for t in (p.get("datetime"), p.get("start_datetime"), p.get("end_datetime")) if t
        ]
    summaries: dict[str, Any] = {}
    if current:
        boxes += [list(b) for b in current["extent"]["spatial"]["bbox"][:1]]
        times += [t for t in current["extent"]["temporal"]["interval"][0] if t]
        summaries = dict(current.get("summaries") or {})
    if not boxes or not times:
        raise LabelError(f"collection {collection_id}: nothing to describe (no items)")
    named: dict[str | None, set[str]] = {}
    for entry in summaries.get("label:classes", []):
        named.setdefault(entry.get("name"), set()).update(entry.get("classes", []))
    flat = set(summaries.get(CLASSES_FIELD, []))
    tasks, types = set(summaries.get("label:tasks", [])), set(summaries.get("label:type", []))
    for i in items:
        p = i["properties"]
        for entry in p.get("label:classes", []):
            named.setdefault(entry.get("name"), set()).update(entry.get("classes", []))
        flat.update(p.get(CLASSES_FIELD, []))
        tasks.update(p.get("label:tasks", []))
        types.add(p["label:type"])
    parsed = sorted(pystac.utils.str_to_datetime(t) for t in times)
    bbox = [
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    ]
    coll = pystac.Collection(
        id=collection_id,
        description=str((current or {}).get("description") or description),
        title=(current or {}).get("title") or "Labels",
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[parsed[0], parsed[-1]]])
        ),
        license=str((current or {}).get("license") or "other"),
        stac_extensions=[LABEL_SCHEMA],
    )
    coll.summaries.add(
        "label:classes",
        [{"name": k, "classes": sorted(v)} for k, v in sorted(named.items(), key=_key)],
    )
    coll.summaries.add(CLASSES_FIELD, sorted(flat))
    coll.summaries.add("label:tasks", sorted(tasks))
    coll.summaries.add("label:type", sorted(types))
    return coll.to_dict(include_self_link=False, transform_hrefs=False)


def item_matches(
    item: Mapping[str, Any],
    *,
    bbox: Sequence[float] | None = None,
    classes: Sequence[str] = (),
    tasks: Sequence[str] = (),
    interval: tuple[datetime | None, datetime | None] | None = None,
) -> bool:
    """Whether a label item matches a search (what a STAC API answers, for a static catalogue):
    its geometry meets ``bbox``, it has every class in ``classes`` and every task in ``tasks``,
    its time meets ``interval`` (open ends: None)."""
    props = item.get("properties") or {}
    if bbox is not None and not shape(item["geometry"]).intersects(box(*bbox)):
        return False
    if any(c not in props.get(CLASSES_FIELD, []) for c in classes):
        return False
    if any(t not in props.get("label:tasks", []) for t in tasks):
        return False
    if interval is not None:
        start = str(props.get("start_datetime") or props.get("datetime"))
        end = str(props.get("end_datetime") or props.get("datetime"))
        lo, hi = pystac.utils.str_to_datetime(start), pystac.utils.str_to_datetime(end)
        if (interval[0] and hi < interval[0]) or (interval[1] and lo > interval[1]):
            return False
    return True


def _key(kv: tuple[str | None, set[str]]) -> str:
    return kv[0] or ""


class StacApiLabelCatalog:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.tx = StacTransactions(self.url)

    @property
    def where(self) -> str:
        return self.url

    def href(self, collection: str) -> str:
        return f"{self.url}/collections/{collection}"

    def add(self, collection: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        coll = grow_collection(self.tx.get_collection(collection), items, collection)
        self.tx.upsert_collection(coll)
        for item in items:
            self.tx.upsert_item(collection, item)
        return coll

    def search(self, query: LabelQuery) -> list[dict[str, Any]]:
        from pystac_client import Client

        args: list[dict[str, Any]] = [
            {"op": "a_contains", "args": [{"property": CLASSES_FIELD}, [c]]} for c in query.classes
        ] + [{"op": "a_contains", "args": [{"property": "label:tasks"}, [t]]} for t in query.tasks]
        filt = None
        if args:
            filt = args[0] if len(args) == 1 else {"op": "and", "args": args}
        dt = None
        if query.interval is not None:
            dt = "/".join(t.isoformat() if t else ".." for t in query.interval)
        search = Client.open(self.url).search(
            collections=[query.collection],
            bbox=list(query.bbox) if query.bbox is not None else None,
            datetime=dt,
            filter=filt,
            filter_lang="cql2-json" if filt else None,
            max_items=query.limit,
        )
        return [dict(i) for i in search.items_as_dicts()]

    def collections(self) -> list[dict[str, Any]]:
        from pystac_client import Client

        found = (c.to_dict() for c in Client.open(self.url).get_collections())
        return [c for c in found if _is_label_collection(c)]

    def close(self) -> None:
        self.tx.close()


def _absolute(path: Path) -> dict[str, Any]:
    """The item read from ``path`` with its relative hrefs (the source link, the labels asset:
    a self-contained catalogue writes them relative) made absolute again."""
    item = _absolute_hrefs(pystac.Item.from_file(str(path)))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def _absolute_hrefs(item: pystac.Item) -> pystac.Item:
    for link in item.links:
        if link.rel not in HIERARCHY:
            link.target = link.get_absolute_href() or link.href
    item.make_asset_hrefs_absolute()
    return item


class StaticLabelCatalog:
    """``<root>/catalog.json``, ``<root>/<collection>/collection.json``,
    ``<root>/<collection>/<id>/<id>.json`` (pystac's self-contained layout)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def where(self) -> str:
        return str(self.root / "catalog.json")

    def href(self, collection: str) -> str:
        return str((self.root / collection / "collection.json").resolve())

    def _items(self, collection: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        folder = self.root / collection
        for path in sorted(folder.glob("*/*.json")) if folder.is_dir() else []:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("type") == "Feature":
                found[str(data["id"])] = _absolute(path)
        return found

    def _collections(self) -> dict[str, dict[str, Any]]:
        return {
            p.parent.name: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(self.root.glob("*/collection.json"))
        }

    def add(self, collection: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        existing = self._collections()
        coll = grow_collection(existing.get(collection), items, collection)
        catalog = pystac.Catalog(
            id="eostream-labels",
            title="eostream labels",
            description="Label collections (STAC label extension), embedded mode",
        )
        for cid in sorted(set(existing) | {collection}):
            data = coll if cid == collection else existing[cid]
            child = pystac.Collection.from_dict(
                {**data, "links": []}, preserve_dict=False, migrate=False
            )
            catalog.add_child(child)
            everything = self._items(cid)
            if cid == collection:
                everything.update({str(i["id"]): dict(i) for i in items})
            for item_id in sorted(everything):
                d = dict(everything[item_id])
                d["links"] = [x for x in d.get("links", []) if x["rel"] not in HIERARCHY]
                child.add_item(pystac.Item.from_dict(d, preserve_dict=False))
        self.root.mkdir(parents=True, exist_ok=True)
        catalog.normalize_hrefs(str(self.root))
        catalog.save(pystac.CatalogType.SELF_CONTAINED)
        return coll

    def search(self, query: LabelQuery) -> list[dict[str, Any]]:
        if not (self.root / "catalog.json").is_file():
            return []
        catalog = pystac.Catalog.from_file(str(self.root / "catalog.json"))
        child = catalog.get_child(query.collection)
        if child is None:
            return []
        found = []
        for item in child.get_items():
            d = _absolute_hrefs(item).to_dict(include_self_link=False, transform_hrefs=False)
            if item_matches(
                d,
                bbox=query.bbox,
                classes=query.classes,
                tasks=query.tasks,
                interval=query.interval,
            ):
                found.append(d)
            if len(found) >= query.limit:
                break
        return found

    def collections(self) -> list[dict[str, Any]]:
        return [c for c in self._collections().values() if _is_label_collection(c)]

    def close(self) -> None:
        return None
