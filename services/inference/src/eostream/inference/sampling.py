"""Pixels under label items, through time, out of a scene cube: the table a per-pixel model trains
on, and the per-date maps a fitted model draws from the same cube.

A label item (STAC label extension: ``eostream labels import``, or a reference set's labels
collection from ``eostream maps reference build``) names its scene through its ``source`` link;
its scene must be one of the cube's times (matched by scene id, else by datetime). Its shapes are
rasterised on the cube's grid by :func:`eostream.inference.evaluation.rasterize_labels`, the
rasterisation the map evaluation uses, so a pixel is "under a label" the same way in training and
in scoring. Classes: the label classes (sorted), then the background class last (the labels
collection's ``eostream:background_class``, default ``other``).

- ``eostream:label_coverage: complete`` (the default, as in the map evaluation): every pixel of
  the item's geometry is labelled; inside a shape its class, elsewhere the background.
- ``partial`` (Boadella 2020-02-02 traces only part of the water): pixels outside the shapes are
  *unknown*, so only the pixels inside the shapes are sampled, as positives of their class. No
  background pixel ever comes from a partial item (it would teach "water" as "other").

Pixels are kept only where every band is valid (not NaN: nodata or SCL cloud in the cube) and,
when B02 is a band, blue reflectance is below ``cloud_blue`` (0.2): crops without an SCL layer
(Sentinel Hub's Boadella) have no cloud mask, and cloud or snow is bright in blue (the two cloudy
January Boadella dates have band means of 0.3-1.2) where water, vegetation and soil stay under
about 0.15. :func:`classify` applies the same screen, so a pixel excluded from training is nodata
on a map.

Splits: by time, ``exclude`` names the held-out times, which are never read (temporal); by space,
:meth:`PixelTable.blocks` gives square blocks of the grid, :func:`block_split` picks whole blocks
for the test side, so neighbouring pixels never sit on both sides.

``X`` is float32 reflectance (0..1) in the band order :attr:`PixelTable.bands`, then the spectral
indices asked for (:data:`INDICES`): a pixel model's card states those bands with ``scale`` 1,
``offset`` 0, so inference feeds its ONNX exactly these values.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pystac

from eostream.inference import accuracy, reference, scenecube
from eostream.inference.engine import NODATA
from eostream.inference.errors import BadInputError
from eostream.inference.evaluation import rasterize_labels, read_labels, scene_href
from eostream.inference.fetch import local_path
from eostream.shared.modelcard import ModelCard

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from pystac.extensions.label import LabelExtension

BACKGROUND = "other"
CLOUD_BLUE = 0.2
#: spectral indices a table can carry after its bands: name -> (band a, band b) of (a-b)/(a+b)
INDICES: dict[str, tuple[str, str]] = {"ndwi": ("B03", "B08"), "ndvi": ("B08", "B04")}

Predict = Callable[[npt.NDArray[np.float32]], npt.NDArray[Any]]


@dataclass(frozen=True)
class Labels:
    """One label item, ready to rasterise: its scene, coverage, shapes and labelled area."""

    item_id: str
    scene_id: str
    time: np.datetime64 | None
    coverage: str
    shapes: list[tuple[dict[str, Any], list[str]]]
    area: dict[str, Any]
    classes: tuple[str, ...]

    @property
    def partial(self) -> bool:
        return self.coverage == reference.PARTIAL


@dataclass(frozen=True)
class LabelSet:
    items: list[Labels]
    classes: tuple[str, ...]  # label classes (sorted), then the background

    @property
    def background(self) -> int:
        return len(self.classes) - 1


def labels_root(href: str) -> pystac.Catalog:
    """The STAC catalog or collection ``href`` names (a folder: its collection.json or
    catalog.json), or BadInputError."""
    path = Path(href)
    if path.is_dir():
        roots = ("collection.json", "catalog.json")
        path = next((path / n for n in roots if (path / n).is_file()), path)
    try:
        root = pystac.read_file(str(path.resolve()) if local_path(str(path)) else href)
    except Exception as exc:
        raise BadInputError(f"{href} is not a readable STAC catalog: {exc}") from None
    if not isinstance(root, pystac.Catalog):
        raise BadInputError(f"{href} is a STAC {type(root).__name__}, not a catalog")
    return root


def load_labels(href: str) -> LabelSet:
    """The label items of a STAC catalog or collection (recursively)."""
    root = labels_root(href)
    background = BACKGROUND
    out = []
    for coll in [root, *root.get_children()]:
        background = str(coll.extra_fields.get(reference.BACKGROUND_FIELD, background))
    for item in root.get_items(recursive=True):
        if not LabelExtension.has_extension(item):
            continue
        shapes = read_labels(item)
        coverage = str(item.properties.get(reference.COVERAGE_FIELD, reference.COMPLETE))
        if coverage == reference.PARTIAL:
            from shapely.geometry import mapping, shape
            from shapely.ops import unary_union

            area = dict(mapping(unary_union([shape(g) for g, _ in shapes])))
        elif item.geometry:
            area = dict(item.geometry)
        else:
            raise BadInputError(f"label item {item.id} has no geometry (its labelled area)")
        scene = pystac.Item.from_file(scene_href(item))
        classes = sorted({c for _, cs in shapes for c in cs})  # the classes drawn
        when = np.datetime64(scene.datetime.replace(tzinfo=None), "ns") if scene.datetime else None
        out.append(Labels(item.id, scene.id, when, coverage, shapes, area, tuple(classes)))
    if not out:
        raise BadInputError(f"{href} holds no label item")
    names = sorted({c for i in out for c in i.classes} - {background})
    return LabelSet(sorted(out, key=lambda i: i.item_id), (*names, background))


def time_index(cube: Any, labels: Labels) -> int:
    """The cube's time step of a label item's scene (by scene id, else by datetime)."""
    ids = [str(v) for v in cube["scene_id"].values]
    if labels.scene_id in ids:
        return ids.index(labels.scene_id)
    times = list(cube["time"].values)
    if labels.time is not None and labels.time in times:
        return times.index(labels.time)
    raise BadInputError(
        f"label item {labels.item_id}: its scene {labels.scene_id} is not in the cube"
    )


@dataclass(frozen=True)
class PixelTable:
    """Sampled pixels: ``x`` [n, features] float32, ``y`` [n] class index, and where/when."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    classes: tuple[str, ...]
    bands: tuple[str, ...]
    features: tuple[str, ...]  # bands, then indices
    time: npt.NDArray[np.datetime64]
    row: npt.NDArray[np.int32]
    col: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def where(self, keep: npt.NDArray[np.bool_]) -> PixelTable:
        return replace(
            self,
            x=self.x[keep],
            y=self.y[keep],
            time=self.time[keep],
            row=self.row[keep],
            col=self.col[keep],
        )

    def blocks(self, size: int = 64) -> npt.NDArray[np.int64]:
        """Each pixel's square block of ``size`` px (for spatial splits)."""
        return (self.row.astype(np.int64) // size) * 1_000_000 + self.col // size

    def counts(self) -> dict[str, int]:
        return {c: int((self.y == i).sum()) for i, c in enumerate(self.classes)}


def card_for(table: PixelTable, name: str, *, level: Literal["L1C", "L2A"] = "L2A") -> ModelCard:
    """The model card a per-pixel model fitted on ``table`` states: its bands in the table's
    order, reflectance as input (scale 1, offset 0), its classes, ``task`` pixel. A table with
    spectral indices has no card: the card's inputs are bands only."""
    if table.features != table.bands:
        extra = ", ".join(table.features[len(table.bands) :])
        raise BadInputError(f"a pixel model card takes bands only; this table also has {extra}")
    card = scenecube.reflectance_card(table.bands, level=level)
    return card.model_copy(
        update={
            "name": name,
            "classes": table.classes,
            "library": "scikit-learn",
            "description": f"per-pixel classifier of {', '.join(table.bands)} reflectance",
        }
    )


def block_split(
    table: PixelTable, *, size: int = 64, test_fraction: float = 0.2, seed: int = 0
) -> tuple[PixelTable, PixelTable]:
    """(train, test) by whole blocks of the grid: no block has pixels on both sides."""
    blocks = table.blocks(size)
    unique = np.unique(blocks)
    rng = np.random.default_rng(seed)
    n_test = max(1, round(test_fraction * unique.size)) if unique.size > 1 else 0
    test_blocks = rng.choice(unique, size=n_test, replace=False)
    test = np.isin(blocks, test_blocks)
    return table.where(~test), table.where(test)


def features(
    values: npt.NDArray[np.float32], bands: Sequence[str], indices: Sequence[str]
) -> npt.NDArray[np.float32]:
    """``values`` [n, bands] reflectance -> [n, bands + indices] (the table's features)."""
    unknown = [i for i in indices if i not in INDICES]
    if unknown:
        raise BadInputError(f"unknown index {', '.join(unknown)}; known: {', '.join(INDICES)}")
    columns = [values]
    for name in indices:
        a, b = INDICES[name]
        if a not in bands or b not in bands:
            raise BadInputError(f"index {name} needs bands {a} and {b}")
        index = accuracy.ndwi(values[:, list(bands).index(a)], values[:, list(bands).index(b)])
        columns.append(np.nan_to_num(index, nan=0.0)[:, None].astype(np.float32))
    return np.concatenate(columns, axis=1).astype(np.float32, copy=False)


def clear_pixels(
    plane: npt.NDArray[np.float32], bands: Sequence[str], cloud_blue: float = CLOUD_BLUE
) -> npt.NDArray[np.bool_]:
    """[bands, y, x] -> the pixels every band is valid in and that are not bright in blue."""
    clear = np.isfinite(plane).all(axis=0)
    if "B02" in bands:
        clear &= np.nan_to_num(plane[list(bands).index("B02")], nan=np.inf) < cloud_blue
    return np.asarray(clear)


def sample(
    cube: Any,
    labels: LabelSet,
    *,
    exclude: Sequence[Any] = (),
    indices: Sequence[str] = (),
    max_per_class: int | None = None,
    cloud_blue: float = CLOUD_BLUE,
    seed: int = 0,
) -> PixelTable:
    """Pixels under every label item whose time is not in ``exclude`` (held-out times, never
    read); at most ``max_per_class`` pixels per class and label item (random, ``seed``)."""
    grid = scenecube.grid_of(cube)
    bands = tuple(str(b) for b in cube["band"].values)
    held_out = {np.datetime64(t, "ns") for t in exclude}
    index = {c: i for i, c in enumerate(labels.classes)}
    rng = np.random.default_rng(seed)
    xs, ys, ts, rs, cs = [], [], [], [], []
    for item in labels.items:
        t = time_index(cube, item)
        when = cube["time"].values[t]
        if when in held_out:
            continue
        truth, in_area = rasterize_labels(
            item.shapes,
            item.area,
            index,
            labels.background,
            (grid.height, grid.width),
            grid.transform,
            grid.crs,
        )
        plane = np.asarray(cube[scenecube.VARIABLE].isel(time=t).values, np.float32)
        keep = in_area & clear_pixels(plane, bands, cloud_blue)
        if item.partial:
            keep &= truth != labels.background
        rows, cols = np.nonzero(keep)
        y = truth[rows, cols].astype(np.int64)
        if max_per_class is not None:
            chosen = [rng.permutation(np.flatnonzero(y == k))[:max_per_class] for k in np.unique(y)]
            pick = np.sort(np.concatenate(chosen)) if chosen else np.array([], np.int64)
            rows, cols, y = rows[pick], cols[pick], y[pick]
        xs.append(features(plane[:, rows, cols].T, bands, indices))
        ys.append(y)
        ts.append(np.full(y.shape, when, dtype="datetime64[ns]"))
        rs.append(rows.astype(np.int32))
        cs.append(cols.astype(np.int32))
    if not ys:
        raise BadInputError("no label item left to sample (all held out, or none in the cube)")
    return PixelTable(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        classes=labels.classes,
        bands=bands,
        features=(*bands, *indices),
        time=np.concatenate(ts),
        row=np.concatenate(rs),
        col=np.concatenate(cs),
    )


def classify(
    cube: Any,
    t: int,
    predict: Predict,
    *,
    indices: Sequence[str] = (),
    cloud_blue: float = CLOUD_BLUE,
) -> npt.NDArray[np.uint8]:
    """The map of time step ``t``: ``predict`` (features [n, f] -> class indices [n]) on every
    clear pixel; NODATA (255) where :func:`clear_pixels` excludes it."""
    bands = tuple(str(b) for b in cube["band"].values)
    plane = np.asarray(cube[scenecube.VARIABLE].isel(time=t).values, np.float32)
    clear = clear_pixels(plane, bands, cloud_blue)
    out = np.full(clear.shape, NODATA, np.uint8)
    if clear.any():
        out[clear] = np.asarray(predict(features(plane[:, clear].T, bands, indices)), np.uint8)
    return out


def confusion(
    cube: Any, labels: LabelSet, item: Labels, predicted: npt.NDArray[Any]
) -> npt.NDArray[np.int64]:
    """The confusion matrix of a map of ``item``'s time against its labels (the map
    evaluation's rasterisation and :func:`accuracy.confusion_matrix`), over the labelled area's
    mapped pixels; for partial labels only recall means anything."""
    grid = scenecube.grid_of(cube)
    index = {c: i for i, c in enumerate(labels.classes)}
    truth, in_area = rasterize_labels(
        item.shapes,
        item.area,
        index,
        labels.background,
        (grid.height, grid.width),
        grid.transform,
        grid.crs,
    )
    valid = in_area & (predicted != NODATA)
    mapped = np.where(valid, predicted, 0).astype(np.int64)
    return np.asarray(accuracy.confusion_matrix(truth, mapped, len(labels.classes), valid))
