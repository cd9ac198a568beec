"""A label collection served by a STAC API, copied into a static catalogue the chip cutter reads.

On the stack, ``eostream labels import --stac-api`` puts label items into the STAC API
(stac-fastapi-pgstac) and their labels (GeoJSON or a class mask) into the object store
(``s3://``); ingest announces the collection as ``<root>/collections/<id>``. The chip cutter
(:mod:`eostream.inference.chips`) reads static catalogues, so the trainer first copies the
collection: its items, each label asset read with the trainer's S3 settings into a file beside
the item, and each labelled scene's item (``source`` link) when it lives in the object store (its
raster assets stay where they are). The copy is written once per digest of the items it holds.

What the copy trusts: nothing the collection says names a file here. An item id must be a safe
id (the labels' own rule, :func:`eostream.shared.labels._check_id`: letters, digits, ``.``,
``_`` and ``-``, starting with a letter or digit), since it names the item's folder and file; a
label asset must be an ``s3://``, ``http://`` or ``https://`` URI (a local path or ``file://``
would let whoever writes to the STAC API read the trainer's own files into the copy: put the
labels in the object store, ``TRAINER_STORE=s3``). Either refuses the whole collection
(DatasetError: the DatasetUpdated or TrainingRequested that named it is dead-lettered with the
reason) before anything is written. Every file is written only inside the copy's folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from eostream.shared.errors import EostreamError, RetryableError
from eostream.shared.label_catalog import items_digest
from eostream.shared.labels import _ID as SAFE_ID
from eostream.shared.objects import local_path, read_bytes
from eostream.shared.settings import S3Settings
from eostream.trainer.errors import DatasetError

log = logging.getLogger(__name__)

MAX_ITEMS = 10_000
MAX_LABEL_BYTES = 200_000_000
MAX_ITEM_BYTES = 10_000_000
HIERARCHY = {"self", "root", "parent", "collection", "item", "child", "items"}
#: the schemes a label asset of a STAC API collection may name (never a local file)
LABEL_SCHEMES = ("s3", "http", "https")


def collection_url(href: str) -> tuple[str, str] | None:
    """``(STAC API root, collection id)`` of an ``http(s)://.../collections/<id>`` href."""
    parsed = urlparse(href)
    if parsed.scheme not in ("http", "https"):
        return None
    root, sep, rest = href.rstrip("/").rpartition("/collections/")
    if not sep or not rest or "/" in rest:
        return None
    return root, rest


def digest(href: str) -> str:
    """The digest of the STAC API collection ``href``'s items as they are now (what ingest
    announces: :func:`eostream.shared.label_catalog.items_digest`)."""
    with _reading(href):
        _, _, items = _read(href)
    return items_digest(items)


def materialize(href: str, out: Path, s3: S3Settings | None, expected: str | None = None) -> Path:
    """Copy the STAC API collection ``href`` into ``out``; returns its ``collection.json``.

    ``expected``: the items' digest the copy must have. Labels changed since it was computed are
    not copied under its name: a RetryableError, and the next try reads them again.
    """
    target = out / "collection.json"
    if target.is_file():
        return target
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with _reading(href):
            root, collection, items = _read(href)
            now = items_digest(items)  # before _copy_item rewrites the asset hrefs
            if expected is not None and now != expected:
                raise RetryableError(
                    f"{href}: the labels changed while they were read (digest {now[:16]}, "
                    f"not {expected[:16]}); read again"
                )
            _check_items(href, items)
            partial.mkdir(parents=True)
            links = [lk for lk in collection.get("links", []) if lk.get("rel") not in HIERARCHY]
            for item in items:
                links.append({"rel": "item", "href": f"./{item['id']}/{item['id']}.json"})
                _copy_item(dict(item), _inside(partial / item["id"], partial), s3, root)
            collection["links"] = [*links, {"rel": "root", "href": "./collection.json"}]
            (partial / "collection.json").write_text(json.dumps(collection, indent=1))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    partial.replace(out)
    log.info("copied %d label items of %s into %s", len(items), href, out)
    return target


def _check_items(href: str, items: list[dict[str, Any]]) -> None:
    """Refuse (DatasetError) a collection with an item whose id is no safe file name, or whose
    label asset is not in the object store or on the web (see the module's docstring)."""
    seen: set[str] = set()
    for item in items:
        item_id = item.get("id")
        if not isinstance(item_id, str) or not SAFE_ID.fullmatch(item_id):
            raise DatasetError(
                f"{href}: item id {item_id!r} is not a safe id (letters, digits, '.', '_' and "
                "'-', starting with a letter or digit); rename the item"
            )
        if item_id in seen:
            raise DatasetError(f"{href}: two items have the id {item_id!r}")
        seen.add(item_id)
        for uri in _label_hrefs(item):
            scheme = urlparse(uri).scheme
            if scheme not in LABEL_SCHEMES:
                raise DatasetError(
                    f"{href}: item {item_id}: label asset {uri!r} is not an s3://, http:// or "
                    "https:// URI; a label collection on a STAC API keeps its labels in the "
                    "object store (import them with TRAINER_STORE=s3)"
                )


def _label_hrefs(item: dict[str, Any]) -> Iterator[str]:
    for key, asset in item.get("assets", {}).items():
        if key == "labels" or "labels" in (asset.get("roles") or []):
            yield str(asset["href"])


def _inside(path: Path, folder: Path) -> Path:
    """``path``, checked to lie inside ``folder`` once both are resolved."""
    if not path.resolve().is_relative_to(folder.resolve()):
        raise DatasetError(f"{path}: outside the copy's folder {folder}; refused")
    return path


def _read(href: str) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """(the API root, the collection, its items) of the STAC API collection ``href``."""
    where = collection_url(href)
    if where is None:
        raise DatasetError(f"{href}: not a STAC API collection URL (<root>/collections/<id>)")
    root, cid = where
    from pystac_client import Client

    client = Client.open(root)
    found = client.get_collection(cid)
    if found is None:
        raise DatasetError(f"{href}: no such collection")
    collection = found.to_dict(transform_hrefs=False)
    items = [
        dict(i) for i in client.search(collections=[cid], max_items=MAX_ITEMS).items_as_dicts()
    ]
    if not items:
        raise DatasetError(f"{href}: the collection holds no items")
    return root, collection, items


@contextmanager
def _reading(href: str) -> Iterator[None]:
    """The errors of reading ``href`` as the trainer's: an unreachable STAC API is worth trying
    again later (RetryableError), anything else is the labels' problem (DatasetError)."""
    import requests
    from pystac_client.exceptions import APIError

    try:
        yield
    except (DatasetError, RetryableError):
        raise
    except (requests.RequestException, APIError, EostreamError, OSError, KeyError) as exc:
        if _unreachable(exc):  # the STAC API is down: worth trying again later
            raise RetryableError(f"{href}: the STAC API is unreachable: {exc}") from None
        raise DatasetError(f"{href}: cannot read the label collection: {exc}") from None


def _unreachable(exc: BaseException) -> bool:
    """A connection error or timeout, raised as is or wrapped (pystac-client's APIError)."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, ConnectionError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return "Failed to establish a new connection" in str(exc) or "timed out" in str(exc)


def _copy_item(item: dict[str, Any], folder: Path, s3: S3Settings | None, root: str) -> None:
    folder.mkdir(parents=True)
    taken = {f"{item['id']}.json", "scene.json"}
    for key, asset in item.get("assets", {}).items():
        roles = asset.get("roles") or []
        if key != "labels" and "labels" not in roles:
            continue
        uri = str(asset["href"])
        name = _asset_name(uri, str(key), taken)
        data = read_bytes(uri, s3=s3, max_bytes=MAX_LABEL_BYTES)
        _inside(folder / name, folder).write_bytes(data)
        asset["href"] = f"./{name}"
    links = []
    for link in item.get("links", []):
        if link.get("rel") in HIERARCHY:
            continue
        if link.get("rel") == "source":
            link = {**link, "href": _scene_href(str(link["href"]), folder, s3, root)}
        links.append(link)
    item["links"] = [
        *links,
        {"rel": "root", "href": "../collection.json"},
        {"rel": "parent", "href": "../collection.json"},
        {"rel": "collection", "href": "../collection.json"},
    ]
    _inside(folder / f"{item['id']}.json", folder).write_text(json.dumps(item, indent=1))


def _asset_name(uri: str, key: str, taken: set[str]) -> str:
    """The file a label asset is copied into, beside its item: the asset's own file name when it
    is a safe one not yet taken, else one made from its key or its number."""
    name = PurePosixPath(urlparse(uri).path).name
    suffix = PurePosixPath(name).suffix or ".bin"
    candidates = [name, f"{key}{suffix}", f"{key}.bin"]
    candidates += [f"labels-{n}.bin" for n in range(len(taken) + 1)]
    chosen = next(c for c in candidates if SAFE_ID.fullmatch(c) and c not in taken)
    taken.add(chosen)
    return chosen


def _scene_href(uri: str, folder: Path, s3: S3Settings | None, root: str) -> str:
    """Where the copy finds a label item's scene. A scene item imported by its local path comes
    back from stac-fastapi resolved against the API's own URL (``<root>/tmp/x.json``): that path
    again, when it is a file here."""
    if uri.startswith(f"{root}/"):
        path = Path("/" + uri.removeprefix(f"{root}/"))
        if path.is_file():
            return str(path)
    if local_path(uri) is not None:
        return uri
    return _scene_copy(uri, folder, s3)


def _scene_copy(uri: str, folder: Path, s3: S3Settings | None) -> str:
    """The scene item at ``uri`` (s3:// or http) as a local file; its assets stay where they
    are, made absolute against ``uri``."""
    if urlparse(uri).scheme != "s3":
        return uri  # http(s): the scene reader fetches it itself
    scene = json.loads(read_bytes(uri, s3=s3, max_bytes=MAX_ITEM_BYTES))
    base = uri.rsplit("/", 1)[0]
    for asset in scene.get("assets", {}).values():
        href = str(asset.get("href", ""))
        if href.startswith("./") or not (urlparse(href).scheme or href.startswith("/")):
            asset["href"] = f"{base}/{href.removeprefix('./')}"
    _inside(folder / "scene.json", folder).write_text(json.dumps(scene))
    return "./scene.json"  # beside the item (the folder is renamed when complete)
