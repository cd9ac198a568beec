"""A time series of scenes as one lazy data cube (``time, band, y, x``) of surface reflectance,
read through inference's own scene path, and written as zarr that plain xarray reads.

Every value comes from :class:`~eostream.inference.scene.SceneReader` under a *reflectance card*
(:func:`reflectance_card`: the wanted bands, ``scale`` 1, ``offset`` 0, no clip): the same band
mapping (:func:`eostream.shared.sentinel2.band_sources`), DN-to-reflectance rule
(``raster:bands``, else the processing baseline), resampling to the GSD (10 m) and nodata / SCL
cloud mask that inference applies before a model sees a pixel. A model whose card scales
reflectance (``units = reflectance * scale + offset``) therefore sees exactly
``cube * scale + offset``: pixels sampled from the cube are in the units a pixel model's card
states (reflectance 0..1, band order :attr:`bands`).

The cube is lazy without dask: ``reflectance`` is an xarray lazily indexed array; indexing it
reads only the rows it needs, date by date (one SceneReader per date and access). Invalid pixels
(the asset's nodata, SCL cloud/shadow) are NaN. :func:`write_zarr` writes one date at a time
(chunks ``(1, bands, CHUNK, CHUNK)``), so a long series never sits in memory.

CF conventions as :mod:`eostream.inference.cube` (result-map cubes): ``grid_mapping:
spatial_ref``, a scalar ``spatial_ref`` with ``crs_wkt`` and ``GeoTransform``, pixel-centre ``x``
and ``y``; ``time`` is the acquisition datetime; each scene's item id is in ``scene_id``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pystac
from affine import Affine
from rasterio.crs import CRS

from eostream.inference.cube import Grid, _axis_attrs, _crs_attrs
from eostream.inference.errors import BadInputError
from eostream.inference.fetch import gdal_env, local_path
from eostream.inference.scene import ScenePlan, SceneReader, prepare_scene
from eostream.shared import sentinel2
from eostream.shared.modelcard import BandScaling, ModelCard

#: the cube's variable of reflectances
VARIABLE = "reflectance"
#: spatial chunk edge of the zarr store (pixels)
CHUNK = 256
#: scenes larger than this are refused (the inference default)
MAX_PIXELS = 100_000_000


def reflectance_card(
    bands: Sequence[str], *, level: Literal["L1C", "L2A"] = "L2A", gsd_m: float = 10.0
) -> ModelCard:
    """A model card whose units are reflectance (scale 1, offset 0) for ``bands``: what
    :class:`SceneReader` turns DNs into is then exactly reflectance (of ``level``)."""
    return ModelCard(
        name="reflectance",
        band_set="rgb" if len(bands) <= 3 else "ms13",
        bands=tuple(bands),
        scaling=tuple(BandScaling(band=b, scale=1.0) for b in bands),
        processing_level=level,
        gsd_m=gsd_m,
        task="pixel",
        patch_size=1,
        description="reflectance cube: no model, the units inference reads scenes in",
    )


@dataclass(frozen=True)
class Scene:
    """One scene of the series: its STAC item (JSON) and the item's href."""

    item: dict[str, Any]
    href: str

    @property
    def id(self) -> str:
        return str(self.item.get("id"))

    @property
    def datetime(self) -> np.datetime64:
        text = str((self.item.get("properties") or {}).get("datetime") or "")
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise BadInputError(f"scene {self.id} has no readable datetime ({text!r})") from None
        if when.tzinfo is not None:  # UTC, naive: the cube's time axis
            when = when.astimezone(UTC).replace(tzinfo=None)
        return np.datetime64(when, "ns")


def scenes_in(href: str) -> list[Scene]:
    """The scene items of a STAC catalog or collection (recursively): every item that is not a
    label item and has at least one Sentinel-2 band asset; sorted by datetime."""
    path = Path(href)
    if path.is_dir():
        path = next(
            (path / n for n in ("catalog.json", "collection.json") if (path / n).is_file()), path
        )
    try:
        root = pystac.read_file(str(path.resolve()) if local_path(str(path)) else href)
    except Exception as exc:
        raise BadInputError(f"{href} is not a readable STAC catalog: {exc}") from None
    if isinstance(root, pystac.Item):
        items = [root]
    elif isinstance(root, pystac.Catalog):
        items = list(root.get_items(recursive=True))
    else:
        raise BadInputError(f"{href} is a STAC {type(root).__name__}, not a catalog")
    scenes = []
    for item in items:
        if "label:type" in item.properties:
            continue
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        for asset_key, asset in item.assets.items():
            d["assets"][asset_key]["href"] = asset.get_absolute_href() or asset.href
        if sentinel2.bands_of(d):
            scenes.append(Scene(d, str(item.get_self_href() or href)))
    if not scenes:
        raise BadInputError(f"{href} holds no scene item with Sentinel-2 band assets")
    return sorted(scenes, key=lambda s: (s.datetime, s.id))


class _SceneSeries:
    """The scenes' plans and grid; reads a block of the cube through SceneReader."""

    def __init__(self, scenes: Sequence[Scene], card: ModelCard, mask_clouds: bool) -> None:
        self.card = card
        self.mask_clouds = mask_clouds
        self.env = gdal_env(None)
        self.plans: list[ScenePlan] = []
        for s in scenes:
            level = sentinel2.processing_level(s.item) or card.processing_level
            if level != card.processing_level:
                raise BadInputError(
                    f"scene {s.id} is {level}, {scenes[0].id} is {card.processing_level}: "
                    "a cube holds one processing level (top-of-atmosphere or surface reflectance)"
                )
            try:
                plan = prepare_scene(s.item, s.href, card, policy="refuse", b10_fill=0.0)
            except BadInputError as exc:  # bands the scene lacks: one line naming the scene
                raise BadInputError(f"scene {s.id}: {exc}") from None
            self.plans.append(plan)
        grids = [self._grid(p) for p in self.plans]
        first = grids[0]
        for scene, grid in zip(scenes, grids, strict=True):
            if grid != first:
                raise BadInputError(
                    f"scene {scene.id} is on another grid ({grid.width}x{grid.height} px, "
                    f"{grid.crs}) than {scenes[0].id} ({first.width}x{first.height} px, "
                    f"{first.crs}): a cube needs one grid; cut the scenes to one grid first"
                )
        self.grid = first

    def _reader(self, plan: ScenePlan) -> SceneReader:
        return SceneReader(
            plan, self.card, self.env, max_pixels=MAX_PIXELS, mask_clouds=self.mask_clouds
        )

    def _grid(self, plan: ScenePlan) -> Grid:
        with self._reader(plan) as reader:
            return Grid(reader.crs, reader.transform, reader.height, reader.width)

    def read(self, t: int, top: int, bottom: int) -> npt.NDArray[np.float32]:
        """Date ``t``, rows ``top:bottom``, all bands and columns; NaN where invalid."""
        with self._reader(self.plans[t]) as reader:
            out, invalid = reader.read(top, bottom)
        out[:, invalid] = np.nan
        return out


def _backend_array(series: _SceneSeries) -> Any:
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class SceneArray(BackendArray):
        def __init__(self) -> None:
            g = series.grid
            self.shape = (len(series.plans), len(series.card.bands), g.height, g.width)
            self.dtype = np.dtype(np.float32)

        def __getitem__(self, key: Any) -> Any:
            return indexing.explicit_indexing_adapter(
                key, self.shape, indexing.IndexingSupport.BASIC, self._raw
            )

        def _raw(self, key: tuple[Any, ...]) -> npt.NDArray[np.float32]:
            t_key, b_key, y_key, x_key = key
            n_t, n_b, height, width = self.shape
            times = range(*t_key.indices(n_t)) if isinstance(t_key, slice) else [t_key]
            if isinstance(y_key, slice):
                top, bottom, step = y_key.indices(height)
            else:
                top, bottom, step = y_key, y_key + 1, 1
            blocks = [
                series.read(t, top, bottom)[:, ::step]
                if bottom > top
                else np.empty((n_b, 0, width), np.float32)
                for t in times
            ]
            stacked = np.stack(blocks) if blocks else np.empty((0, n_b, 0, width), np.float32)
            t_sel = slice(None) if isinstance(t_key, slice) else 0
            y_sel = slice(None) if isinstance(y_key, slice) else 0
            return np.asarray(stacked[t_sel, b_key, y_sel, x_key])

    return indexing.LazilyIndexedArray(SceneArray())


def build(
    scenes: Sequence[Scene], bands: Sequence[str], *, mask_clouds: bool = True, gsd_m: float = 10.0
) -> Any:
    """The lazy ``xarray.Dataset`` of ``scenes`` (one grid) in reflectance of ``bands``."""
    import xarray as xr

    if not scenes:
        raise BadInputError("no scenes: a cube needs at least one")
    unknown = [b for b in bands if b not in sentinel2.SPECTRAL_ORDER]
    if unknown or not bands:
        raise BadInputError(
            f"unknown band(s) {', '.join(unknown) or '(none given)'}; "
            f"bands are {', '.join(sentinel2.SPECTRAL_ORDER)}"
        )
    times = [s.datetime for s in scenes]
    if len(set(times)) != len(times):
        raise BadInputError("two scenes share one datetime: a cube has one scene per time")
    level = sentinel2.processing_level(scenes[0].item) or "L2A"
    card = reflectance_card(bands, level=level, gsd_m=gsd_m)
    series = _SceneSeries(scenes, card, mask_clouds)
    grid = series.grid
    gt = grid.transform
    xs = gt.c + gt.a * (np.arange(grid.width) + 0.5)
    ys = gt.f + gt.e * (np.arange(grid.height) + 0.5)
    data = xr.Variable(
        ("time", "band", "y", "x"),
        _backend_array(series),
        attrs={
            "long_name": "surface reflectance",
            "units": "1",
            "grid_mapping": "spatial_ref",
            "radiometry": json.dumps([list(p.notes) for p in series.plans]),
        },
    )
    dataset = xr.Dataset(
        {VARIABLE: data, "spatial_ref": xr.DataArray(np.int32(0), attrs=_crs_attrs(grid))},
        coords={
            "time": (
                "time",
                np.array(times, dtype="datetime64[ns]"),
                {"long_name": "acquisition time"},
            ),
            "band": (
                "band",
                np.array(list(bands), dtype=object),
                {"long_name": "Sentinel-2 band id"},
            ),
            "y": ("y", ys, _axis_attrs(grid.crs, "y")),
            "x": ("x", xs, _axis_attrs(grid.crs, "x")),
            "scene_id": (
                "time",
                np.array([s.id for s in scenes], dtype=object),
                {"long_name": "STAC item id"},
            ),
        },
        attrs={
            "Conventions": "CF-1.8",
            "title": "eostream scene cube: surface reflectance through time",
            "source": "read through eostream.inference.scene.SceneReader (reflectance card)",
        },
    )
    dataset[VARIABLE].encoding = {
        "chunks": (1, len(bands), min(CHUNK, grid.height), min(CHUNK, grid.width))
    }
    return dataset


def grid_of(dataset: Any) -> Grid:
    """The grid (CRS, transform, shape) of a cube from :func:`build` or read back from zarr."""
    ref = dataset["spatial_ref"].attrs
    c, a, b, f, d, e = (float(v) for v in str(ref["GeoTransform"]).split())
    return Grid(
        CRS.from_wkt(ref["crs_wkt"]),
        Affine(a, b, c, d, e, f),
        int(dataset.sizes["y"]),
        int(dataset.sizes["x"]),
    )


def write_zarr(dataset: Any, path: Path) -> Path:
    """Write a cube (lazy or not) to a zarr store, one time step at a time."""
    for t in range(int(dataset.sizes["time"])):
        step = dataset.isel(time=slice(t, t + 1)).load()
        if t == 0:
            step.to_zarr(path, mode="w", consolidated=True, zarr_format=2)
        else:
            step.to_zarr(path, mode="a", append_dim="time", consolidated=True, zarr_format=2)
    return path


def maps_dataset(cube: Any, maps: dict[int, npt.NDArray[np.uint8]], classes: Sequence[str]) -> Any:
    """Per-date class maps (time step of ``cube`` -> uint8 map on its grid, 255 nodata) as a
    cube shaped like a result-map cube (:func:`eostream.inference.cube.build`: ``classification``
    with the CF flag attributes), so ``eostream results`` readers and plain xarray read both."""
    import xarray as xr

    from eostream.inference import writer
    from eostream.inference.engine import NODATA, UNCERTAIN

    steps = sorted(maps)
    if not steps:
        raise BadInputError("no maps to write")
    grid = grid_of(cube)
    legend = writer.legend(tuple(classes))
    labels = xr.DataArray(
        np.stack([maps[t] for t in steps]),
        dims=("time", "y", "x"),
        attrs={
            "long_name": "class",
            "flag_values": np.array([*range(len(classes)), UNCERTAIN], np.uint8),
            "flag_meanings": " ".join(e["name"] for e in legend),  # CF: words, no blanks
            "flag_colors": " ".join("#" + e["color_hint"] for e in legend),
            "legend": json.dumps(legend),
            "grid_mapping": "spatial_ref",
        },
    )
    dataset = xr.Dataset(
        {
            "classification": labels,
            "spatial_ref": xr.DataArray(np.int32(0), attrs=_crs_attrs(grid)),
        },
        coords={
            "time": ("time", cube["time"].values[steps], {"long_name": "acquisition time"}),
            "scene_id": ("time", np.array(cube["scene_id"].values[steps], dtype=object)),
            "y": ("y", cube["y"].values, _axis_attrs(grid.crs, "y")),
            "x": ("x", cube["x"].values, _axis_attrs(grid.crs, "x")),
        },
        attrs={"Conventions": "CF-1.8", "title": "eostream per-pixel maps of a scene cube"},
    )
    dataset["classification"].encoding = {
        "_FillValue": NODATA,
        "chunks": (1, min(CHUNK, grid.height), min(CHUNK, grid.width)),
    }
    return dataset
