"""The label watcher against what a label catalogue may hold: one collection that cannot be read
leaves the others announced, and an item of any shape has a digest."""

from __future__ import annotations

import copy
from pathlib import Path

from eostream.ingest.labelwatch import LabelWatcher
from eostream.ingest.state import SqliteStateStore
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.label_catalog import StaticLabelCatalog, items_digest

from .helpers import LABEL_ITEM


async def test_a_collection_that_cannot_be_read_leaves_the_others_announced(
    tmp_path: Path,
) -> None:
    catalog = StaticLabelCatalog(tmp_path / "labels")
    catalog.add("good", [LABEL_ITEM])
    catalog.add("broken", [{**LABEL_ITEM, "id": "truncated"}])
    (item_file,) = (tmp_path / "labels" / "broken").glob("*/*.json")
    item_file.write_text(item_file.read_text()[:40])  # cut short: not JSON any more
    store = SqliteStateStore(tmp_path / "state.sqlite")
    await store.open()
    bus = InMemoryBus(service="ingest")
    try:
        watcher = LabelWatcher(catalog, store=store, bus=bus)
        announced = await watcher.poll()  # raised, for every collection, at every poll
        assert [(a.collection, a.published) for a in announced] == [("good", True)]
        assert bus.size(topics.DATASETS_UPDATED) == 1

        item_file.unlink()  # the broken item removed, another imported
        catalog.add("broken", [{**LABEL_ITEM, "id": "mended"}])
        again = {a.collection: a.published for a in await watcher.poll()}
        assert again == {"good": False, "broken": True}
    finally:
        await store.close()


def test_an_item_of_any_shape_has_a_digest() -> None:
    """Fields of another shape count as absent (``links`` a number, ``assets`` a list or a
    link's ``rel`` an object raised TypeError or AttributeError, and stopped the polls)."""
    plain = copy.deepcopy(LABEL_ITEM)
    plain["links"], plain["assets"] = [], {}
    odd = [
        {**plain, "links": 5},
        {**plain, "links": [{"rel": {"a": 1}, "href": "x"}, "text"]},
        {**plain, "assets": [1, 2]},
        {**plain, "assets": {"labels": "not an object"}},
    ]
    for item in odd:
        assert items_digest([item]) == items_digest([plain])
    sourced = {**plain, "links": [{"rel": "source", "href": "s3://scenes/a.json"}]}
    assert items_digest([sourced]) != items_digest([plain])  # what counts still counts
