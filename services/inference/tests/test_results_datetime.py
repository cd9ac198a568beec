"""Datetime filters of the results index compare instants on sqlite, whatever the offsets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from eostream.inference.results import ResultQuery, ResultRecord, build_results_store


def _record(scene: str, when: datetime) -> ResultRecord:
    return ResultRecord(
        id=f"{scene}__m__v1",
        scene_id=scene,
        model_name="m",
        model_version="1",
        run_id=None,
        datetime=when,
        bbox=(0.0, 0.0, 1.0, 1.0),
        prefix=f"results/{scene}/m/v1",
        item={"id": scene},
        stats={"classes": {}},
    )


def test_time_bounds_with_offsets_find_scenes_by_instant(tmp_path: Path) -> None:
    store = build_results_store(f"sqlite:///{tmp_path}/results.db")
    plus1, plus2 = timezone(timedelta(hours=1)), timezone(timedelta(hours=2))
    store.put(_record("utc", datetime(2020, 7, 14, 11, 34, tzinfo=UTC)))
    # the same instant written with an offset: 13:34+02:00 is 11:34Z
    store.put(_record("offset", datetime(2020, 7, 14, 13, 34, tzinfo=plus2)))
    try:

        def found(start: datetime | None, end: datetime | None) -> set[str]:
            records, total = store.search(ResultQuery(start=start, end=end))
            assert total == len(records)
            return {r.scene_id for r in records}

        # 12:30+01:00 is 11:30Z: both scenes (11:34Z) are after it
        assert found(datetime(2020, 7, 14, 12, 30, tzinfo=plus1), None) == {"utc", "offset"}
        assert found(None, datetime(2020, 7, 14, 12, 40, tzinfo=plus1)) == {"utc", "offset"}
        # 12:40+01:00 is 11:40Z, after both; 11:30 (naive, taken as UTC) before both
        assert found(datetime(2020, 7, 14, 12, 40, tzinfo=plus1), None) == set()
        assert found(None, datetime(2020, 7, 14, 11, 30)) == set()
        assert found(datetime(2020, 7, 14, 11, 30), datetime(2020, 7, 14, 11, 35)) == {
            "utc",
            "offset",
        }
        back = store.get("offset")
        assert back is not None and back.datetime == datetime(2020, 7, 14, 11, 34, tzinfo=UTC)
    finally:
        store.close()
