"""EuroSAT as STAC: one label-extension Item per patch, written once as stac-geoparquet.

The table is built from the files under the data folder and cached under the cache folder, keyed
by a digest of the source listing (relative path, size, class) and of this builder's version, so
it is built once and rebuilt only when the data changes. Asset hrefs are relative to the data
folder, so a cached table stays valid wherever the data folder is mounted, and one machine needs
it built once: a copy is kept in :func:`machine_dir` (``${EOSTREAM_CACHE}/eurosat``),
and a new cache folder (a new home, a service's first start) copies it from there (~0.5 MB)
instead of spending ~7 s of CPU building the 27,000 RGB items again (:func:`cached_copy`; the
RGB scaling fit of :mod:`eostream.trainer.pipeline` is kept there the same way).

RGB JPEGs carry no georeference. STAC allows ``geometry: null`` for such Items, but
stac-geoparquet 0.8 cannot store it (nor a missing bbox): their Items get an empty
GeometryCollection and an all-NaN bbox, which mean "unknown", never a made-up place.
(stac-geoparquet cannot turn such rows back into JSON Items; the trainer only reads the table
with DuckDB.) The MS
GeoTIFFs do: their Items carry the footprint in EPSG:4326 and ``proj:*`` in the native UTM CRS.
EuroSAT publishes no acquisition dates, so Items carry a ``start_datetime``/``end_datetime``
range around the dataset's making instead of a ``datetime``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.label import (
    LabelClasses,
    LabelCount,
    LabelExtension,
    LabelOverview,
    LabelType,
)

from eostream.shared.holdout import MS_MANIFEST, RGB_DIR, ms_manifest_rows
from eostream.shared.modelcard import BAND_SETS, EUROSAT_CLASSES, EUROSAT_MS_FILE_ORDER
from eostream.shared.settings import cache_root
from eostream.trainer.errors import DatasetError

log = logging.getLogger(__name__)

BUILDER_VERSION = "1"
#: EuroSAT gives no acquisition dates; Sentinel-2A launch to the dataset's publication.
_NAN = float("nan")
DATE_RANGE = (datetime(2015, 6, 23, tzinfo=UTC), datetime(2017, 8, 31, tzinfo=UTC))


@dataclass(frozen=True)
class PatchSource:
    """One labelled patch file, before it becomes a STAC Item."""

    relpath: str  # relative to the data folder, with forward slashes
    class_name: str
    size: int
    epsg: int | None = None
    bounds: tuple[float, float, float, float] | None = None  # native CRS
    source_split: str = ""

    @property
    def stem(self) -> str:
        return Path(self.relpath).stem

    @property
    def patch_index(self) -> int:
        return int(self.stem.rsplit("_", 1)[1])


@dataclass(frozen=True)
class CatalogTable:
    """A built stac-geoparquet table: where it is, its digest and how many Items it holds."""

    band_set: str
    path: Path
    digest: str
    count: int


def list_sources(data_dir: Path, band_set: str) -> list[PatchSource]:
    if band_set not in BAND_SETS:
        raise DatasetError(f"unknown band set {band_set!r}; choose one of {sorted(BAND_SETS)}")
    return _list_rgb(data_dir) if band_set == "rgb" else _list_ms(data_dir)


def _list_rgb(data_dir: Path) -> list[PatchSource]:
    root = data_dir / RGB_DIR
    if not root.is_dir():
        raise DatasetError(f"no EuroSAT RGB data: {root} is not a folder (check EOSTREAM_DATA_DIR)")
    sources: list[PatchSource] = []
    for class_name in EUROSAT_CLASSES:
        class_dir = root / class_name
        if not class_dir.is_dir():
            raise DatasetError(f"EuroSAT RGB class folder {class_dir} is missing")
        with os.scandir(class_dir) as entries:
            for entry in entries:
                if entry.name.endswith(".jpg"):
                    sources.append(
                        PatchSource(
                            f"{RGB_DIR}/{class_name}/{entry.name}", class_name, entry.stat().st_size
                        )
                    )
    return sorted(sources, key=lambda s: s.relpath)


def _list_ms(data_dir: Path) -> list[PatchSource]:
    manifest = data_dir / MS_MANIFEST
    if not manifest.is_file():
        raise DatasetError(f"no EuroSAT MS data: {manifest} is missing (check EOSTREAM_DATA_DIR)")
    sources = [
        PatchSource(
            relpath=row["path"],
            class_name=row["class_name"],
            size=int(row["bytes"]),
            epsg=int(row["epsg"]),
            bounds=(float(row["minx"]), float(row["miny"]), float(row["maxx"]), float(row["maxy"])),
            source_split=row["source_split"],
        )
        for row in ms_manifest_rows(data_dir)
    ]
    return sorted(sources, key=lambda s: s.relpath)


def sources_digest(band_set: str, sources: list[PatchSource]) -> str:
    h = hashlib.sha256(f"eurosat-stac v{BUILDER_VERSION} {band_set}\n".encode())
    for s in sources:
        h.update(f"{s.relpath}\t{s.class_name}\t{s.size}\n".encode())
    return h.hexdigest()


def item_id(band_set: str, source: PatchSource) -> str:
    return f"eurosat-{band_set}-{source.stem}"


def make_item(band_set: str, source: PatchSource, footprint: list[float] | None) -> pystac.Item:
    """A STAC Item with the label extension for one patch (pure: no file access)."""
    bbox = footprint
    # stac-geoparquet cannot store a null geometry: an un-georeferenced patch gets an empty one.
    geometry: dict[str, Any] = {"type": "GeometryCollection", "geometries": []}
    if bbox is not None:
        w, s, e, n = bbox
        geometry = {
            "type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
        }
    properties: dict[str, Any] = {
        "class": source.class_name,
        "class_index": EUROSAT_CLASSES.index(source.class_name),
        "patch_index": source.patch_index,
        "band_set": band_set,
        "constellation": "sentinel-2",
        "processing:level": "L1C",
        "license": "MIT",
    }
    if source.source_split:
        properties["source_split"] = source.source_split
    item = pystac.Item(
        id=item_id(band_set, source),
        geometry=geometry,
        bbox=bbox if bbox is not None else [_NAN] * 4,
        datetime=None,
        start_datetime=DATE_RANGE[0],
        end_datetime=DATE_RANGE[1],
        properties=properties,
        collection=f"eurosat-{band_set}",
    )
    if source.epsg is not None and source.bounds is not None:
        item.properties["proj:code"] = f"EPSG:{source.epsg}"
        item.properties["proj:bbox"] = list(source.bounds)
        item.properties["proj:shape"] = [64, 64]
    label = LabelExtension.ext(item, add_if_missing=True)
    label.apply(
        label_description="EuroSAT land-cover class of the whole 64x64 patch",
        label_type=LabelType.RASTER,
        label_properties=["class"],
        label_classes=[LabelClasses.create(classes=list(EUROSAT_CLASSES), name="class")],
        label_tasks=["classification"],
        label_methods=["manual"],
        label_overviews=[
            LabelOverview.create(
                property_key="class", counts=[LabelCount.create(source.class_name, 1)]
            )
        ],
    )
    bands = BAND_SETS["rgb"] if band_set == "rgb" else EUROSAT_MS_FILE_ORDER
    media = pystac.MediaType.JPEG if band_set == "rgb" else pystac.MediaType.GEOTIFF
    item.add_asset(
        "image",
        pystac.Asset(
            href=source.relpath,
            media_type=media,
            roles=["data"],
            extra_fields={"file:size": source.size, "bands": [{"name": b} for b in bands]},
        ),
    )
    return item


def _footprints(sources: list[PatchSource]) -> list[list[float] | None]:
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    out: list[list[float] | None] = []
    for s in sources:
        if s.epsg is None or s.bounds is None:
            out.append(None)
            continue
        box = transform_bounds(CRS.from_epsg(s.epsg), CRS.from_epsg(4326), *s.bounds)
        out.append([round(v, 7) for v in box])
    return out


def machine_dir() -> Path:
    """``${EOSTREAM_CACHE:-~/.cache/eostream}/eurosat``: this machine's copy of what is derived
    from the EuroSAT data alone (the tables, the RGB scaling fit), named after its digest."""
    return cache_root() / "eurosat"


def cached_copy(path: Path, valid: Callable[[Path], bool]) -> bool:
    """Whether ``path`` (a file of a cache folder, named after the data's digest) is there and
    ``valid``, copied from :func:`machine_dir` when it was not; False: derive it again."""
    if path.is_file() and valid(path):
        return True
    kept = machine_dir() / path.name
    if kept.is_file() and valid(kept) and _copy(kept, path):
        log.info("%s: copied this machine's %s", path.parent, kept)
        return True
    return False


def keep_copy(path: Path) -> None:
    """Keep a copy of the freshly derived ``path`` for the next cache folder on this machine."""
    _copy(path, machine_dir() / path.name)


def _rows(path: Path) -> int | None:
    """The table's row count; None when ``path`` is not a readable parquet file."""
    import pyarrow  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, pyarrow.ArrowException):
        return None


def _copy(source: Path, target: Path) -> bool:
    """Copy ``source`` to ``target`` atomically (no reader sees half a file); False on failure."""
    scratch = target.with_suffix(f".tmp{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, scratch)
        scratch.replace(target)
    except OSError as exc:
        scratch.unlink(missing_ok=True)
        log.debug("%s not copied to %s: %s", source, target, exc)
        return False
    return True


def build_catalog(data_dir: Path, cache_dir: Path, band_set: str) -> CatalogTable:
    """Build (or find in the cache, or copy from this machine's) the stac-geoparquet table of one
    band set."""
    import stac_geoparquet.arrow

    sources = list_sources(data_dir, band_set)
    if not sources:
        raise DatasetError(f"no EuroSAT {band_set} patches found under {data_dir}")
    digest = sources_digest(band_set, sources)
    path = cache_dir / "stac" / f"eurosat-{band_set}-{digest[:16]}.parquet"
    if cached_copy(path, lambda p: _rows(p) is not None):
        return CatalogTable(band_set, path, digest, _rows(path) or 0)
    started = time.perf_counter()
    footprints = _footprints(sources)
    items = [
        make_item(band_set, s, fp).to_dict() for s, fp in zip(sources, footprints, strict=True)
    ]
    reader = stac_geoparquet.arrow.parse_stac_items_to_arrow(items)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    stac_geoparquet.arrow.to_parquet(reader, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written table under the final name
    keep_copy(path)
    log.info(
        "built %d EuroSAT %s STAC items as stac-geoparquet in %.1fs: %s",
        len(items),
        band_set,
        time.perf_counter() - started,
        path,
    )
    return CatalogTable(band_set, path, digest, len(items))
