"""Sources from env JSON and from a YAML file; the pure filter decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eostream.ingest.filters import filtered_out
from eostream.ingest.mapping import to_scene
from eostream.ingest.settings import IngestSettings, ItemFilter, StacApiSource, StaticSource
from eostream.shared.errors import ConfigError
from eostream.shared.settings import load_settings

from .conftest import JsonDict


def test_sources_from_env_json_and_yaml_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INGEST_BUS", "memory")
    monkeypatch.setenv(
        "INGEST_SOURCES",
        json.dumps(
            [
                {
                    "kind": "stac_api",
                    "name": "es",
                    "url": "http://127.0.0.1:1/",
                    "filter": {
                        "collections": ["sentinel-2-c1-l2a"],
                        "max_cloud_cover": 30,
                        "levels": ["L2A"],
                        "bbox": [-109, 37, -102, 41],
                    },
                }
            ]
        ),
    )
    file = tmp_path / "sources.yaml"
    file.write_text(
        "sources:\n  - kind: static\n    name: eurosat\n    href: /data/catalog.json\n"
        "    assume_level: L1C\n"
    )
    monkeypatch.setenv("INGEST_SOURCES_FILE", str(file))
    settings = load_settings(IngestSettings)
    api, static = settings.sources
    assert isinstance(api, StacApiSource) and api.filter.max_cloud_cover == 30
    assert isinstance(static, StaticSource) and static.assume_level == "L1C"
    assert settings.source("eurosat") is static


def test_duplicate_source_names_and_bad_bbox_are_config_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGEST_BUS", "memory")
    twice = [{"kind": "static", "name": "a", "href": "x"}] * 2
    monkeypatch.setenv("INGEST_SOURCES", json.dumps(twice))
    with pytest.raises(ConfigError, match="unique"):
        load_settings(IngestSettings)
    bad = [{"kind": "static", "name": "a", "href": "x", "filter": {"bbox": [0, 50, 1, 40]}}]
    monkeypatch.setenv("INGEST_SOURCES", json.dumps(bad))
    with pytest.raises(ConfigError, match="INGEST_SOURCES"):
        load_settings(IngestSettings)


def test_postgres_state_needs_a_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_BUS", "memory")
    monkeypatch.setenv("INGEST_STATE", "postgres")
    monkeypatch.delenv("EOSTREAM_PG_DSN", raising=False)
    monkeypatch.delenv("INGEST_PG_DSN", raising=False)
    with pytest.raises(ConfigError, match="PG_DSN"):
        load_settings(IngestSettings)


def test_filters(earth_search_v1: list[JsonDict]) -> None:
    item = earth_search_v1[0]  # 13TDE, Colorado, cloud 81 %
    scene = to_scene(item, source="es")
    assert filtered_out(scene, item, ItemFilter()) is None
    assert "cloud" in str(filtered_out(scene, item, ItemFilter(max_cloud_cover=50)))
    assert filtered_out(scene, item, ItemFilter(max_cloud_cover=90)) is None
    assert "level" in str(filtered_out(scene, item, ItemFilter(levels=("L1C",))))
    assert "collection" in str(filtered_out(scene, item, ItemFilter(collections=("other",))))
    assert filtered_out(scene, item, ItemFilter(bbox=(-106, 39, -104, 41))) is None
    assert "area" in str(filtered_out(scene, item, ItemFilter(bbox=(10, 40, 11, 41))))
    aoi = {"type": "Polygon", "coordinates": [[[10, 40], [11, 40], [11, 41], [10, 40]]]}
    assert "area" in str(filtered_out(scene, item, ItemFilter(aoi=aoi)))
    late = ItemFilter.model_validate({"start": "2025-01-01T00:00:00Z"})
    assert "before" in str(filtered_out(scene, item, late))
