"""A scene gets the same level, baseline offset and bands whichever way it reaches inference.

Every real Sentinel-2 STAC item in the data folder goes through both paths (ADR 0004, ADR 0010):

- the event path: ingest maps the item to ``SceneDiscovered`` (``eostream.ingest.mapping``), and
  inference prepares the scene with the event's level and baseline, as its consumer does
  (``service.py`` passes ``event.processing_level`` and ``event.processing_baseline``);
- the REST path: ``POST /classify/item`` gives inference only the item's href, and inference
  derives everything from the raw item (``classify_href`` with no level or baseline).

Both must give the same processing level, baseline, reflectance rule (scale and offset) per band
and band sources, and inference must locate every band the event says the item carries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eostream.inference import testing
from eostream.inference.scene import ScenePlan, prepare_scene
from eostream.ingest.mapping import to_scene
from eostream.shared.events import SceneDiscovered

B10_FILL = 0.0  # the fill's value is not under test, only which bands get one


def _items_in(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".yaml":  # a recorded STAC API search: items in the response bodies
        import yaml

        for interaction in yaml.safe_load(path.read_text())["interactions"]:
            body = interaction["response"]["body"].get("string") or "{}"
            yield from json.loads(body).get("features") or []
        return
    data = json.loads(path.read_text())
    if isinstance(data, list):
        yield from data
    elif data.get("type") == "FeatureCollection":
        yield from data.get("features") or []
    elif data.get("type") == "Feature":
        yield data


def _is_sentinel2(item: dict[str, Any]) -> bool:
    properties = item.get("properties") or {}
    names = (item.get("collection"), properties.get("platform"), properties.get("constellation"))
    return any("sentinel-2" in str(n).lower() or "sentinel2" in str(n).lower() for n in names)


def _no_data(problem: str) -> list[Any]:
    """One case that fails with ``problem`` (the suite's rule: missing data fails, never skips;
    parameters are made at collection, where failing would stop the whole run)."""
    return [pytest.param(None, {"problem": problem}, id="no-data")]


def _real_items() -> list[Any]:
    root = os.environ.get("EOSTREAM_DATA_DIR")
    folders = [Path(root) / f for f in ("sentinel2_stac", "sentinel2_scenes")] if root else []
    if not folders or not all(f.is_dir() for f in folders):
        return _no_data(f"no sentinel2_stac / sentinel2_scenes under EOSTREAM_DATA_DIR={root!r}")
    found = []
    for folder in folders:
        for path in sorted([*folder.rglob("*.json"), *folder.rglob("*.yaml")]):
            for item in _items_in(path):
                if isinstance(item, dict) and _is_sentinel2(item):
                    rel = path.relative_to(folder.parent)
                    found.append(pytest.param(path, item, id=f"{rel}::{item.get('id')}"))
    return found or _no_data(f"no Sentinel-2 STAC item found under {folders}")


def _facts(plan: ScenePlan) -> dict[str, Any]:
    return {
        "level": plan.decision.scene_level,
        "baseline": plan.baseline,
        "reflectance": {b: (r.scale, r.offset) for b, r in plan.radiometry.items()},
        "sources": {b: (s.asset_key, s.href, s.index) for b, s in plan.sources.items()},
        "filled": sorted(plan.fills),
    }


def _prepare(item: dict[str, Any], href: str, event: SceneDiscovered, **kw: Any) -> ScenePlan:
    # a model that wants exactly the bands the event says the item carries, at the scene's level
    card = testing.model_card("ms13", bands=event.bands, level=event.processing_level)
    return prepare_scene(item, href, card, policy="adapt", b10_fill=B10_FILL, **kw)


@pytest.mark.parametrize(("path", "item"), _real_items())
def test_event_and_rest_paths_derive_the_same_scene(
    path: Path | None, item: dict[str, Any]
) -> None:
    if path is None:
        pytest.fail(item["problem"], pytrace=False)
    href = path.as_uri()
    event = to_scene(item, source="parity", href=href)

    by_event = _prepare(
        item,
        event.item_href,
        event,
        event_level=event.processing_level,
        event_baseline=event.processing_baseline,
    )
    by_rest = _prepare(item, href, event)

    assert _facts(by_rest) == _facts(by_event)
    assert by_rest.decision.scene_level == event.processing_level
    assert by_rest.baseline == event.processing_baseline
    located = set(by_rest.sources) | set(by_rest.fills)
    assert located == set(event.bands), "inference cannot locate bands the event says are there"


def test_a_v0_item_of_baseline_04_gets_the_offset_on_both_paths(data_dir: Path) -> None:
    """Earth Search v0 items name their baseline only in the product id. The real v0 item is
    baseline 02.14; the same item as the catalogue lists scenes processed since 2022 (N0400)
    must be harmonised with the -1000 offset, whichever way it arrives."""
    path = data_dir / "sentinel2_stac/earth_search_v0/S2A_28QCH_20200714_0_L2A.json"
    if not path.is_file():
        pytest.fail(f"no Earth Search v0 item at {path}", pytrace=False)
    item = json.loads(path.read_text())
    properties = item["properties"]
    properties["sentinel:product_id"] = properties["sentinel:product_id"].replace(
        "_N0214_", "_N0400_"
    )
    event = to_scene(item, source="parity", href=path.as_uri())
    assert event.processing_baseline == "04.00"
    for plan in (
        _prepare(item, path.as_uri(), event),
        _prepare(item, path.as_uri(), event, event_baseline=event.processing_baseline),
    ):
        offsets = [r.offset for r in plan.radiometry.values()]
        assert offsets == pytest.approx([-0.1] * len(event.bands))
