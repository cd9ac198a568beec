"""Fixtures of the ingest tests: real STAC items from the data folder, stack addresses."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

JsonDict = dict[str, Any]


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: this test needs it (deploy/local/stack env prints the addresses)"
        )
    return value


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(_env("EOSTREAM_DATA_DIR"))
    if not path.is_dir():
        pytest.fail(f"EOSTREAM_DATA_DIR={path} is not a directory")
    return path


@pytest.fixture(scope="session")
def earth_search_v1(data_dir: Path) -> list[JsonDict]:
    path = data_dir / "sentinel2_stac/earth_search_v1/sentinel-2-c1-l2a.item-collection.json"
    features: list[JsonDict] = json.loads(path.read_text())["features"]
    return features


@pytest.fixture(scope="session")
def earth_search_collection(data_dir: Path) -> JsonDict:
    path = data_dir / "sentinel2_stac/earth_search_v1/sentinel-2-c1-l2a.collection.json"
    collection: JsonDict = json.loads(path.read_text())
    return collection


@pytest.fixture(scope="session")
def rkh_item_path(data_dir: Path) -> Path:
    return data_dir / (
        "sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled/S2A_29RKH_20200219_0_L2A.json"
    )


@pytest.fixture(scope="session")
def eurosat_catalog(data_dir: Path) -> Path:
    return data_dir / "eurosat100_stac/stac/subset/catalog.json"


EUROSAT_PREFIX = (
    "https://raw.githubusercontent.com/ai-extensions/stac-data-loader/0.5.0/data/EuroSAT/"
)


def eurosat_rewrites(data_dir: Path) -> dict[str, str]:
    return {EUROSAT_PREFIX: str(data_dir / "eurosat100_stac") + "/"}


def malformed_items(template: JsonDict) -> dict[str, JsonDict]:
    """Real item, broken in one way each; the key names the breakage."""
    out: dict[str, JsonDict] = {}

    def variant(name: str) -> JsonDict:
        item = copy.deepcopy(template)
        item["id"] = f"{template['id']}-{name}"
        out[name] = item
        return item

    variant("no-assets")["assets"] = {}
    only_meta = variant("no-band-assets")
    only_meta["assets"] = {k: v for k, v in only_meta["assets"].items() if "metadata" in k}
    variant("null-geometry")["geometry"] = None
    bowtie = variant("self-intersecting")
    bowtie["geometry"] = {
        "type": "Polygon",
        "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]],
    }
    variant("not-lonlat")["geometry"] = {
        "type": "Polygon",
        "coordinates": [
            [[500000, 4000000], [600000, 4000000], [600000, 4100000], [500000, 4000000]]
        ],
    }
    unknown = variant("unknown-level")
    unknown["collection"] = "sentinel-2-mystery"
    unknown["id"] = "S2A_MYSTERY_20240101"
    for key in ("s2:product_type", "s2:processing_level"):
        unknown["properties"].pop(key, None)
    variant("no-datetime")["properties"]["datetime"] = None
    variant("bbox-text")["bbox"] = ["west", 39.66, -104.88, 40.65]  # raised from the poll
    variant("bbox-null")["bbox"] = [None, 39.66, -104.88, 40.65]
    variant("bbox-nan")["bbox"] = [float("nan"), 39.66, -104.88, 40.65]  # went on the bus
    variant("properties-list")["properties"] = ["not", "an", "object"]  # its version raised
    return out
