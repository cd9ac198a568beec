"""Change over time in an area, over the results index and the object store: class areas per
acquisition date (``/results/aggregate``) and transitions between two maps (``/results/change``).

Which results: the scenes whose footprint meets the area's bbox, in the time interval, and of
each scene its latest result (the one ``/results/{scene}`` answers), or its result by
``model_version`` when given. Dates are acquisition dates (UTC). Scenes of one date are summed;
two scenes of one date that overlap inside the area count the overlap twice (each result is
listed under its date, so a client can tell).
"""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image, PngImagePlugin

from eostream.inference import areas, writer
from eostream.inference.engine import NODATA, UNCERTAIN
from eostream.inference.errors import BadInputError, ResultNotFoundError
from eostream.inference.results import ResultQuery, ResultRecord, ResultsStore
from eostream.shared.errors import ObjectNotFoundError
from eostream.shared.storage import ObjectStore

#: at most this many results (all versions) are read for one answer
MAX_RESULTS = 1000
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: the change map's palette entry of pixels whose class did not change
#: (a light grey: no class's colour, the near-white of "cloud" included)
UNCHANGED, UNCHANGED_COLOUR = 251, (205, 205, 205)


def class_names(record: ResultRecord) -> tuple[str, ...]:
    """The result's classes in label order (value i is the i-th; the statistics keep it)."""
    return tuple(record.stats.get("classes", {}))


def preferred(
    served: tuple[str, str] | None, model_version: str | None, model_name: str | None
) -> tuple[str, str] | None:
    """The (name, version) whose result is a scene's map for a request naming ``model_version``
    and ``model_name``: the ``served`` model's when the request names no version and no other
    model (ADR 0018), else None (the request's own choice, or the latest)."""
    if served is not None and model_version is None and model_name in (None, served[0]):
        return served
    return None


def select(
    results: ResultsStore,
    geometry: areas.Geometry | None,
    start: datetime | None,
    end: datetime | None,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    served: tuple[str, str] | None = None,
) -> list[ResultRecord]:
    """One result per scene, oldest acquisition first: ``model_version``'s, else the ``served``
    model's (name, version) where it made one and no other model is named, else the latest."""
    bbox = areas.geometry_bbox(geometry) if geometry is not None else None
    query = ResultQuery(
        bbox=bbox,
        start=start,
        end=end,
        model_name=model_name,
        model_version=model_version,
        limit=MAX_RESULTS,
    )
    records, total = results.search(query)
    if total > MAX_RESULTS:
        raise BadInputError(
            f"{total} results match (at most {MAX_RESULTS}): narrow the datetime or the area"
        )
    prefer = preferred(served, model_version, model_name)
    latest: dict[str, ResultRecord] = {}
    for record in records:  # newest first: the first of a scene is its latest
        if record.datetime is None:
            continue
        if prefer is not None and (record.model_name, record.model_version) == prefer:
            latest[record.scene_id] = record  # the served model's map wins over a newer one
        else:
            latest.setdefault(record.scene_id, record)
    return sorted(latest.values(), key=lambda r: (r.datetime, r.scene_id))


def map_bytes(store: ObjectStore, record: ResultRecord) -> bytes:
    try:
        return store.get_bytes(f"{record.prefix}/classification.tif")
    except ObjectNotFoundError:
        raise ResultNotFoundError(f"the map of result {record.id} is missing") from None


def legend(records: Sequence[ResultRecord]) -> tuple[str, ...]:
    """Every class of the results, in order of first appearance."""
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(class_names(record)))
    return tuple(names)


def check_classes(wanted: Sequence[str], known: Sequence[str]) -> None:
    unknown = [c for c in wanted if c not in known and c != writer.UNCERTAIN_NAME]
    if unknown and known:
        raise BadInputError(
            f"unknown class(es) {', '.join(map(repr, unknown))}; the results' classes: "
            + ", ".join([*known, writer.UNCERTAIN_NAME])
        )


@dataclass
class DateAreas:
    """The areas of one acquisition date inside the area."""

    date: date
    results: list[str] = field(default_factory=list)
    scenes: list[str] = field(default_factory=list)
    classes: dict[str, dict[str, float | int]] = field(default_factory=dict)
    area_pixels: int = 0
    area_km2: float = 0.0
    nodata_pixels: int = 0
    records: list[ResultRecord] = field(default_factory=list)

    def add(self, record: ResultRecord, found: areas.AreaMap) -> None:
        counts = found.counts()
        self.records.append(record)
        self.results.append(record.id)
        self.scenes.append(record.scene_id)
        for name, value in counts.classes(class_names(record)).items():
            mine = self.classes.setdefault(name, {"pixels": 0, "km2": 0.0})
            mine["pixels"] = int(mine["pixels"]) + int(value["pixels"])
            mine["km2"] = float(mine["km2"]) + float(value["km2"])
        # every pixel inside holds some value: the area is the sum of the counts (no array of
        # pixel areas the size of the window, which took 8 bytes a pixel)
        self.area_pixels += int(counts.pixels.sum())
        self.area_km2 += float(counts.km2.sum())
        self.nodata_pixels += int(counts.pixels[NODATA])


def aggregate(
    records: Sequence[ResultRecord],
    read: Callable[[ResultRecord], bytes],
    geometry: areas.Geometry | None,
    names: Sequence[str],
) -> list[DateAreas]:
    """Class areas per acquisition date inside ``geometry``, for the classes ``names`` (every
    one with 0 where a date's maps lack it). Results with no pixel inside are left out."""
    dates: dict[date, DateAreas] = {}
    for record in records:
        found = areas.read_area(read(record), geometry)
        if record.datetime is None or not found.inside.any():  # select() keeps dated ones
            continue
        day = record.datetime.astimezone(UTC).date()
        dates.setdefault(day, DateAreas(day)).add(record, found)
    out = list(dates.values())
    for entry in out:
        entry.classes = {
            name: {
                "pixels": int(entry.classes.get(name, {}).get("pixels", 0)),
                "km2": round(float(entry.classes.get(name, {}).get("km2", 0.0)), 6),
            }
            for name in names
        }
        entry.area_km2 = round(entry.area_km2, 6)
    return out


def csv_lines(entries: Sequence[DateAreas]) -> str:
    """Long format: one row per date and class, with the date's mapped area and its pixels
    without a label (cloud, nodata, outside the maps), so a cloudy date does not read as a
    loss of every class."""
    out = io.StringIO()
    out.write("date,class,km2,pixels,area_km2,area_pixels,nodata_pixels,results\n")
    for entry in entries:
        for name, value in entry.classes.items():
            out.write(
                f"{entry.date.isoformat()},{name},{value['km2']},{value['pixels']},"
                f"{entry.area_km2},{entry.area_pixels},{entry.nodata_pixels},"
                f"{' '.join(entry.results)}\n"
            )
    return out.getvalue()


# -- change between two maps -----------------------------------------------------------------
def resolve(
    results: ResultsStore,
    ref: str,
    geometry: areas.Geometry | None,
    *,
    model_version: str | None = None,
    model_name: str | None = None,
    served: tuple[str, str] | None = None,
) -> ResultRecord:
    """``ref``: a result id (the ``id`` of ``/results``), or an acquisition date YYYY-MM-DD, then
    the one scene of that date in the area (its result as :func:`select` picks it: of
    ``model_name`` and ``model_version``, versions being numbered per model, else the served
    model's, else the latest)."""
    if _DATE.match(ref):
        try:
            day = date.fromisoformat(ref)
        except ValueError:
            raise BadInputError(f"{ref!r} is not a date (YYYY-MM-DD)") from None
        found = select(
            results,
            geometry,
            datetime.combine(day, time(), UTC),
            datetime.combine(day, time.max, UTC),  # not the next day's start: 9999-12-31
            model_name=model_name,
            model_version=model_version,
            served=served,
        )
        if not found:
            raise ResultNotFoundError(f"no result of {ref} in the area")
        if len(found) > 1:
            raise BadInputError(
                f"{len(found)} scenes of {ref} meet the area ({', '.join(r.id for r in found)}): "
                "pass result ids"
            )
        return found[0]
    records, _ = results.search(ResultQuery(ids=[ref], limit=1))
    if not records:
        raise ResultNotFoundError(f"no result {ref!r} (a result id, or a date YYYY-MM-DD)")
    return records[0]


@dataclass(frozen=True)
class Change:
    names: tuple[str, ...]  # the classes, then "uncertain"
    values: list[int]
    pixels: np.ndarray[Any, np.dtype[np.int64]]
    km2: np.ndarray[Any, np.dtype[np.float64]]
    a: areas.AreaMap
    b: areas.AreaMap
    #: the two results compared (from, to)
    records: tuple[ResultRecord, ResultRecord]

    def body(self) -> dict[str, Any]:
        same = np.eye(len(self.values), dtype=bool)
        return {
            "classes": list(self.names),
            "pixels": self.pixels.tolist(),
            "km2": np.round(self.km2, 6).tolist(),
            "changed_km2": round(float(self.km2[~same].sum()), 6),
            "unchanged_km2": round(float(self.km2[same].sum()), 6),
            "compared_pixels": int(self.pixels.sum()),
        }


def change(
    a: ResultRecord,
    b: ResultRecord,
    read: Callable[[ResultRecord], bytes],
    geometry: areas.Geometry | None,
) -> Change:
    """The from (``a``) -> to (``b``) matrix of the pixels inside the area that are labelled in
    both maps. The maps must be on one grid and have one legend."""
    names_a, names_b = class_names(a), class_names(b)
    if names_a != names_b:
        raise BadInputError(f"a and b have different classes ({names_a} and {names_b})")
    map_a, map_b = areas.read_area(read(a), geometry), areas.read_area(read(b), geometry)
    if map_a.grid != map_b.grid:
        raise BadInputError(
            f"a ({a.id}) and b ({b.id}) are on different grids (CRS, transform or size): "
            "compare two maps of one area"
        )
    if not map_a.inside.any():
        raise BadInputError(f"the area does not meet the maps of {a.id} and {b.id}")
    values = [*range(len(names_a)), UNCERTAIN]
    pixels, km2 = areas.transitions(map_a.labels, map_b.labels, map_a.inside, map_a.row_km2, values)
    names = (*names_a, writer.UNCERTAIN_NAME)
    return Change(names, values, pixels, km2, map_a, map_b, (a, b))


def change_png(found: Change) -> bytes:
    """Changed pixels in the colour of their new class, unchanged ones light grey, the rest
    (outside the area, nodata in either map) transparent; the legend names the new classes and
    "unchanged", and a caption the two results compared."""
    a, b, inside = found.a.labels, found.b.labels, found.a.inside
    valid = inside & (a != NODATA) & (b != NODATA)
    image = np.full(a.shape, NODATA, np.uint8)
    image[valid] = np.where(a[valid] == b[valid], UNCHANGED, b[valid])
    names = found.names[:-1]
    picture = writer.with_legend(
        Image.fromarray(image, mode="P"), names, ((UNCHANGED, "unchanged"),)
    )
    first, second = found.records
    caption = f"{first.id} -> {second.id}"
    picture = writer.with_caption(picture, caption)
    palette = [0] * 768
    for index, (r, g, bl, _alpha) in writer.colormap(names).items():
        palette[index * 3 : index * 3 + 3] = [r, g, bl]
    palette[UNCHANGED * 3 : UNCHANGED * 3 + 3] = list(UNCHANGED_COLOUR)
    palette[writer.LEGEND_BACKGROUND * 3 : writer.LEGEND_BACKGROUND * 3 + 3] = [255, 255, 255]
    palette[writer.LEGEND_INK * 3 : writer.LEGEND_INK * 3 + 3] = [0, 0, 0]
    picture.putpalette(palette)
    text = PngImagePlugin.PngInfo()
    text.add_text(
        "description",
        "changed pixels in the colour of their class in b; unchanged pixels light grey "
        f"{UNCHANGED_COLOUR}; transparent: outside the area or unlabelled in either map",
    )
    for key, record in zip(("a", "b"), found.records, strict=True):  # what it compares
        text.add_text(
            key,
            f"{record.id} (model {record.model_name} v{record.model_version}, "
            f"run {record.run_id or 'none recorded'})",
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", transparency=NODATA, pnginfo=text)
    return buffer.getvalue()


#: the change COG's nodata (its values are from * 256 + to)
CHANGE_NODATA = 65535


def change_cog(found: Change) -> bytes:
    """A uint16 COG of the area's window: ``from * 256 + to`` (label values, 254 uncertain) where
    both maps are labelled inside the area, 65535 elsewhere."""
    a, b, inside = found.a.labels, found.b.labels, found.a.inside
    valid = inside & (a != NODATA) & (b != NODATA)
    height, width = int(a.shape[0]), int(a.shape[1])
    codes = np.full((height, width), CHANGE_NODATA, np.uint16)
    codes[valid] = a[valid].astype(np.uint16) * 256 + b[valid]
    window = found.a.window
    transform = rasterio.windows.transform(window, found.a.transform)
    with tempfile.TemporaryDirectory(prefix="eostream-change-") as tmp:
        path = Path(tmp) / "change.tif"
        profile = {
            "driver": "COG", "height": height, "width": width, "count": 1,
            "dtype": "uint16", "crs": found.a.crs, "transform": transform,
            "nodata": CHANGE_NODATA, "compress": "DEFLATE",
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(codes, 1)
            dst.set_band_description(1, "from * 256 + to")
            dst.update_tags(
                1, **{f"class_{v}": n for v, n in zip(found.values, found.names, strict=True)}
            )
        return path.read_bytes()
