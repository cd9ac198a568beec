"""A scene ready to classify: its STAC item, band sources, radiometry, and a strip reader.

:func:`prepare_scene` is pure (item JSON + model card -> :class:`ScenePlan`); :class:`SceneReader`
does the I/O: it opens each band's COG (local, S3 or HTTP through GDAL), warps every band to a
grid at the model's ground sampling distance (``card.gsd_m``: a 20 m-only item is upsampled to
10 m, so a 64-px window covers what a training patch covered), and turns DNs into the model's
units strip by strip. A band on this grid coarsened k times from the same origin (a tile's 20 and
60 m bands under its 10 m ones) is upsampled by GDAL's resampling read instead of the warper:
its bilinear values (to 1 DN) and nodata at a quarter of the cost (:class:`_Upsampled`). A
scene whose finest band is coarser than :data:`COARSE_FACTOR` times the model's GSD is refused,
or, when allowed, classified on its own grid and marked coarse.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from eostream.inference import radiometry
from eostream.inference.errors import (
    BadInputError,
    CoarseSceneError,
    NotFoundError,
    TooLargeError,
)
from eostream.inference.levels import LevelDecision, Policy, decide
from eostream.shared import sentinel2
from eostream.shared.modelcard import ModelCard
from eostream.shared.objects import absolute_href, rewrite_href

__all__ = ["ScenePlan", "SceneReader", "absolute_href", "prepare_scene", "rewrite_href"]

log = logging.getLogger(__name__)
#: A scene whose finest band is coarser than this many times the model's GSD is refused unless
#: coarse scenes are allowed.
COARSE_FACTOR = 2.0
#: Grids within this relative difference of the model's GSD are read as they are.
GSD_TOLERANCE = 0.1
METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class ScenePlan:
    item_id: str
    item: dict[str, Any]
    item_href: str
    sources: dict[str, sentinel2.BandSource]
    radiometry: dict[str, sentinel2.Radiometry]
    fills: dict[str, float]
    scl_href: str | None
    decision: LevelDecision
    baseline: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)


def prepare_scene(
    item: dict[str, Any],
    item_href: str,
    card: ModelCard,
    *,
    policy: Policy,
    href_rewrites: Mapping[str, str] | None = None,
    b10_fill: float,
    event_level: str | None = None,
    event_baseline: str | None = None,
) -> ScenePlan:
    """Map the model's bands to the item's assets and decide the radiometry and level handling."""
    if item.get("type") != "Feature" or not isinstance(item.get("assets"), dict):
        raise BadInputError(f"{item_href} is not a STAC item (no Feature type or no assets)")
    rewrites = href_rewrites or {}
    assets: dict[str, dict[str, Any]] = {
        k: {**v, "href": rewrite_href(absolute_href(str(v["href"]), item_href), rewrites)}
        if v.get("href")
        else v
        for k, v in item["assets"].items()
        if isinstance(v, dict)
    }
    # the same rules ingest used for the event (ADR 0010); an event's own values win
    level = event_level or sentinel2.processing_level(item)
    baseline = event_baseline or sentinel2.processing_baseline(item)
    sources, missing = sentinel2.band_sources(assets, card.bands)
    decision = decide(card.processing_level, level, policy, missing)
    scaling = {s.band: s for s in card.scaling}
    fills = {}
    for band in decision.fill_bands:
        s = scaling[band]
        fills[band] = b10_fill * s.scale + s.offset
    rad = {
        b: sentinel2.asset_radiometry(assets[src.asset_key], src.index, baseline)
        for b, src in sources.items()
    }
    notes = tuple(
        f"{b}: reflectance = DN*{r.scale:g}{r.offset:+g} ({r.source})" for b, r in rad.items()
    )
    return ScenePlan(
        item_id=str(item.get("id")),
        item=item,
        item_href=item_href,
        sources=sources,
        radiometry=rad,
        fills=fills,
        scl_href=sentinel2.scl_href(assets),
        decision=decision,
        baseline=str(baseline) if baseline else None,
        notes=notes,
    )


def _open_error(href: str, exc: Exception) -> BadInputError:
    text = str(exc)
    if any(s in text for s in ("No such file", "404", "does not exist", "Not Found")):
        return NotFoundError(f"asset {href} cannot be found: {text}")
    return BadInputError(f"asset {href} is not a readable raster (corrupt or truncated?): {text}")


class SceneReader:
    """Reads model-ready strips of a scene; open, read and close run in one thread under Env."""

    def __init__(
        self,
        plan: ScenePlan,
        card: ModelCard,
        gdal_env: Callable[[], Any],
        *,
        max_pixels: int,
        mask_clouds: bool = True,
        allow_coarse: bool = False,
    ) -> None:
        self._plan = plan
        self._card = card
        self._env_factory = gdal_env
        self._env = gdal_env()
        self._max_pixels = max_pixels
        self._mask_clouds = mask_clouds
        self._allow_coarse = allow_coarse
        #: finest band's GSD (m), the GSD classified at (m), and whether the grid was resampled
        self.source_gsd = self.gsd = 0.0
        self.resampled = self.coarse = False
        self._datasets: dict[str, Any] = {}
        self._band_readers: dict[str, tuple[Any, int, float | None]] = {}
        self._scl: Any = None
        self._scl_ratio = 0
        self.height = self.width = 0
        self.crs: Any = None
        self.transform: Any = None

    def __enter__(self) -> SceneReader:
        self._env.__enter__()
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dataset(self, href: str) -> Any:
        if href not in self._datasets:
            from eostream.inference.fetch import gdal_path, open_raster

            try:  # GTiff/COG/JPEG 2000 only: never a VRT, whatever the file is called
                self._datasets[href] = open_raster(gdal_path(href))
            except RasterioError as exc:
                raise _open_error(href, exc) from exc
        return self._datasets[href]

    def _open(self) -> None:
        sources = self._plan.sources
        opened = {b: self._dataset(s.href) for b, s in sources.items()}
        for band, ds in opened.items():
            if ds.crs is None:
                raise BadInputError(
                    f"asset {sources[band].href} has no CRS (unknown georeferencing)"
                )
            if sources[band].index > ds.count:
                raise BadInputError(f"asset {sources[band].href} has no band {sources[band].index}")
        finest = min(opened.values(), key=lambda d: abs(d.res[0] * d.res[1]) / _unit_area(d))
        self.crs, self.transform = finest.crs, finest.transform
        self.height, self.width = finest.height, finest.width
        self._to_model_gsd(finest)
        if self.height * self.width > self._max_pixels:
            raise TooLargeError(
                f"scene is {self.width}x{self.height} px, more than the {self._max_pixels} allowed"
            )
        for band, ds in opened.items():
            finer = max(_gsd_m(ds)) < 0.9 * self.gsd  # downsampled: average, not interpolate
            resampling = Resampling.average if finer else Resampling.bilinear
            reader: Any = ds
            if not self._same_grid(ds):
                k = 0 if finer else self._integer_ratio(ds)
                reader = _Upsampled(ds, k) if k > 1 else self._warp(ds, resampling)
            self._band_readers[band] = (reader, sources[band].index, ds.nodata)
        if self._mask_clouds and self._plan.scl_href:
            scl = self._dataset(self._plan.scl_href)
            self._scl_ratio = self._integer_ratio(scl)
            self._scl = scl if self._scl_ratio else self._warp(scl, Resampling.nearest)

    def _to_model_gsd(self, finest: Any) -> None:
        """Put the grid at the model's GSD: same CRS and origin, pixel size scaled."""
        gx, gy = _gsd_m(finest)
        target = self._card.gsd_m
        self.source_gsd = self.gsd = round(max(gx, gy), 3)
        if max(gx, gy) > COARSE_FACTOR * target * (1 + GSD_TOLERANCE):
            if not self._allow_coarse:
                raise CoarseSceneError(
                    f"the scene's finest band is {max(gx, gy):.0f} m, more than "
                    f"{COARSE_FACTOR:g}x the {target:g} m the model was trained at: its windows "
                    "would cover ground the model never saw at that scale. Classify a finer "
                    "product, or allow coarse scenes (INFERENCE_ALLOW_COARSE_SCENES=true, or "
                    "allow_coarse in the request) to classify it at its own resolution"
                )
            self.coarse = True
            log.warning("classifying a %.0f m scene at its own resolution (coarse)", max(gx, gy))
            return
        fx, fy = gx / target, gy / target
        if abs(fx - 1) <= GSD_TOLERANCE and abs(fy - 1) <= GSD_TOLERANCE:
            return
        self.transform = finest.transform @ Affine.scale(1 / fx, 1 / fy)
        self.width = max(1, math.ceil(finest.width * fx - 1e-6))
        self.height = max(1, math.ceil(finest.height * fy - 1e-6))
        self.gsd = round(target, 3)
        self.resampled = True

    def _integer_ratio(self, ds: Any) -> int:
        """k when ``ds`` is this grid coarsened k times from the same origin (SCL at 20 m, a
        tile's 20 and 60 m bands), else 0.

        Nearest-neighbour upsampling of such a grid is a repeat, and bilinear a resampling read
        (:class:`_Upsampled`): both far cheaper than the warper.
        """
        t, u = self.transform, ds.transform
        if ds.crs != self.crs or t.b or t.d or u.b or u.d or (t.c, t.f) != (u.c, u.f):
            return 0
        ratio = float(u.a / t.a)
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-9 or abs(float(u.e / t.e) - ratio) > 1e-9:
            return 0
        k = round(ratio)
        if int(ds.width) * k < self.width or int(ds.height) * k < self.height:
            return 0
        return k

    def _read_scl(self, window: Window) -> npt.NDArray[Any]:
        k = self._scl_ratio
        if k <= 1:
            return np.asarray(self._scl.read(1, window=window))
        top, height = int(window.row_off), int(window.height)
        r0, r1 = top // k, -(-(top + height) // k)
        c1 = -(-self.width // k)
        coarse = self._scl.read(1, window=Window(0, r0, c1, r1 - r0))
        fine = np.repeat(np.repeat(coarse, k, axis=0), k, axis=1)
        skip = top - r0 * k
        return np.asarray(fine[skip : skip + height, : self.width])

    def _same_grid(self, ds: Any) -> bool:
        return bool(
            ds.crs == self.crs
            and ds.transform == self.transform
            and (ds.height, ds.width) == (self.height, self.width)
        )

    def _warp(self, ds: Any, resampling: Resampling) -> Any:
        vrt = WarpedVRT(
            ds,
            crs=self.crs,
            transform=self.transform,
            width=self.width,
            height=self.height,
            resampling=resampling,
            nodata=ds.nodata,
        )
        self._datasets[f"vrt:{id(vrt)}"] = vrt
        return vrt

    def read(self, top: int, bottom: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        out = np.empty((len(self._card.bands), bottom - top, self.width), np.float32)
        return out, self.read_into(top, bottom, out)

    def read_into(
        self, top: int, bottom: int, out: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.bool_]:
        window = Window(0, top, self.width, bottom - top)
        invalid = np.zeros((bottom - top, self.width), bool)
        with self._env_factory():
            self._read_into(out, invalid, window)
        return invalid

    def _read_into(
        self, out: npt.NDArray[np.float32], invalid: npt.NDArray[np.bool_], window: Window
    ) -> None:
        scaling = {s.band: s for s in self._card.scaling}
        for i, band in enumerate(self._card.bands):
            if band in self._plan.fills:
                out[i] = self._plan.fills[band]
                continue
            reader, index, nodata = self._band_readers[band]
            try:
                dn = reader.read(index, window=window)
            except RasterioError as exc:
                raise BadInputError(
                    f"asset {self._plan.sources[band].href}: read failed (truncated?): {exc}"
                ) from exc
            if nodata is not None:
                invalid |= is_nodata(dn, nodata)
            radiometry.units_into(dn, self._plan.radiometry[band], scaling[band], out[i])
        if self._scl is not None:
            try:
                invalid |= radiometry.cloud_mask(self._read_scl(window))
            except RasterioError as exc:
                raise BadInputError(f"SCL asset: read failed: {exc}") from exc

    def bounds_area_km2(self) -> float:
        """Area of one pixel in km2 (approximate for geographic CRSs)."""
        a, e = abs(self.transform.a), abs(self.transform.e)
        if self.crs is not None and self.crs.is_geographic:
            lat = self.transform.f + self.transform.e * self.height / 2
            metres = 111_320.0
            return float(a * metres * math.cos(math.radians(lat)) * e * metres / 1e6)
        return float(a * e / 1e6)

    def close(self) -> None:
        for ds in reversed(list(self._datasets.values())):
            try:
                ds.close()
            except RasterioError:  # pragma: no cover - closing a broken file
                log.debug("closing a dataset failed", exc_info=True)
        self._datasets.clear()
        try:
            self._env.__exit__(None, None, None)
        except Exception:
            log.debug("leaving rasterio Env failed", exc_info=True)


class _Upsampled:
    """A band whose grid is the scene's coarsened ``k`` times from the same origin (a 20 or 60 m
    band of a Sentinel-2 tile under its 10 m grid), read bilinearly onto the scene's grid by
    GDAL's resampling read of the matching fractional source window: the warper's values to
    1 DN (its own strips differ from its whole read by as much) at a quarter of its cost or less
    (a 576-row strip of a 10980-px tile: 0.055 s against 0.24 s a 20 m band). Nodata is the
    warper's too: a pixel whose coarse pixel is nodata stays nodata (the resampling read would
    fill half a coarse pixel along every nodata edge); beside nodata both interpolate from the
    valid neighbours only, weighted differently. A full 13-band tile on 2 cores: see
    benchmarks/inference/README.md."""

    def __init__(self, ds: Any, k: int) -> None:
        self.ds, self.k = ds, k

    def read(self, index: int, window: Window) -> npt.NDArray[Any]:
        k, top, left = self.k, int(window.row_off), int(window.col_off)
        height, width = int(window.height), int(window.width)
        source = Window(left / k, top / k, width / k, height / k)
        fine = np.asarray(
            self.ds.read(
                index, window=source, out_shape=(height, width), resampling=Resampling.bilinear
            )
        )
        nodata = self.ds.nodata
        if nodata is None:
            return fine
        r0, c0 = top // k, left // k
        coarse = self.ds.read(
            index, window=Window(c0, r0, -(-(left + width) // k) - c0, -(-(top + height) // k) - r0)
        )
        bad = is_nodata(coarse, nodata)
        if bad.any():  # most strips of a tile have none
            missing = np.repeat(np.repeat(bad, k, axis=0), k, axis=1)
            rows, cols = top - r0 * k, left - c0 * k
            fine[missing[rows : rows + height, cols : cols + width]] = nodata
        return fine


def is_nodata(values: npt.NDArray[Any], nodata: float) -> npt.NDArray[np.bool_]:
    """Where ``values`` are the band's nodata; a NaN nodata (float rasters) too, which ``==``
    never matches."""
    if isinstance(nodata, float) and math.isnan(nodata):
        return np.asarray(np.isnan(values))
    return np.asarray(values == nodata)


def _gsd_m(ds: Any) -> tuple[float, float]:
    """Pixel width and height in metres (approximate for geographic CRSs)."""
    a, e = abs(float(ds.transform.a)), abs(float(ds.transform.e))
    if ds.crs is not None and ds.crs.is_geographic:
        lat = float(ds.transform.f) + float(ds.transform.e) * ds.height / 2
        return a * METRES_PER_DEGREE * math.cos(math.radians(lat)), e * METRES_PER_DEGREE
    factor = float(ds.crs.linear_units_factor[1]) if ds.crs is not None else 1.0
    return a * factor, e * factor


def _unit_area(ds: Any) -> float:
    """Degrees are ~111 km; compare pixel sizes across CRSs roughly in metres."""
    return 1.0 / (111_320.0**2) if ds.crs is not None and ds.crs.is_geographic else 1.0
