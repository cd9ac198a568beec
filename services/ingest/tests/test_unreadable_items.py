"""A static catalogue with broken item files: the readable items are announced, each broken one
is dead-lettered once with its href and the reason, and `eostream ingest backfill` says one line
instead of a traceback when a source cannot be read at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eostream.ingest.service import from_settings, running
from eostream.ingest.settings import IngestSettings, StaticSource
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus

from .conftest import EUROSAT_PREFIX
from .helpers import drain


@pytest.fixture
def eurosat_copy(tmp_path: Path, data_dir: Path) -> Path:
    """A copy of the EuroSAT catalogue (the data folder's assets linked, not copied) with three
    broken item files: one truncated, one missing, one a folder."""
    root = tmp_path / "eurosat"
    root.mkdir()
    shutil.copytree(data_dir / "eurosat100_stac" / "stac", root / "stac")
    (root / "data").symlink_to(data_dir / "eurosat100_stac" / "data")
    test = root / "stac" / "subset" / "test"
    text = (test / "item-0.json").read_text()
    (test / "item-0.json").write_text(text[: len(text) // 2])  # corrupt: truncated JSON
    (test / "item-1.json").unlink()  # gone
    (test / "item-2.json").unlink()
    (test / "item-2.json").mkdir()  # not a file
    return root


def _settings(tmp_path: Path, root: Path) -> IngestSettings:
    return IngestSettings(
        bus="memory",
        sources=(
            StaticSource(
                name="eurosat",
                href=str(root / "stac" / "subset" / "catalog.json"),
                href_rewrites={EUROSAT_PREFIX: str(root) + "/"},
                assume_level="L1C",
            ),
        ),
        sqlite_path=tmp_path / "state.sqlite",
    )


async def test_broken_item_files_are_dead_lettered_and_the_others_announced(
    tmp_path: Path, data_dir: Path, eurosat_copy: Path
) -> None:
    settings = _settings(tmp_path, eurosat_copy)
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        first = await watcher.poll(watcher.sources[0])
        second = await watcher.poll(watcher.sources[0])
        # the truncated file is fixed: its item is announced at the next poll
        fixed = eurosat_copy / "stac" / "subset" / "test" / "item-0.json"
        shutil.copyfile(data_dir / "eurosat100_stac/stac/subset/test/item-0.json", fixed)
        third = await watcher.poll(watcher.sources[0])

    assert (first.published, first.rejected) == (97, 3)
    assert (second.published, second.rejected) == (0, 0)  # no new dead letter every poll
    assert (third.published, third.rejected) == (1, 0)
    assert len(await drain(bus, topics.SCENES_DISCOVERED, "t")) == 98

    letters = {d.original_key: d for d in await bus.read_dead_letters(limit=100)}
    assert set(letters) == {"item-0", "item-1", "item-2"}
    assert "JSONDecodeError" in letters["item-0"].reason
    assert "No such file" in letters["item-1"].reason
    assert "Is a directory" in letters["item-2"].reason
    for key, letter in letters.items():
        href = letter.original_headers["stac_href"]
        assert href.endswith(f"/test/{key}.json") and href in letter.reason
        assert letter.original_topic == "stac:eurosat"


def _cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, catalog: Path) -> None:
    monkeypatch.setenv("INGEST_BUS", "memory")
    monkeypatch.setenv("INGEST_SQLITE_PATH", str(tmp_path / "cli-state.sqlite"))
    monkeypatch.setenv(
        "INGEST_SOURCES",
        json.dumps(
            [
                {
                    "kind": "static",
                    "name": "eurosat",
                    "href": str(catalog),
                    "href_rewrites": {EUROSAT_PREFIX: str(catalog.parents[2]) + "/"},
                    "assume_level": "L1C",
                }
            ]
        ),
    )


RANGE = ["--start", "1900-01-01T00:00:00Z", "--end", "2100-01-01T00:00:00Z"]


def test_backfill_of_a_catalogue_with_broken_items_reports_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, eurosat_copy: Path
) -> None:
    from eostream.ingest.cli import app

    _cli_env(monkeypatch, tmp_path, eurosat_copy / "stac" / "subset" / "catalog.json")
    result = CliRunner().invoke(app, ["backfill", "--source", "eurosat", *RANGE])
    assert result.exit_code == 0, result.output
    assert "published 97, rejected 3" in result.output


def test_backfill_of_an_unreadable_catalogue_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, eurosat_copy: Path
) -> None:
    from eostream.ingest.cli import app

    catalog = eurosat_copy / "stac" / "subset" / "catalog.json"
    catalog.write_text("{ not json")
    _cli_env(monkeypatch, tmp_path, catalog)
    result = CliRunner().invoke(app, ["backfill", "--source", "eurosat", *RANGE])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "SourceUnavailable" in lines[0] and str(catalog) in lines[0]

    bad_time = CliRunner().invoke(
        app, ["backfill", "--source", "eurosat", "--start", "yesterday", "--end", "now"]
    )
    assert bad_time.exit_code == 2 and "Traceback" not in bad_time.output
    unknown = CliRunner().invoke(app, ["backfill", "--source", "nope", *RANGE])
    assert unknown.exit_code == 1 and len(unknown.output.strip().splitlines()) == 1


async def test_links_outside_the_catalogue_are_dead_lettered_not_read(
    tmp_path: Path, data_dir: Path, eurosat_copy: Path
) -> None:
    """Item and child links to files outside the catalogue's folder or to hosts nobody
    configured (the cloud metadata address) are refused by the shared allow-list: each one is
    dead-lettered with the reason, nothing is read, and the rest of the catalogue is announced."""
    catalog = eurosat_copy / "stac" / "subset" / "catalog.json"
    data = json.loads(catalog.read_text())
    hostile = {
        "item": ["/etc/passwd", "../../../../../../etc/hostname", "http://169.254.169.254/x.json"],
        "child": ["file:///etc/", "http://127.0.0.1:1/catalog.json"],
    }
    for rel, hrefs in hostile.items():
        data["links"] += [{"rel": rel, "href": href} for href in hrefs]
    catalog.write_text(json.dumps(data))
    settings = _settings(tmp_path, eurosat_copy)
    bus = InMemoryBus(service="ingest")
    async with running(settings, from_settings(settings, bus=bus)) as watcher:
        first = await watcher.poll(watcher.sources[0])
    assert (first.published, first.rejected) == (97, 3 + 5)
    reasons = [d.reason for d in await bus.read_dead_letters(limit=100)]
    refused = [r for r in reasons if "not allowed" in r]
    assert len(refused) == 5, reasons
    assert not any("root:" in r for r in reasons)  # /etc/passwd was never read
