"""A scene's map written strip by strip: the class COG, the probability COG, the value counts
of the statistics and the quicklook's pixels, in memory bounded by one strip.

:class:`MapWriter` is the :class:`~eostream.inference.engine.StripSink` of the pipeline. Each
strip goes into a tiled GeoTIFF with windowed writes (GDAL keeps only its block cache); at
:meth:`MapWriter.finish` GDAL's COG driver copies that file into the Cloud-Optimized GeoTIFF,
overviews included, reading it block by block. The products are the ones a whole in-memory map
gives (:func:`eostream.inference.writer.write_classification` is this writer fed one strip).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window

from eostream.inference.engine import NODATA, UNCERTAIN
from eostream.inference.writer import UNCERTAIN_NAME, colormap, label_counts

#: COG block size (px) and the longest side of the quicklook's map (px)
BLOCK, QUICKLOOK_SIZE = 512, 1024
#: the strip files are band-interleaved: building a multi-band COG's overviews from a
#: pixel-interleaved one decompresses every tile once per band, and under the reader's GDAL
#: cache (256 MB) a 10-class probability map of a full tile took 250 s (band-interleaved: 77 s)
INTERLEAVE = "band"


def _tiled_profile(shape: tuple[int, int], count: int, transform: Any, crs: Any) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "height": shape[0],
        "width": shape[1],
        "count": count,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "DEFLATE",
        "BIGTIFF": "IF_SAFER",
        "interleave": INTERLEAVE,
    }


def _to_cog(source: Path, target: Path, resampling: str) -> None:
    rio_copy(
        source,
        target,
        driver="COG",
        compress="DEFLATE",
        blocksize=BLOCK,
        overview_resampling=resampling,
        BIGTIFF="IF_SAFER",
    )


class MapWriter:
    """Writes a ``shape`` map strip by strip into the COGs ``classification`` and/or
    ``probabilities`` (paths; None = not written), and keeps the value counts (``counts``, for
    :func:`~eostream.inference.writer.statistics_of_counts`) and every ``step``-th pixel of
    every ``step``-th row (``quicklook``, at most ``quicklook_size`` px a side: what
    :func:`~eostream.inference.writer.quicklook_png` draws of the whole map)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        transform: Any,
        crs: Any,
        classes: tuple[str, ...],
        *,
        classification: Path | None = None,
        probabilities: Path | None = None,
        quicklook_size: int = QUICKLOOK_SIZE,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.height, self.width = int(shape[0]), int(shape[1])
        self.classes = classes
        self.classification, self.probabilities = classification, probabilities
        self.counts = np.zeros(256, np.int64)
        self.step = max(1, math.ceil(max(self.height, self.width) / quicklook_size))
        self.quicklook = np.full(
            (-(-self.height // self.step), -(-self.width // self.step)), NODATA, np.uint8
        )
        self.rows_done = 0
        self._tmp: dict[str, Path] = {}
        self._open: dict[str, Any] = {}
        if classification is not None:
            dst = self._create("classification", classification, 1, transform, crs)
            dst.update_tags(**(tags or {}))
            dst.write_colormap(1, colormap(classes))
            dst.update_tags(
                1,
                **{f"class_{i}": name for i, name in enumerate(classes)},
                **{f"class_{UNCERTAIN}": UNCERTAIN_NAME},
            )
            dst.set_band_description(1, "class")
        if probabilities is not None:
            dst = self._create("probabilities", probabilities, len(classes), transform, crs)
            dst.update_tags(**(tags or {}))
            for i, name in enumerate(classes, start=1):
                dst.set_band_description(i, name)
            dst.update_tags(scale=str(1 / 254))  # kept for readers of the tag
            dst.scales = (1 / 254,) * len(classes)  # GDAL's own: probability = value x scale

    def _create(self, key: str, target: Path, count: int, transform: Any, crs: Any) -> Any:
        tmp = target.with_name(f".{target.name}.strips.tif")
        self._tmp[key] = tmp
        profile = _tiled_profile((self.height, self.width), count, transform, crs)
        self._open[key] = rasterio.open(tmp, "w", **profile)
        return self._open[key]

    def write(
        self,
        top: int,
        labels: npt.NDArray[np.uint8] | None,
        probabilities: npt.NDArray[np.uint8] | None,
    ) -> None:
        rows = len(labels) if labels is not None else 0
        if labels is not None:
            self.counts += label_counts(labels)
            first = -top % self.step  # the first row of this strip on the quicklook's grid
            picked = labels[first :: self.step, :: self.step]
            start = (top + first) // self.step
            self.quicklook[start : start + len(picked)] = picked
            if "classification" in self._open:
                window = Window(0, top, self.width, rows)
                self._open["classification"].write(labels, 1, window=window)
        if probabilities is not None and "probabilities" in self._open:
            rows = int(probabilities.shape[1])
            window = Window(0, top, self.width, rows)
            self._open["probabilities"].write(probabilities, window=window)
        self.rows_done = max(self.rows_done, top + rows)

    def finish(self) -> None:
        """Close the strip files and copy each into its COG (overviews: nearest for classes,
        average for probabilities)."""
        for dst in self._open.values():
            dst.close()
        self._open.clear()
        if self.classification is not None:
            _to_cog(self._tmp["classification"], self.classification, "nearest")
        if self.probabilities is not None:
            _to_cog(self._tmp["probabilities"], self.probabilities, "average")
        self._remove()

    def _remove(self) -> None:
        for dst in self._open.values():
            dst.close()
        self._open.clear()
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}.aux.xml").unlink(missing_ok=True)

    def __enter__(self) -> MapWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()
