"""The window planner covers every pixel exactly once, edges included (pure, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from eostream.inference.engine import batches, gather, window_view
from eostream.inference.tiling import Plan, pad_block, place_labels


@pytest.mark.parametrize(
    ("size", "stride"), [(10980, 64), (10980, 32), (1098, 32), (37, 64), (1, 2)]
)
def test_plan_covers_every_pixel(size: int, stride: int) -> None:
    plan = Plan(size, size + 5, 64, stride)
    assert plan.rows * stride >= size and (plan.rows - 1) * stride < size
    assert plan.cols * stride >= size + 5
    covered = np.zeros(size, int)
    for start, stop in plan.strips(3):
        covered[start * stride : min(stop * stride, size)] += 1
    assert (covered == 1).all()


def test_the_36_pixel_strip_of_a_full_tile_is_planned() -> None:
    plan = Plan(10980, 10980, 64, 64)
    assert plan.rows == 172  # 171 full windows + one over the last 36 pixels
    top, bottom = plan.strip_pixels(171, 172)
    assert top == 171 * 64 and bottom == 172 * 64 > 10980


def test_plan_rejects_uncentred_stride() -> None:
    with pytest.raises(ValueError, match="even"):
        Plan(100, 100, 64, 33)
    with pytest.raises(ValueError):
        Plan(100, 100, 64, 65)


def test_pad_block_reflects_and_falls_back_to_edge() -> None:
    block = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    padded = pad_block(block, 1, 2, 0, 1)
    assert padded.shape == (1, 6, 5)
    assert (padded[0, 0, :4] == block[0, 1]).all()  # reflect: row -1 is row 1
    tiny = pad_block(block, 5, 0, 0, 0)  # too small to reflect: edge
    assert (tiny[0, 0, :] == block[0, 0]).all()


def test_windows_are_cut_in_memory_where_the_plan_says() -> None:
    plan = Plan(6, 6, 4, 2)
    strip = np.arange(2 * 6 * plan.padded_width(), dtype=np.float32).reshape(
        2, 6, plan.padded_width()
    )
    view = window_view(strip, plan, 2)
    assert view.shape == (2, plan.cols, 2, 4, 4)
    np.testing.assert_array_equal(view[1, 2], strip[:, 2:6, 4:8])
    batch = gather(view, 1, 5)  # crosses a window row
    np.testing.assert_array_equal(batch[2], view[1, 0])
    assert batches(view, 4) == [(0, 3), (3, 6)]  # near-equal batches of at most 4


def test_place_labels_repeats_each_window_over_its_centre_crop() -> None:
    plan = Plan(4, 4, 64, 2)
    out = place_labels(np.array([1, 2, 3, 4], np.uint8), plan, 2)
    assert out.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_stride_setting_must_centre_the_crop() -> None:
    from pydantic import SecretStr, ValidationError

    from eostream.inference.settings import InferenceSettings

    with pytest.raises(ValidationError, match="parity"):
        InferenceSettings(api_key=SecretStr("k"), bus="memory", stride=33)


@pytest.mark.parametrize(
    ("shape", "pads"),
    [
        ((2, 7, 9), (3, 2, 1, 4)),
        ((1, 5, 5), (0, 4, 0, 4)),
        ((1, 2, 3), (5, 6, 7, 8)),
        ((1, 4, 4), (0, 0, 0, 0)),
    ],
)
def test_in_place_reflect_matches_numpy_pad(
    shape: tuple[int, int, int], pads: tuple[int, int, int, int]
) -> None:
    from eostream.inference.tiling import reflect_fill

    rng = np.random.default_rng(0)
    data = rng.random(shape, dtype=np.float32)
    top, bottom, left, right = pads
    expected = pad_block(data, top, bottom, left, right)
    block = np.full(expected.shape, np.nan, np.float32)
    block[:, top : top + shape[1], left : left + shape[2]] = data
    reflect_fill(block, top, bottom, left, right)
    np.testing.assert_array_equal(block, expected)
