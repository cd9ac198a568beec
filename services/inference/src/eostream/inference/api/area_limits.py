"""The read limits of the area routes (``api/areas.py``): /results/aggregate and /results/change
read whole windows of result maps into memory, in the threadpool beside the model and the
consumers, so both are bounded before any map is read:

* the pixels one request may read (``AREA_MAX_PIXELS``): :func:`pixels` estimates them from the
  results' sizes and footprints (``areas.window_pixels``, erring high) and answers 413 with how
  to narrow the request;
* the pixels all of them read at once (``AREA_PIXELS_IN_FLIGHT``): the app's :class:`PixelBudget`
  answers 503 with Retry-After rather than queue a request in the threadpool."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from fastapi import HTTPException, Request

from eostream.inference import areas
from eostream.inference.api.deps import Settings
from eostream.inference.errors import TooLargeError
from eostream.inference.results import ResultRecord

#: what a client is told to wait (seconds) when the maps being read fill the budget
RETRY_AFTER_SECONDS = 5


class PixelBudget:
    """The pixels the area requests of one app read at once: a request that would pass the
    limit is answered 503 at once (never queued in the threadpool); one alone always runs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._lock:
            if self.held and self.held + pixels > self.limit:
                raise HTTPException(
                    503,
                    detail={
                        "code": "unavailable",
                        "description": f"busy: other requests are reading result maps (this "
                        f"one would read about {pixels:,} pixels); retry in "
                        f"{RETRY_AFTER_SECONDS} s, or narrow the area, bbox or datetime",
                    },
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            self.held += pixels
        try:
            yield
        finally:
            with self._lock:
                self.held -= pixels


_BUDGET_LOCK = threading.Lock()


def budget(request: Request, settings: Settings) -> PixelBudget:
    """The app's budget (one per app: made by its first area request)."""
    state = request.app.state
    with _BUDGET_LOCK:
        budget: PixelBudget | None = getattr(state, "area_budget", None)
        if budget is None:
            budget = state.area_budget = PixelBudget(settings.area_pixels_in_flight)
    return budget


def map_pixels(record: ResultRecord) -> int:
    """The map's width x height, as its statistics (or its item) record it; else a full tile."""
    value = record.stats.get("pixels", record.item.get("properties", {}).get("eostream:pixels"))
    known = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return int(value) if known else areas.FULL_TILE_PIXELS


def pixels(
    records: Sequence[ResultRecord], geometry: areas.Geometry | None, settings: Settings, how: str
) -> int:
    """The pixels reading ``records`` in ``geometry`` costs, estimated before any is read; more
    than ``AREA_MAX_PIXELS`` is a :class:`TooLargeError` that says ``how`` to narrow it."""
    total = sum(areas.window_pixels(map_pixels(r), r.bbox, geometry) for r in records)
    if total > settings.area_max_pixels:
        raise TooLargeError(
            f"this request would read about {total:,} pixels of {len(records)} result map(s); "
            f"a request may read at most {settings.area_max_pixels:,}: {how}"
        )
    return total


def reading(
    request: Request,
    settings: Settings,
    records: Sequence[ResultRecord],
    geometry: areas.Geometry | None,
    how: str,
) -> contextlib.AbstractContextManager[None]:
    """Hold the pixels reading ``records`` in ``geometry`` costs while the block reads them:
    413 (:func:`pixels`, saying ``how`` to narrow it) or 503 (the app's :class:`PixelBudget`)
    before anything is read."""
    return budget(request, settings).hold(pixels(records, geometry, settings, how))
