"""Map tiles of results and of their scenes, read by rio-tiler (no tiling of our own).

A client names a result (scene id, optional model version), never a path or URL: the routes look
the result up in the results index, and :func:`result_source` and :func:`scene_bands` resolve
what to read from what the service stored itself (the result's COG in the object store; the
bands of the scene item its result links to as ``derived_from``, that item and its bands read
only from the allowed sources, :func:`check_band_sources`). The readers open rasters only
with the GTiff, COG and JPEG 2000 drivers (never a VRT) inside the service's GDAL environment
(S3 credentials, no probing).

- :class:`ResultReader`: the uint8 class COG, with the colour map of the result's legend (nodata
  255 transparent).
- :class:`TrueColourReader`: B04, B03, B02 of the scene (one multi-band file or one file per band),
  turned into reflectance with each band's scale and offset (the L2A baseline 04.00 offset
  included, :func:`eostream.shared.sentinel2.asset_radiometry`) and stretched to 8 bits.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlparse

import attr
import numpy as np
from morecantile import TileMatrixSet
from rasterio.errors import RasterioError
from rio_tiler.errors import RioTilerError, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.io.base import MultiBaseReader
from rio_tiler.models import ImageData
from rio_tiler.types import AssetInfo, AssetType

from eostream.inference import fetch
from eostream.inference.errors import BadInputError, ResultNotFoundError
from eostream.inference.results import ResultRecord
from eostream.shared import sentinel2
from eostream.shared.objects import absolute_href, rewrite_href
from eostream.shared.settings import S3Settings
from eostream.shared.sources_policy import SourcePolicy

#: The bands of a true-colour rendering, in R, G, B order.
TRUE_COLOUR = ("B04", "B03", "B02")
#: Reflectance drawn white in true colour, and the gamma that brightens the darker land.
WHITE_REFLECTANCE = 0.3
GAMMA = 1.6
#: Zoom levels served (WebMercatorQuad defines 0..24).
MAX_ZOOM = 24
#: Title of the result item's link to its scene (``stacitem.build_result_item``).
SCENE_LINK_TITLE = "source scene"

EnvFactory = Callable[[], Any]
RGBA = tuple[int, int, int, int]


class TileNotFoundError(ResultNotFoundError):
    """The tile is outside the tile matrix or does not touch the map (404)."""


@dataclass(frozen=True)
class ResultSource:
    """What :class:`ResultReader` reads: the COG of one result and its colour map."""

    href: str
    colormap: dict[int, RGBA]
    env: EnvFactory
    #: what the layer is, in words (the WMTS layer's title): the result's scene and model version
    title: str = ""


@dataclass(frozen=True)
class Band:
    band: str
    href: str
    index: int
    scale: float
    offset: float


@dataclass(frozen=True)
class SceneSource:
    """What :class:`TrueColourReader` reads: the R, G, B bands of a scene."""

    scene_id: str
    bands: tuple[Band, ...]
    env: EnvFactory = field(compare=False)


def legend_colormap(item: Mapping[str, Any]) -> dict[int, RGBA]:
    """The colour map of a result item's legend (``classification:classes`` of its
    classification asset): every class value its ``color_hint``, nodata (255) transparent."""
    asset = (item.get("assets") or {}).get("classification") or {}
    cmap: dict[int, RGBA] = {}
    for entry in asset.get("classification:classes") or []:
        hint = str(entry.get("color_hint", ""))
        if len(hint) == 6:
            r, g, b = (int(hint[i : i + 2], 16) for i in (0, 2, 4))
            cmap[int(entry["value"])] = (r, g, b, 255)
    nodata = int(asset.get("nodata", 255))
    cmap[nodata] = (0, 0, 0, 0)
    return cmap


def result_source(record: ResultRecord, uri: str, env: EnvFactory) -> ResultSource:
    """The COG at ``uri`` (the store's URI of ``<prefix>/classification.tif``)."""
    return ResultSource(
        href=fetch.gdal_path(uri),
        colormap=legend_colormap(record.item),
        env=env,
        title=f"{record.scene_id}, {record.model_name} v{record.model_version}",
    )


def scene_href(record: ResultRecord) -> str:
    """The href of the scene item a result was made from."""
    for link in record.item.get("links") or []:
        if link.get("rel") == "derived_from" and link.get("title") == SCENE_LINK_TITLE:
            return str(link["href"])
    raise ResultNotFoundError(f"the result of {record.scene_id!r} names no source scene")


def scene_bands(
    item: Mapping[str, Any], item_href: str, rewrites: Mapping[str, str]
) -> tuple[Band, ...]:
    """B04, B03, B02 of a scene item: href (absolute, rewritten like the pipeline's), band index
    and the DN-to-reflectance rule. Pure: no I/O."""
    assets = {
        k: {**v, "href": rewrite_href(absolute_href(str(v["href"]), item_href), rewrites)}
        for k, v in (item.get("assets") or {}).items()
        if isinstance(v, dict) and v.get("href")
    }
    sources, missing = sentinel2.band_sources(assets, TRUE_COLOUR)
    if missing:
        raise BadInputError(f"the scene has no {', '.join(missing)} band: no true colour")
    baseline = sentinel2.processing_baseline(item)
    out = []
    for band in TRUE_COLOUR:
        src = sources[band]
        rad = sentinel2.asset_radiometry(assets[src.asset_key], src.index, baseline)
        out.append(Band(band, src.href, src.index, rad.scale, rad.offset))
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _scene_item_text(
    href: str, s3: S3Settings | None, max_bytes: int, policy: SourcePolicy | None
) -> bytes:
    """The scene item's bytes, kept for the next tiles (a scene's item does not change; errors
    are not kept)."""
    return fetch.read_bytes(href, s3=s3, max_bytes=max_bytes, policy=policy)


def read_scene_item(
    href: str, s3: S3Settings | None, max_bytes: int, policy: SourcePolicy | None
) -> dict[str, Any]:
    """The scene item a result links to, read once per href and process, only if ``policy``
    allows it (HTTP redirects only to the same host, each hop allowed; None: a scene the bus
    announced, read as the pipeline read it)."""
    data = _scene_item_text(href, s3, max_bytes, policy)
    try:
        item = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply
        raise BadInputError(f"the scene item {href} is not JSON") from None
    if not isinstance(item, dict):
        raise BadInputError(f"the scene item {href} is not a JSON object")
    return item


def check_band_sources(bands: Sequence[Band], policy: SourcePolicy | None) -> None:
    """Refuse (:class:`~eostream.inference.errors.SourceNotAllowedError`) a scene whose bands are
    not all allowed sources, before any is opened: the item is read again (once per process) and
    may have changed since its scene was classified, and tiles need no API key. http(s) bands
    must answer without a redirect to another host (GDAL follows every redirect). None: a scene
    the bus announced (ingest's configured sources), not checked, as in the pipeline."""
    if policy is None:
        return
    hrefs = sorted({band.href for band in bands})
    for href in hrefs:
        fetch.check_source(href, policy)
    for href in hrefs:
        if urlparse(href).scheme in ("http", "https"):
            fetch.check_http_raster(href, policy)


def check_tile(tms: TileMatrixSet, x: int, y: int, z: int) -> None:
    """A tile index inside the tile matrix set, else :class:`TileNotFoundError`."""
    if not 0 <= z <= min(MAX_ZOOM, tms.maxzoom):
        raise TileNotFoundError(f"zoom {z} is not served (0..{min(MAX_ZOOM, tms.maxzoom)})")
    matrix = tms.matrix(z)
    if not (0 <= x < matrix.matrixWidth and 0 <= y < matrix.matrixHeight):
        raise TileNotFoundError(f"tile {z}/{x}/{y} is outside the tile matrix")


@attr.s
class SafeReader(Reader):
    """rio-tiler's Reader on a dataset opened with the service's drivers and GDAL environment
    (``env``: a factory of ``rasterio.Env``)."""

    env: EnvFactory | None = attr.ib(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.dataset is None:
            if self.env is not None:
                self._ctx_stack.enter_context(self.env())
            try:
                self.dataset = self._ctx_stack.enter_context(fetch.open_raster(str(self.input)))
            except RasterioError as exc:
                self._ctx_stack.close()
                raise BadInputError(f"the raster behind this map cannot be read: {exc}") from None
        super().__attrs_post_init__()  # type: ignore[no-untyped-call]


def _guarded_tile(
    read: Callable[[], ImageData], tms: TileMatrixSet, x: int, y: int, z: int
) -> ImageData:
    check_tile(tms, x, y, z)
    try:
        return read()
    except TileOutsideBounds as exc:
        raise TileNotFoundError(str(exc)) from None
    except (RioTilerError, RasterioError) as exc:
        raise BadInputError(f"tile {z}/{x}/{y}: {exc}") from None


@attr.s
class ResultReader(SafeReader):
    """A result's class COG; ``input`` is a :class:`ResultSource`."""

    def __attrs_post_init__(self) -> None:
        source = cast(ResultSource, self.input)
        self.env = source.env
        self.input = source.href
        super().__attrs_post_init__()
        self.colormap = source.colormap

    def tile(  # type: ignore[override]
        self, tile_x: int, tile_y: int, tile_z: int, **kwargs: Any
    ) -> ImageData:
        kwargs.pop("indexes", None)  # the class band alone
        kwargs["resampling_method"] = "nearest"  # classes are labels: never interpolated
        parent = super().tile
        return _guarded_tile(
            lambda: parent(tile_x, tile_y, tile_z, indexes=1, **kwargs),
            self.tms, tile_x, tile_y, tile_z,
        )  # fmt: skip


@attr.s
class TrueColourReader(MultiBaseReader):
    """The scene's true colour; ``input`` is a :class:`SceneSource`. Each of B04, B03, B02 is an
    asset read by :class:`SafeReader` (a multi-band file once per band, with its index)."""

    reader: type[SafeReader] = attr.ib(default=SafeReader, init=False)

    def __attrs_post_init__(self) -> None:
        self.input: SceneSource
        self.assets = [b.band for b in self.input.bands]
        self._bands = {b.band: b for b in self.input.bands}
        self.reader_options = {"env": self.input.env}
        first = self.input.bands[0]
        with self.reader(first.href, tms=self.tms, env=self.input.env) as src:
            self.bounds, self.crs = src.bounds, src.crs
            self.minzoom = src.minzoom if self.minzoom is None else self.minzoom
            self.maxzoom = src.maxzoom if self.maxzoom is None else self.maxzoom

    def _get_asset_info(self, asset: AssetType) -> AssetInfo:
        name = asset if isinstance(asset, str) else asset["name"]
        band = self._bands[name]
        return AssetInfo(
            url=band.href,
            name=name,
            media_type=None,
            reader_options={},
            method_options={"indexes": (band.index,)},
        )

    def tile(  # type: ignore[override]
        self, tile_x: int, tile_y: int, tile_z: int, **kwargs: Any
    ) -> ImageData:
        kwargs.pop("assets", None)
        kwargs.pop("expression", None)
        parent = super().tile
        image = _guarded_tile(
            lambda: parent(tile_x, tile_y, tile_z, assets=list(self.assets), **kwargs),
            self.tms, tile_x, tile_y, tile_z,
        )  # fmt: skip
        return stretch(image, self.input.bands)

    def info(self, *args: Any, **kwargs: Any) -> Any:
        """The first band's file (TileJSON asks for its data type and descriptions)."""
        first = self.input.bands[0]
        with self.reader(first.href, tms=self.tms, env=self.input.env) as src:
            return src.info()


def stretch(image: ImageData, bands: Sequence[Band]) -> ImageData:
    """DN -> reflectance (each band's scale and offset) -> 8 bits (0..WHITE_REFLECTANCE, gamma)."""
    data = np.asarray(image.array.data, np.float32)
    out = np.empty(data.shape, np.uint8)
    for i, band in enumerate(bands):
        reflectance = data[i] * band.scale + band.offset
        unit = np.clip(reflectance / WHITE_REFLECTANCE, 0, 1) ** (1 / GAMMA)
        out[i] = np.round(unit * 255).astype(np.uint8)
    mask = np.ma.getmaskarray(image.array)
    return ImageData(
        np.ma.MaskedArray(out, mask=mask),
        assets=image.assets,
        bounds=image.bounds,
        crs=image.crs,
        band_names=["red", "green", "blue"],
    )
