"""The one error policy: an OSError the record's own input caused is a dead letter, not a stop."""

from __future__ import annotations

import asyncio
import errno
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eostream.shared import objects
from eostream.shared.bus import Delivery
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.errors import Disposition, classify
from eostream.shared.events import Event, SceneDiscovered

pytestmark = pytest.mark.timeout(60)

ITEM = (
    Path(os.environ.get("EOSTREAM_DATA_DIR", "data"))
    / "sentinel2_stac"
    / "earth_search_v0"
    / "S2A_28QCH_20200714_0_L2A.json"
)


def scene(item_id: str, href: str) -> SceneDiscovered:
    return SceneDiscovered(
        item_id=item_id,
        item_href=href,
        datetime=datetime(2020, 7, 14, 11, 34, tzinfo=UTC),
        processing_level="L2A",
        bands=("B02", "B03", "B04"),
        source_name="policy",
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(errno.ENAMETOOLONG, "File name too long"), Disposition.DEAD_LETTER),
        (FileNotFoundError(errno.ENOENT, "No such file"), Disposition.DEAD_LETTER),
        (IsADirectoryError(errno.EISDIR, "Is a directory"), Disposition.DEAD_LETTER),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory"), Disposition.DEAD_LETTER),
        (OSError(errno.ENOSPC, "No space left on device"), Disposition.STOP),
        (OSError(errno.EIO, "Input/output error"), Disposition.STOP),
        (OSError(errno.EMFILE, "Too many open files"), Disposition.STOP),
        (OSError("no errno"), Disposition.STOP),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Disposition.RETRY),
        (TimeoutError(errno.ETIMEDOUT, "timed out"), Disposition.RETRY),
        (RuntimeError("a bug"), Disposition.STOP),
    ],
)
def test_oserrors_of_the_input_are_dead_letters_and_of_the_machine_stop(
    exc: BaseException, expected: Disposition
) -> None:
    assert classify(exc) is expected


async def test_an_href_with_a_too_long_path_component_is_dead_lettered_and_the_next_is_done(
    tmp_path: Path,
) -> None:
    assert ITEM.is_file(), f"{ITEM} is missing: set EOSTREAM_DATA_DIR"
    long_href = str(tmp_path / ("x" * 300) / "item.json")  # one path component over 255 bytes
    bus = InMemoryBus(service="policy", dead_letter_topic=f"dlq-{uuid.uuid4().hex[:8]}")
    await bus.start()
    topic = f"scenes-{uuid.uuid4().hex[:8]}"
    read: list[str] = []

    async def handler(event: Event, delivery: Delivery) -> None:
        assert isinstance(event, SceneDiscovered)
        data = await asyncio.to_thread(
            objects.read_bytes, event.item_href, s3=None, max_bytes=10_000_000
        )
        read.append(event.item_id)
        assert data

    await bus.publish(topic, scene("LONG", long_href))
    await bus.publish(topic, scene("NEXT", str(ITEM)))
    consumer = bus.consumer([topic], "policy", handler)
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(30):
            while "NEXT" not in read:
                if task.done():
                    task.result()  # a stopped consumer raises here
                await asyncio.sleep(0.02)
    finally:
        await consumer.stop()
        await task
        await bus.close()

    assert read == ["NEXT"]
    letters = await bus.read_dead_letters(limit=10)
    assert len(letters) == 1
    assert letters[0].original_key == "LONG"
    assert "File name too long" in letters[0].reason
    assert letters[0].error_type == "OSError"
