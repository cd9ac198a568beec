"""The pure parts of change over time in an area, on hand-made UTM maps written by the service's
own COG writer: pixel areas in metres, the pixels inside an area, transitions, and a cube of
maps on two grids (the second warped onto the first)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_points

from eostream.inference import areas, cube, writer
from eostream.inference.errors import BadInputError

UTM = CRS.from_epsg(32631)
CLASSES = ("Forest", "SeaLake")
ORIGIN = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_690_000.0)  # 10 m pixels near 42.3 N


def cog(tmp_path: Path, labels: np.ndarray, transform: Affine, name: str) -> bytes:
    path = tmp_path / f"{name}.tif"
    writer.write_classification(path, labels.astype(np.uint8), transform, UTM, CLASSES)
    return path.read_bytes()


def wgs84_box(left: float, bottom: float, right: float, top: float) -> areas.Geometry:
    """A UTM box as a WGS84 polygon (its corners; the box is 100 m: straight enough)."""
    xs, ys = warp_points(UTM, "EPSG:4326", [left, right, right, left], [bottom, bottom, top, top])
    ring = [[x, y] for x, y in zip(xs, ys, strict=True)]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def test_utm_pixels_are_their_square_metres() -> None:
    assert areas.row_areas_km2(ORIGIN, UTM, 0, 3) == pytest.approx([1e-4] * 3)


def test_the_pixels_inside_the_area_are_counted_and_the_rest_are_not(tmp_path: Path) -> None:
    labels = np.zeros((10, 10), np.uint8)  # Forest
    labels[:, 5:] = 1  # SeaLake on the east half
    labels[0, 0] = 254  # uncertain
    labels[9, 9] = 255  # nodata
    data = cog(tmp_path, labels, ORIGIN, "map")
    whole = areas.read_area(data, None).counts()
    assert whole.pixels[[0, 1, 254, 255]].tolist() == [49, 49, 1, 1]
    assert whole.km2[1] == pytest.approx(49e-4)
    # the west 4 columns (40 m) of rows 2..7: 24 Forest pixels, nothing of the east
    west = wgs84_box(500_001.0, 4_689_921.0, 500_039.0, 4_689_979.0)
    found = areas.read_area(data, west)
    assert int(found.inside.sum()) == 24
    assert found.counts().pixels[[0, 1]].tolist() == [24, 0]
    # an area far away meets no pixel
    far = areas.bbox_geometry((100.0, -10.0, 101.0, -9.0))
    assert not areas.read_area(data, far).inside.any()


def test_transitions_count_each_pixel_once_from_a_to_b() -> None:
    a = np.array([[0, 0, 1], [1, 254, 255]], np.uint8)
    b = np.array([[0, 1, 1], [0, 0, 0]], np.uint8)
    inside = np.ones(a.shape, bool)
    pixels, km2 = areas.transitions(a, b, inside, np.array([1.0, 2.0]), [0, 1, 254])
    assert pixels.tolist() == [[1, 1, 0], [1, 1, 0], [1, 0, 0]]  # nodata in a: not compared
    assert km2.tolist() == [[1.0, 1.0, 0.0], [2.0, 1.0, 0.0], [2.0, 0.0, 0.0]]


def test_a_cube_warps_a_map_of_another_grid_onto_the_first(tmp_path: Path) -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[:, 5:] = 1
    shifted = ORIGIN * Affine.translation(1, 0)  # one pixel east
    maps = [
        cube.Map(date(2024, 5, 1), "a", CLASSES, cog(tmp_path, labels, ORIGIN, "a")),
        cube.Map(date(2024, 6, 1), "b", CLASSES, cog(tmp_path, labels, shifted, "b")),
    ]
    area = wgs84_box(500_000.0, 4_689_900.0, 500_110.0, 4_690_000.0)
    dataset = cube.build(maps, area)
    values = dataset["classification"].values
    assert values.shape == (2, 10, 11)  # the maps' union within the area
    assert (values[0, :, 5:10] == 1).all() and (values[0, :, 10] == 255).all()
    assert (values[1, :, 0] == 255).all() and (values[1, :, 6:11] == 1).all()
    assert dataset["spatial_ref"].attrs["grid_mapping_name"] == "transverse_mercator"
    assert dataset["x"].attrs["units"] == "m"
    dates, names, table = cube.class_areas(dataset)
    assert dates == ["2024-05-01", "2024-06-01"] and names == [*CLASSES, "uncertain"]
    assert table[1] == pytest.approx([50e-4, 50e-4, 0.0])


def test_a_cube_of_maps_far_apart_is_refused_before_it_is_allocated(tmp_path: Path) -> None:
    """Two maps 200 km apart make a grid of their union at 10 m: 20,000 x 20,000 pixels a
    date. Refused with its size, not a MemoryError (an analyst's bbox over two tiles took 17 GB
    and the machine's memory)."""
    labels = np.zeros((10, 10), np.uint8)
    far = ORIGIN * Affine.translation(20_000, 20_000)  # 200 km east and south
    maps = [
        cube.Map(date(2024, 5, 1), "a", CLASSES, cog(tmp_path, labels, ORIGIN, "a")),
        cube.Map(date(2024, 6, 1), "b", CLASSES, cog(tmp_path, labels, far, "b")),
    ]
    area = wgs84_box(499_000.0, 4_480_000.0, 701_000.0, 4_691_000.0)
    with pytest.raises(BadInputError, match=r"2 x 20,010 x 20,010 = 800,800,200 cells"):
        cube.build(maps, area)
    small = cube.build(maps[:1], area)  # one map: its own grid
    assert small["classification"].shape == (1, 10, 10)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0], [True, 1]]]}, "two"),
        ({"type": "MultiPolygon", "coordinates": []}, "needs coordinates"),
        ({"type": "Polygon", "coordinates": [[[-170, 0], [170, 0], [170, 1], [-170, 0]]]}, "180"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 95], [0, 0]]]}, "outside"),
    ],
)
def test_geometries_that_are_not_polygons_in_range_are_refused(value: object, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        areas.check_geometry(value)
