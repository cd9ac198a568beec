"""Datetime filters of the results index compare instants, whatever the offsets: on sqlite (the
embedded index) and on PostgreSQL (the full stack's)."""

from __future__ import annotations

import dataclasses
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from eostream.inference.results import (
    ResultQuery,
    ResultRecord,
    ResultsStore,
    build_results_store,
)


def _record(scene: str, when: datetime, model: str = "m") -> ResultRecord:
    return ResultRecord(
        id=f"{scene}__{model}__v1",
        scene_id=scene,
        model_name=model,
        model_version="1",
        run_id=None,
        datetime=when,
        bbox=(0.0, 0.0, 1.0, 1.0),
        prefix=f"results/{scene}/{model}/v1",
        item={"id": scene},
        stats={"classes": {}},
    )


def test_time_bounds_with_offsets_find_scenes_by_instant(tmp_path: Path) -> None:
    _check_offsets(build_results_store(f"sqlite:///{tmp_path}/results.db"), "m")


@pytest.mark.stack
def test_time_bounds_with_offsets_on_postgresql() -> None:
    """The same on the full stack's PostgreSQL index (records of a model name of its own)."""
    dsn = os.environ.get("EOSTREAM_PG_DSN")
    if not dsn:
        pytest.fail('EOSTREAM_PG_DSN is not set: eval "$(deploy/local/stack env)"')
    store = build_results_store(dsn.rstrip("/") + "/results")
    _check_offsets(store, f"offsets-{uuid.uuid4().hex[:12]}")


def _check_offsets(store: ResultsStore, model: str) -> None:
    plus1, plus2 = timezone(timedelta(hours=1)), timezone(timedelta(hours=2))
    utc_scene, offset_scene = f"utc-{model}", f"offset-{model}"
    store.put(_record(utc_scene, datetime(2020, 7, 14, 11, 34, tzinfo=UTC), model))
    # the same instant written with an offset: 13:34+02:00 is 11:34Z
    store.put(_record(offset_scene, datetime(2020, 7, 14, 13, 34, tzinfo=plus2), model))
    try:

        def found(start: datetime | None, end: datetime | None) -> set[str]:
            records, total = store.search(ResultQuery(start=start, end=end, model_name=model))
            assert total == len(records)
            names = {utc_scene: "utc", offset_scene: "offset"}
            return {names[r.scene_id] for r in records}

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
        back = store.get(offset_scene)
        assert back is not None and back.datetime == datetime(2020, 7, 14, 11, 34, tzinfo=UTC)
    finally:
        store.close()


def test_a_date_alone_is_its_whole_day(tmp_path: Path) -> None:
    """``2020-01-01/2021-12-31`` (the README's example) was read as ending at midnight of the
    31st, so a result of that day was not found; a date alone found only results at 00:00."""
    from eostream.inference.api.params import parse_datetime

    store = build_results_store(f"sqlite:///{tmp_path}/results.db")
    store.put(_record("last-day", datetime(2021, 12, 31, 10, 56, tzinfo=UTC)))
    try:

        def found(text: str) -> int:
            start, end = parse_datetime(text)
            return store.search(ResultQuery(start=start, end=end))[1]

        assert found("2020-01-01/2021-12-31") == 1
        assert found("2021-12-31") == 1
        assert found("2021-12-31/..") == 1
        assert found("2022-01-01") == found("../2021-12-30") == 0
        assert found("2021-12-31T00:00:00Z") == 0  # an instant stays an instant
    finally:
        store.close()


def test_a_class_without_min_share_means_present(tmp_path: Path) -> None:
    """Statistics list every class of the model, at 0 % too: ``class=Forest`` found every map
    of a model that knows Forest, where subscriptions read the same request as "present"."""
    store = build_results_store(f"sqlite:///{tmp_path}/results.db")
    when = datetime(2021, 6, 1, tzinfo=UTC)
    for scene, share in (("none", 0.0), ("some", 0.3)):
        record = _record(scene, when)
        shares = {"Forest": share, "SeaLake": 1.0 - share}
        stats = {"classes": {k: {"share": v, "area_km2": 100 * v} for k, v in shares.items()}}
        store.put(dataclasses.replace(record, stats=stats))
    try:

        def found(**query: object) -> set[str]:
            return {r.scene_id for r in store.search(ResultQuery(**query))[0]}  # type: ignore[arg-type]

        assert found(class_name="Forest") == {"some"}
        assert found(class_name="Forest", min_share=0.0) == {"none", "some"}
        assert found(class_name="Forest", min_share=0.5) == set()
    finally:
        store.close()
