"""What a label collection of a STAC API may make the trainer write and read: item ids name the
copy's folders and files, and label assets are read from the object store or the web only.

A STAC API that takes transactions (the stack's has no auth) serves whatever was posted; the
stack's own refuses a ``/`` in an id, other STAC servers and bulk loads may not. The items here
are what such an API answers (``stac_labels._read``, the one place that asks the API), built
from a real Boadella label catalogue whose labels are served over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from eostream.inference import reference
from eostream.trainer import stac_labels
from eostream.trainer.errors import DatasetError

DATE = "2020-06-21"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(URL, folder): an HTTP server on 127.0.0.1 serving the folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api_items(data_dir: Path, served: tuple[str, Path]) -> tuple[dict[str, Any], list[Any]]:
    """A Boadella label collection as a STAC API answers it: its labels on the web."""
    url, folder = served
    built = reference.build_boadella(data_dir, folder / "ref", (DATE,))
    collection = json.loads(built.read_text())
    items = []
    for path in sorted(built.parent.rglob("*.json")):
        item = json.loads(path.read_text())
        if item.get("type") != "Feature":
            continue
        labels = item["assets"]["labels"]
        local = (path.parent / labels["href"]).resolve()
        labels["href"] = f"{url}/{local.relative_to(folder).as_posix()}"
        items.append(item)
    assert items
    return collection, items


def _serve(monkeypatch: pytest.MonkeyPatch, collection: dict[str, Any], items: list[Any]) -> str:
    root = "http://stac.example:8080"

    def read(href: str) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
        return root, json.loads(json.dumps(collection)), json.loads(json.dumps(items))

    monkeypatch.setattr(stac_labels, "_read", read)
    return f"{root}/collections/{collection['id']}"


def _files(tmp_path: Path) -> set[Path]:
    return set(tmp_path.rglob("*"))


def test_a_good_collection_is_copied_beside_its_items(
    api_items: tuple[dict[str, Any], list[Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection, items = api_items
    href = _serve(monkeypatch, collection, items)
    out = tmp_path / "cache" / "label-stac" / "boadella"
    target = stac_labels.materialize(href, out, None)
    assert target == out / "collection.json"
    links = json.loads(target.read_text())["links"]
    [item] = items
    assert {"rel": "item", "href": f"./{item['id']}/{item['id']}.json"} in links
    copied = json.loads((out / item["id"] / f"{item['id']}.json").read_text())
    name = item["assets"]["labels"]["href"].rsplit("/", 1)[1]
    assert copied["assets"]["labels"]["href"] == f"./{name}"
    geojson = json.loads((out / item["id"] / name).read_text())
    assert geojson["features"], "the labels themselves, read over HTTP"


@pytest.mark.parametrize("bad_id", ["../escaped", "../../../escaped", "..", "a/b", "x\n"])
def test_an_item_id_that_is_no_safe_name_refuses_the_collection(
    api_items: tuple[dict[str, Any], list[Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bad_id: str,
) -> None:
    collection, [item] = api_items
    bad = json.loads(json.dumps(item)) | {"id": bad_id}
    href = _serve(monkeypatch, collection, [item, bad])
    out = tmp_path / "cache" / "label-stac" / "boadella"
    before = _files(tmp_path)
    with pytest.raises(DatasetError, match=r"is not a safe id.*rename the item"):
        stac_labels.materialize(href, out, None)
    assert _files(tmp_path) == before, "nothing written, inside the copy's folder or outside"
    assert not list(tmp_path.rglob("escaped*"))


@pytest.mark.parametrize("scheme", ["path", "file", "relative"])
def test_a_label_asset_that_names_a_local_file_refuses_the_collection(
    api_items: tuple[dict[str, Any], list[Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("the trainer's own file")
    collection, [item] = api_items
    bad = json.loads(json.dumps(item))
    bad["id"] = "boadella-other-labels"
    bad["assets"]["labels"]["href"] = {
        "path": str(secret),
        "file": secret.as_uri(),
        "relative": "../../outside/secret.txt",
    }[scheme]
    href = _serve(monkeypatch, collection, [item, bad])
    out = tmp_path / "cache" / "label-stac" / "boadella"
    before = _files(tmp_path)
    with pytest.raises(DatasetError, match=r"boadella-other-labels: label asset .* not an s3://"):
        stac_labels.materialize(href, out, None)
    assert _files(tmp_path) == before
    copies = [p for p in tmp_path.rglob("secret.txt") if p != secret]
    assert copies == []
